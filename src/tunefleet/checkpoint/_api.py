"""``tunefleet.checkpoint.load`` and ``save``: what an objective calls so that its trial's work
survives its worker."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tunefleet.checkpoint._session import Preempted, current, stop_requested


def load(trial: Any) -> Path | None:
    """The latest checkpoint of the trial that ``trial`` continues, as a directory to read; None
    for a fresh trial, and outside tunefleet (the same objective runs under plain
    ``study.optimize``).

    A trial continues another when tunefleet retried it after its worker died, was stopped,
    was preempted or fell silent, in any mode, and when a whole run was stopped and run again.
    """
    session = current(trial)
    return session.latest() if session is not None else None


@contextlib.contextmanager
def save(trial: Any) -> Iterator[Path]:
    """A new, empty directory to write the trial's checkpoint into; when the block ends without
    an exception it becomes the latest checkpoint, whole (a worker killed inside the block
    leaves the previous one). Outside tunefleet the directory is temporary.

    If this worker was asked to stop (SIGTERM, a preemption), the trial is handed back at the
    end of the block, to continue elsewhere from this checkpoint."""
    session = current(trial)
    if session is None:
        path = Path(tempfile.mkdtemp(prefix="tunefleet-checkpoint-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    path = session.begin()
    try:
        yield path
    except BaseException:
        session.abort(path)
        raise
    session.commit(path)
    if stop_requested():
        raise Preempted(f"trial {session.number} saved its checkpoint and is handed back")
