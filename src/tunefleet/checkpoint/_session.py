"""The running trial's checkpoints, as the worker loop that runs it sets them up.

A worker loop (hub worker, storage-mode worker) opens a :class:`Session` for each trial it runs
(:func:`running`); ``tunefleet.checkpoint.load`` and ``save`` find it there. A session knows the
trial's lineage (the first trial of its retries) and where its checkpoints live: a folder the
worker reaches (:class:`LocalSession`), or the coordinator at the other end of the worker's
connection (the hub's remote session streams them there).
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from tunefleet.checkpoint._store import FolderStore


class Session(abc.ABC):
    """One trial's checkpoints."""

    #: The trial this session is for, and the first trial of its lineage.
    number: int
    lineage: int

    @abc.abstractmethod
    def latest(self) -> Path | None:
        """The lineage's latest checkpoint, as a local directory, or None."""

    @abc.abstractmethod
    def begin(self) -> Path:
        """A new, empty local directory for the next checkpoint."""

    @abc.abstractmethod
    def commit(self, path: Path) -> None:
        """Make the checkpoint written in ``path`` the lineage's latest, whole or not at all."""

    @abc.abstractmethod
    def abort(self, path: Path) -> None:
        """Forget a checkpoint whose writing failed."""

    def close(self) -> None:
        """The trial has ended here: local copies that only served it go."""


class LocalSession(Session):
    """Checkpoints in a folder this process reaches (local hub workers, storage mode)."""

    def __init__(self, store: FolderStore, number: int, lineage: int) -> None:
        self.store = store
        self.number = number
        self.lineage = lineage

    def latest(self) -> Path | None:
        return self.store.latest(self.lineage)

    def begin(self) -> Path:
        return self.store.begin(self.lineage)

    def commit(self, path: Path) -> None:
        self.store.commit(self.lineage, path, self.number)

    def abort(self, path: Path) -> None:
        self.store.abort(path)


class Preempted(BaseException):
    """Raised at the end of a ``checkpoint.save`` block once this worker was asked to stop
    (SIGTERM: a preemption, Slurm's walltime signal): the trial's work is saved, and the worker
    loop hands the trial back to be continued elsewhere. A ``BaseException``, so that an
    objective's ``except Exception`` does not swallow it."""


_state = threading.local()
_stop: dict[str, Any] = {"at": None}  # set from a signal handler: when the worker must stop


def current(trial: Any) -> Session | None:
    """The session of ``trial`` if the worker loop of this thread runs it, else None."""
    session = getattr(_state, "session", None)
    if session is None or getattr(trial, "number", None) != session.number:
        return None
    return session


@contextlib.contextmanager
def running(session: Session | None) -> Iterator[None]:
    """The worker loop runs one trial with ``session`` (None: no checkpoints here)."""
    previous = getattr(_state, "session", None)
    _state.session = session
    try:
        yield
    finally:
        _state.session = previous
        if session is not None:
            session.close()


def request_stop(grace: float) -> None:
    """This worker must stop (from a signal handler): the running trial has ``grace`` seconds
    to reach the end of its next ``checkpoint.save``; then it is handed back."""
    if _stop["at"] is None:
        _stop["at"] = time.monotonic() + grace


def stop_requested() -> bool:
    return _stop["at"] is not None


def stop_deadline() -> float | None:
    """When the grace period of a requested stop ends (``time.monotonic``), or None."""
    return _stop["at"]


def reset_stop() -> None:
    """Forget a stop request (a fresh worker process, or tests)."""
    _stop["at"] = None
