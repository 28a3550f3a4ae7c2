"""A database that is away for a while (restarted, failed over, a network blip, all its
connections taken) is normal: the hub and the storage-mode workers wait it out for up to
``--storage-timeout`` seconds instead of stopping, and past it say so in one line."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

#: Seconds an outage is waited out by default: a restart of PostgreSQL or MariaDB (an upgrade,
#: a failover) takes seconds to a minute; five minutes covers one on a loaded machine.
DEFAULT_STORAGE_TIMEOUT = 300.0

#: Words (lower case) of the drivers' messages when the server is gone or not there yet:
#: psycopg2 / libpq, PyMySQL / MariaDB, and SQLAlchemy's own.
_PHRASES = (
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "could not connect to server",
    "connection refused",
    "connection reset by peer",
    "connection timed out",
    "broken pipe",
    "ssl connection has been closed unexpectedly",
    "no connection to the server",
    "connection already closed",
    "too many clients already",
    "remaining connection slots are reserved",
    "can't connect to mysql server",
    "lost connection to mysql server",
    "mysql server has gone away",
    "server shutdown in progress",
    "too many connections",
    "connection was killed",
    "can't reconnect until invalid transaction is rolled back",
)


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and every exception it came from (``__cause__``, ``__context__``, and the
    driver's own error that SQLAlchemy keeps in ``.orig``), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]


def outage_words(exc: BaseException) -> str | None:
    """The words that show ``exc`` (or an exception it came from) to be the database being
    away, or None: anything else (a bug, a constraint, a full disk) is not waited out."""
    for e in exception_chain(exc):
        text = str(e).lower()
        for words in _PHRASES:
            if words in text:
                return words
        if getattr(e, "connection_invalidated", False):  # SQLAlchemy saw the connection go
            return "the connection was lost"
    return None


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database is away (see :func:`outage_words`)."""
    return outage_words(exc) is not None


class StorageOutage(Exception):
    """The database stayed away longer than the storage timeout (raised from its last error)."""

    def __init__(self, seconds: float, words: str) -> None:
        super().__init__(f"the durable storage could not be reached for {seconds:.0f} s "
                         f"({words})")
        self.seconds = seconds
        self.words = words


def find_outage(exc: BaseException | None) -> StorageOutage | None:
    """The :class:`StorageOutage` that ``exc`` is or came from, if any."""
    return next((e for e in exception_chain(exc) if isinstance(e, StorageOutage)), None)


class _OutageNoise(logging.Filter):
    """Drops the logs that an outage makes the libraries write, each a traceback or six lines
    of SQL, since the wait is said in one line: Optuna's "Caught an error from sqlalchemy ...
    Falling back to a slower alternative" (the slower read fails as well) and SQLAlchemy's
    "Exception during reset or similar" (the pool could not roll back a connection whose
    server had gone; it drops the connection, which is right)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and is_outage(record.exc_info[1]):
            return False
        return outage_words(Exception(record.getMessage())) is None


_OUTAGE_NOISE = _OutageNoise()


def quiet_outage_noise(engine: Any) -> None:
    """Keeps the outage logs of Optuna's RDB storage and of ENGINE's connection pool (a
    SQLAlchemy engine) off the user's screen (see :class:`_OutageNoise`)."""
    import optuna

    loggers = [logging.getLogger(optuna.storages.RDBStorage.__module__)]
    pool_logger = getattr(getattr(engine, "pool", None), "logger", None)
    if pool_logger is not None:  # a logging.Logger, or SQLAlchemy's InstanceLogger around one
        loggers.append(getattr(pool_logger, "logger", pool_logger))
    for logger in loggers:
        if _OUTAGE_NOISE not in logger.filters:
            logger.addFilter(_OUTAGE_NOISE)


#: When this process last saw a database away (``time.monotonic()``). Every storage-mode
#: worker's heartbeats stop during an outage, so trials that look stale right after it are not
#: failed until a grace period after it (see ``StorageWorker._reap``).
_last_outage = -math.inf


def note_outage() -> None:
    """Remember that the database was seen away just now."""
    global _last_outage
    _last_outage = time.monotonic()


def seconds_since_outage() -> float:
    """Seconds since this process last saw the database away (infinite if never)."""
    return time.monotonic() - _last_outage


@dataclass(frozen=True)
class Notice:
    """How a caller of :func:`with_backoff` says a wait in its log, in its own words, and
    what it raises when the database stays away past the deadline."""

    logger: logging.Logger
    away: str  # formatted with what, words, wait (the deadline in seconds)
    back: str  # formatted with what, seconds
    gone: Callable[[float, str], BaseException]  # (seconds away, words) -> the exception
    busy: str = "{what}: {why}; retrying with back-off"  # formatted with what, why
    why: Callable[[BaseException], str] = str  # the words of a retried error, for ``busy``


def _never(exc: BaseException) -> bool:
    return False


#: The back-off's jitter: a generator of its own, so that waiting out an outage never moves
#: the user's ``random`` sequence (a seeded objective's draws).
_jitter = random.Random()


def with_backoff(call: Callable[[], T], *, what: str, notice: Notice, max_wait: float = 600.0,
                 first: float = 0.05, cap: float = 5.0,
                 retry_if: Callable[[BaseException], bool] = _never,
                 outage_wait: float | None = None) -> T:
    """Run CALL, retrying errors RETRY_IF accepts with jittered exponential back-off for up to
    MAX_WAIT seconds in all; other errors, and the last retried one, propagate. The one retry
    loop of tunefleet's database calls: the hub's mirror and storage-mode workers.

    With OUTAGE_WAIT, an outage (the database away, whatever RETRY_IF says) is waited out the
    same way for up to OUTAGE_WAIT seconds from its first error, then ``notice.gone`` is raised
    from the last one; the wait and the return are said in one line each. Without it an outage
    is any other error. CALL must be safe to run again after an error whose reply may have
    been lost (see the callers)."""
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
                    notice.logger.warning(notice.away.format(what=what, words=words,
                                                             wait=outage_wait))
                left = outage_wait - (now - away_since)  # type: ignore[operator]
                if left <= 0:
                    raise notice.gone(now - away_since, words) from exc
                pause = min(delay * (0.5 + _jitter.random()), left)  # a last try at the end
            else:
                if not retry_if(exc) or now + delay > deadline:
                    raise
                tries += 1
                if tries in (1, 10, 100):
                    notice.logger.warning(notice.busy.format(what=what, why=notice.why(exc)))
                pause = delay * (0.5 + _jitter.random())
            time.sleep(pause)
            delay = min(cap, delay * 2)
            continue
        if away_since is not None:
            notice.logger.warning(notice.back.format(what=what,
                                                     seconds=time.monotonic() - away_since))
        return result
