"""Who runs a study now, and what a dead coordinator left behind.

A hub study has one writer: the coordinator records itself in the study (``OWNER``) and a
second coordinator on the same host refuses to start while the first is alive. Trials that a
dead coordinator left RUNNING (SIGKILL, power loss) are its *orphans*: the next run fails them
with the reason and queues their retry (``tunefleet._retry``).
"""

from __future__ import annotations

import os
import socket
from typing import Sequence

import optuna
from optuna.trial import TrialState

from tunefleet import _attrs as attrs
from tunefleet._children import process_alive
from tunefleet._filelock import file_mutex
from tunefleet._optuna import storage_location
from tunefleet._retry import retry_of
from tunefleet.errors import UsageError

# Under Optuna's logger: optuna.logging.set_verbosity governs it, in Optuna's format.
_logger = optuna.logging.get_logger("optuna.tunefleet")

#: Study system attribute naming the coordinator that runs the study now: {"host", "pid"}.
OWNER = "tunefleet:coordinator"


def claim(study: optuna.Study) -> None:
    """Refuse to run a study that a live coordinator on this host is running (two writers
    would corrupt it); a dead one's claim is taken over. ``study`` is the durable one: on a
    SQLite or journal file the check and the claim are one step for every coordinator (a lock
    on the file), so two runs started together never both start."""
    location = storage_location(study._storage)
    path = _file_of(location)
    if path is None:
        _claim(study)
        return
    with file_mutex(path, f"claiming study {study.study_name!r}"):
        _claim(study)


def _file_of(location: str | None) -> str | None:
    if location is None:
        return None
    if location.startswith("sqlite:///"):
        path = location[len("sqlite:///"):].split("?", 1)[0]
        return path if path and path != ":memory:" else None
    return location if "://" not in location else None


def _claim(study: optuna.Study) -> None:
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    owner = study._storage.get_study_system_attrs(study._study_id).get(OWNER)
    if isinstance(owner, dict) and owner.get("host") == me["host"] and owner.get("pid") not in (
            None, me["pid"]) and process_alive(int(owner["pid"])):
        raise UsageError(f"study {study.study_name!r} is being run by the coordinator with pid "
                         f"{owner['pid']} on this host; stop it first, or use another --study")
    study._storage.set_study_system_attr(study._study_id, OWNER, me)


def release(study: optuna.Study) -> None:
    """Say that nobody runs the study any more (the storage may be what failed: then the next
    coordinator finds this one dead)."""
    try:
        study._storage.set_study_system_attr(study._study_id, OWNER, None)
    except Exception:
        pass


def recover_orphans(study: optuna.Study, orphans: Sequence[int], max_retries: int) -> int:
    """Fail the trials an earlier coordinator left RUNNING with the reason in
    ``tunefleet:fail_reason``, and queue their retries. Returns how many were failed."""
    storage = study._storage
    failed = 0
    for trial_id in orphans:
        frozen = storage.get_trial(trial_id)
        if frozen.state != TrialState.RUNNING:
            continue
        storage.set_trial_system_attr(trial_id, attrs.FAIL_REASON,
                                      "its coordinator died before the trial ended")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        failed += 1
        retry = retry_of(frozen, max_retries)
        if retry is not None:
            study.add_trial(retry)
    if failed:
        _logger.warning(f"{failed} trial(s) left RUNNING by an earlier coordinator were failed "
                        "and their parameters queued again")
    return failed
