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
import math
import random
import time
from typing import Callable, TypeVar

from tunefleet._outage import outage_words

T = TypeVar("T")
_log = logging.getLogger("tunefleet.storage")


class StorageUnreachable(BaseException):
    """The database stayed away longer than the storage timeout (raised from its last error).

    A ``BaseException``, like ``WorkerStopped``: an objective's ``except Exception`` around its
    ``trial.report`` must not take it for its own failure, nor a retry around a storage call
    for a busy database; it ends the worker, which says so in one line."""

    def __init__(self, seconds: float, words: str) -> None:
        super().__init__(f"the storage could not be reached for {seconds:.0f} s ({words})")
        self.seconds = seconds
        self.words = words


#: When this process last saw the database away (``time.monotonic()``). Every worker's
#: heartbeats stop during an outage, so trials that look stale right after it are not failed
#: until a grace period after it (see ``StorageWorker._reap``).
_last_outage = -math.inf


def note_outage() -> None:
    """Remember that the database was seen away just now."""
    global _last_outage
    _last_outage = time.monotonic()


def seconds_since_outage() -> float:
    """Seconds since this process last saw the database away (infinite if never)."""
    return time.monotonic() - _last_outage

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
                 retry_if: Callable[[BaseException], bool] = is_transient,
                 outage_wait: float | None = None) -> T:
    """Run CALL, retrying errors RETRY_IF accepts (transient storage errors by default) with
    jittered exponential back-off for up to MAX_WAIT seconds in all; other errors, and the
    last retried one, propagate.

    With OUTAGE_WAIT, an outage (the database away, whatever RETRY_IF says) is waited out the
    same way for up to OUTAGE_WAIT seconds from its first error, then :class:`StorageUnreachable`
    is raised from the last one. Without it an outage is any other error, as before. CALL must be
    safe to run again after an error whose reply may have been lost (see the callers)."""
    deadline = time.monotonic() + max_wait
    delay = first
    tries = 0
    away_since: float | None = None
    while True:
        try:
            result = call()
        except Exception as exc:
            words = outage_words(exc) if outage_wait is not None else None
            now = time.monotonic()
            if words is not None:
                note_outage()
                if away_since is None:
                    away_since = now
                    _log.warning("storage unreachable during %s (%s); waiting up to %g s for "
                                 "it to come back", what, words, outage_wait)
                left = outage_wait - (now - away_since)
                if left <= 0:
                    raise StorageUnreachable(now - away_since, words) from exc
                pause = min(delay * (0.5 + random.random()), left)  # a last try at the end
            else:
                if not retry_if(exc) or now + delay > deadline:
                    raise
                tries += 1
                if tries in (1, 10, 100):
                    _log.warning("storage busy during %s (%s); retrying with back-off", what,
                                 _why(exc))
                pause = delay * (0.5 + random.random())
            time.sleep(pause)
            delay = min(cap, delay * 2)
            continue
        if away_since is not None:
            _log.warning("storage back after %.0f s (%s)", time.monotonic() - away_since, what)
        return result
