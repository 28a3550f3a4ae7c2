"""Heartbeats: a worker says "alive" for its running trial; the others fail the trials of the
dead ones, and exactly one of them (the one whose FAIL write wins) queues the retry.

Databases use Optuna's own heartbeat table (times come from the database server, so clocks of
the nodes do not matter). Optuna's journal storage has no heartbeat, so there the beat is the
trial system attribute ``tunefleet:heartbeat`` (unix time of the writing node: keep the nodes'
clocks in sync, as NTP does, to within the grace period).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs
from tunefleet._outage import is_outage
from tunefleet._retry import retry_of
from tunefleet._optuna import (BaseHeartbeat, UpdateFinishedTrialError, is_heartbeat_enabled,
                               rdb_models)
from tunefleet._outage import note_outage

_log = logging.getLogger("tunefleet.storage")


class Heartbeat:
    """Beats for one trial at a time from a background thread; finds stale trials of others."""

    def __init__(self, study: optuna.Study, interval: float, grace: float) -> None:
        self.study = study
        self.interval = interval
        self.grace = grace
        self.native = is_heartbeat_enabled(study._storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, trial_id: int) -> None:
        """Record one beat now."""
        storage = self.study._storage
        if self.native:
            assert isinstance(storage, BaseHeartbeat)
            storage.record_heartbeat(trial_id)
        else:
            storage.set_trial_system_attr(trial_id, attrs.HEARTBEAT, time.time())

    def start(self, trial_id: int) -> None:
        """Beat every interval while the trial runs. The first beat is the trial's own
        ``tunefleet:started`` (written with the trial), so a trial shorter than the interval
        costs no heartbeat write at all."""
        self._stop = threading.Event()
        stop = self._stop

        def loop() -> None:
            while not stop.wait(self.interval):
                try:
                    self.beat(trial_id)
                except UpdateFinishedTrialError:
                    return  # someone declared us dead, or the trial just ended
                except Exception as exc:  # a busy or absent database: the next beat will do
                    if is_outage(exc):
                        note_outage()  # the others' beats stopped too (see _reap)
                    _log.debug("heartbeat of trial id %s failed: %s", trial_id, exc)

        self._thread = threading.Thread(target=loop, name="tunefleet-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stale(self, trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
        """RUNNING trials whose worker stopped beating for longer than the grace period.

        A trial's last beat is, in this order: its row in Optuna's heartbeat table (database
        server time), its ``tunefleet:heartbeat`` attribute (journal files), its
        ``tunefleet:started`` attribute, its ``datetime_start``. Only the first is immune to
        clock differences between nodes; the others need clocks within the grace period."""
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if not running:
            return []
        out: list[FrozenTrial] = []
        if self.native:
            storage = self.study._storage
            assert isinstance(storage, BaseHeartbeat)
            stale_ids = set(storage._get_stale_trial_ids(self.study._study_id))
            beaten = _ids_with_heartbeat(storage, [t._trial_id for t in running])
            out = [t for t in running if t._trial_id in stale_ids]
            running = [t for t in running if t._trial_id not in beaten]
        now = time.time()
        for t in running:
            last = _last_beat(t)
            if last is not None and now - last > self.grace:
                out.append(t)
        return out


def _last_beat(t: FrozenTrial) -> float | None:
    for key in (attrs.HEARTBEAT, attrs.STARTED):
        value = t.system_attrs.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return t.datetime_start.timestamp() if t.datetime_start is not None else None


def _ids_with_heartbeat(storage: object, trial_ids: list[int]) -> set[int]:
    """The trials among TRIAL_IDS that have a row in Optuna's heartbeat table."""
    from sqlalchemy import select

    table = rdb_models().TrialHeartbeatModel.__table__
    engine = getattr(storage, "_backend", storage).engine
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.trial_id).where(table.c.trial_id.in_(trial_ids)))
        return {r[0] for r in rows}


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark TRIAL failed with REASON; True only for the one process whose write won."""
    from tunefleet.storage_mode._atomic import compare_and_set

    storage = study._storage
    try:
        storage.set_trial_system_attr(trial._trial_id, attrs.FAIL_REASON, reason)
    except UpdateFinishedTrialError:
        return False
    return compare_and_set(storage, trial._trial_id, TrialState.RUNNING, TrialState.FAIL)


def queue_retry(study: optuna.Study, failed: FrozenTrial, max_retries: int,
                total: int | None = None, *, handed_back: bool = False) -> bool:
    """Queue FAILED's retry (the rule of ``tunefleet._retry``) as a WAITING trial, unless it
    was retried enough or, with TOTAL, the study has no room for it (then the budget is made
    up by trials that are already there, and a retry could only be left WAITING at the end).
    ``handed_back``: FAILED was preempted (SIGTERM), not lost: its continuation uses up no
    retry."""
    retry = retry_of(failed, max_retries, handed_back=handed_back)
    if retry is None:
        return False
    if total is None:
        study.add_trial(retry)
        return True
    from tunefleet.storage_mode._atomic import create_within_budget

    made = create_within_budget(study._storage, study._study_id, retry.system_attrs, total,
                                state=TrialState.WAITING)
    if made is None:
        _log.info("trial %d not retried: the study's places are all taken", failed.number)
        return False
    for key, value in retry.user_attrs.items():
        study._storage.set_trial_user_attr(made[0], key, value)
    return True
