"""Retry a storage call when SQLite says "database is locked", instead of letting a worker die.

SQLite lets one writer in at a time. The busy timeout (see :mod:`.db`) makes most waits happen
inside SQLite; this is the second line for the waits that outlast it, and for MySQL/PostgreSQL
deadlock or serialization errors that are safe to run again.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

T = TypeVar("T")
_log = logging.getLogger("tunefleet.storage")

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


def with_backoff(call: Callable[[], T], *, what: str, max_wait: float = 600.0,
                 first: float = 0.05, cap: float = 5.0,
                 retry_if: Callable[[BaseException], bool] = is_transient) -> T:
    """Run CALL, retrying errors RETRY_IF accepts (transient storage errors by default) with
    jittered exponential back-off for up to MAX_WAIT seconds in all; other errors, and the
    last retried one, propagate."""
    deadline = time.monotonic() + max_wait
    delay = first
    tries = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not retry_if(exc) or time.monotonic() + delay > deadline:
                raise
            tries += 1
            if tries in (1, 10, 100):
                _log.warning("storage busy during %s (%s); retrying with back-off", what,
                             _why(exc))
            time.sleep(delay * (0.5 + random.random()))
            delay = min(cap, delay * 2)
