"""Retry a storage call when SQLite says "database is locked", instead of letting a worker die;
wait out a database that is away (restarted, failed over, unreachable) for up to the storage
timeout.

SQLite lets one writer in at a time. The busy timeout (see :mod:`.db`) makes most waits happen
inside SQLite; this is the second line for the waits that outlast it, and for MySQL/PostgreSQL
deadlock or serialization errors that are safe to run again.

What counts as an outage is :func:`tunefleet._outage.outage_words`; it has its own deadline,
``outage_wait`` (a worker's ``--storage-timeout``), past which :class:`StorageUnreachable` ends
the worker with one line instead of a traceback.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from tunefleet._outage import Notice
from tunefleet._outage import with_backoff as backoff

T = TypeVar("T")


class StorageUnreachable(BaseException):
    """The database stayed away longer than the storage timeout (raised from its last error).

    A ``BaseException``, like ``WorkerStopped``: an objective's ``except Exception`` around its
    ``trial.report`` must not take it for its own failure, nor a retry around a storage call
    for a busy database; it ends the worker, which says so in one line."""

    def __init__(self, seconds: float, words: str) -> None:
        super().__init__(f"the storage could not be reached for {seconds:.0f} s ({words})")
        self.seconds = seconds
        self.words = words


_TRANSIENT = (
    "database is locked",
    "database table is locked",
    "deadlock found",
    "deadlock detected",
    "could not serialize access",
    "lock wait timeout exceeded",
    "server has gone away",
    "lost connection to mysql server",
)


def is_transient(exc: BaseException) -> bool:
    """True when EXC (or what it wraps) is a lock or deadlock error worth retrying."""
    seen = 0
    while exc is not None and seen < 5:
        text = str(exc).lower()
        if any(t in text for t in _TRANSIENT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


#: What a process sees when another one creates the same tables at the same moment: Optuna's
#: ``RDBStorage`` checks for each table, then creates it (SQLAlchemy's ``create_all``), and
#: inserts its version rows; both steps lose a race to a concurrent process on every database.
_SCHEMA_RACE = (
    "already exists",  # SQLite, PostgreSQL ("relation ... already exists"), MySQL 1050
    "duplicate key value",  # PostgreSQL: pg_type row of a table or enum created twice
    "unique constraint failed",  # SQLite: version_info / alembic_version inserted twice
    "duplicate entry",  # MySQL/MariaDB: the same
    "integrityerror",
)


def is_schema_race(exc: BaseException) -> bool:
    """True when EXC is transient, or what losing the race to create a fresh storage's tables
    looks like. Every step of that creation checks first, so running it again is safe."""
    if is_transient(exc):
        return True
    seen = 0
    while exc is not None and seen < 5:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(t in text for t in _SCHEMA_RACE):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return False


def _why(exc: BaseException) -> str:
    """The words of EXC that made it retryable (a storage URL can push them off a short line)."""
    text = str(exc).lower()
    for phrase in _TRANSIENT + _SCHEMA_RACE:
        if phrase in text:
            return phrase
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]


#: How a storage-mode worker says a wait.
_NOTICE = Notice(
    logging.getLogger("tunefleet.storage"),
    away="storage unreachable during {what} ({words}); waiting up to {wait:g} s for it to "
         "come back",
    back="storage back after {seconds:.0f} s ({what})",
    gone=StorageUnreachable,
    busy="storage busy during {what} ({why}); retrying with back-off", why=_why)


def with_backoff(call: Callable[[], T], *, what: str, max_wait: float = 600.0,
                 first: float = 0.05, cap: float = 5.0,
                 retry_if: Callable[[BaseException], bool] = is_transient,
                 outage_wait: float | None = None) -> T:
    """:func:`tunefleet._outage.with_backoff` in a storage-mode worker's words, retrying
    transient storage errors (a locked SQLite file, a deadlock) by default; past OUTAGE_WAIT
    it raises :class:`StorageUnreachable`."""
    return backoff(call, what=what, notice=_NOTICE, max_wait=max_wait, first=first, cap=cap,
                   retry_if=retry_if, outage_wait=outage_wait)
