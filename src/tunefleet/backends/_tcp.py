"""Workers that reach the coordinator over TCP: by hand (``tunefleet worker --connect``), or
started by an engine (Dask, Ray, Spark) whose backends build on ``TcpBackend``."""

from __future__ import annotations

import abc
import importlib
import logging
import re
import secrets
import threading
import time
import uuid
from typing import Any, Callable, Sequence

from tunefleet.backends._base import Backend
from tunefleet.errors import UsageError
from tunefleet.transport import Link, TcpListener, load_key, parse_address

#: An engine task that fails this many times in a row before its worker said hello means the
#: workers cannot start there (tunefleet missing on the executors, wrong Python): stop the
#: study with that error instead of waiting forever for workers that never come.
MAX_START_FAILURES = 3


def error_line(exc: BaseException) -> str:
    """One line that says why an engine task failed: the innermost Python exception line of
    the (often long, Java-wrapped) message, else its first line."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", ln)]
    if found:
        return found[-1][:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def token_of(link: Link) -> str:
    """The task token an engine worker put in front of its label (``token@host/pid``)."""
    return link.name.split("@", 1)[0] if "@" in link.name else ""


def engine_worker(address: str, key: bytes, token: str) -> int:
    """What one engine task runs: a hub worker, until the study is done."""
    from tunefleet.hub import run_engine_worker

    return run_engine_worker(address, key, token)


_logger = logging.getLogger("tunefleet")


class TcpBackend(Backend):
    """Owns the authenticated TCP listener; engines subclass it to start workers that connect.

    Args:
        listen: where the coordinator listens (loopback and a free port by default).
        advertise: the address workers connect to, when it differs from ``listen`` (a
            coordinator listening on ``tcp://0.0.0.0:5555`` is reached as ``tcp://myhost:5555``).
        key: the shared secret; a fresh random one is made when not given (engine-started
            workers receive it with their task).
        listener: a ``TcpListener`` already bound with ``key`` (``tunefleet serve`` binds
            first, so that a busy port is reported before anything else happens).
    """

    def __init__(self, listen: str = "tcp://127.0.0.1:0", advertise: str | None = None,
                 key: bytes | None = None, gpus: Sequence[int | str] | None = None,
                 max_message: int | None = None, listener: TcpListener | None = None) -> None:
        self.key = key or secrets.token_hex(32).encode()
        if listener is not None:
            if listener.key != self.key:
                raise ValueError("the listener given was bound with another key")
            tcp = listener
        else:
            kwargs = {"max_message": max_message} if max_message else {}
            tcp = TcpListener(listen, self.key, **kwargs)
        self.listener = tcp
        if advertise:
            parse_address(advertise)
            self.address = advertise
        else:
            host, port = parse_address(tcp.address)
            self.address = f"tcp://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        self.gpus = list(gpus) if gpus else None
        self._said_hello: set[str] = set()
        self._ended: list[tuple[float, str, str]] = []  # (when, token, error)
        self._failures_in_a_row = 0
        self._gave_up: str | None = None
        self._events = threading.Lock()

    # -- engine tasks that end ------------------------------------------------------------------
    def task_ended(self, token: str, error: str | None) -> None:
        """Called (from any thread) when the engine task of worker ``token`` ends; ``error``
        is None when it returned normally."""
        if error is not None:
            with self._events:
                self._ended.append((time.monotonic(), token, error))

    def on_hello(self, link: Link) -> None:
        with self._events:
            self._said_hello.add(token_of(link))
            self._failures_in_a_row = 0

    def failure(self) -> str | None:
        """Engine tasks that failed before their worker said hello: start another, or after
        ``MAX_START_FAILURES`` in a row give up and say why. A failure counts a second after
        the task ended, so that a hello still in flight is counted first. Called every turn of
        the coordinator's loop: returns at once while no task has ended."""
        if self._gave_up is not None or not self._ended:
            return self._gave_up
        now = time.monotonic()
        with self._events:
            ripe = [e for e in self._ended if now - e[0] > 1.0]
            self._ended = [e for e in self._ended if now - e[0] <= 1.0]
            ripe = [e for e in ripe if e[1] not in self._said_hello]
            self._failures_in_a_row += len(ripe)
            give_up = self._failures_in_a_row >= MAX_START_FAILURES
        for _, token, error in ripe:
            _logger.warning(f"tunefleet: worker task {token} failed before it could join: "
                            f"{error}")
            if give_up:
                self._gave_up = f"worker tasks cannot start ({token}): {error}"
                break
            self._resubmit()
        return self._gave_up

    def _resubmit(self) -> None:
        """Start one more worker in place of one that never came (engines override)."""

    def kill(self, link: Link) -> None:
        """A silent worker on another host cannot be signalled from here: its connection is
        dropped, and nothing waits for it. Woken up, it finds the connection closed; with
        ``--reconnect-timeout`` it joins again and its late result is refused."""
        self.listener.drop(link)

    def shutdown(self, grace: float = 2.0) -> None:
        self.listener.close()


class EngineBackend(TcpBackend):
    """An engine (Dask, Ray, Spark, joblib) runs each worker as one long task. Here: the tasks'
    tokens and handles, ``n_workers`` of them at start, one more in place of each lost or
    failed one, and none once shutdown has begun. Subclasses launch one task (:meth:`_launch`)
    and call :meth:`_engine_module` first thing in ``__init__``."""

    #: The first word of the tasks' tokens (``dask-1a2b3c4d-7``), the backend's name and the
    #: ``tunefleet[...]`` extra that installs the engine.
    engine = "engine"
    #: The engine's module, imported by :meth:`_engine_module`.
    module = ""
    #: How to give workers GPUs on this engine, said to a user who passed ``gpus=``.
    gpus_instead = ""

    def __init__(self, **tcp: Any) -> None:
        super().__init__(**tcp)
        self._lock = threading.Lock()
        self._closed = False
        self._run = uuid.uuid4().hex[:8]
        self._count = 0
        self._tasks: dict[str, Any] = {}  # token -> the engine's handle of its task

    def _engine_module(self, gpus: Sequence[int | str] | None) -> Any:
        """The engine's module, or a ``UsageError`` that says what to do: engines give tasks
        their GPUs themselves, so ``gpus=`` is refused, and the engine is an optional extra."""
        if gpus:
            raise UsageError(f"backend={self.engine!r} does not take gpus=: {self.gpus_instead}")
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError:
            raise UsageError(f"backend {self.engine!r} needs {self.module.split('.')[0]!r}: "
                             f"pip install 'tunefleet[{self.engine}]'") from None

    def start(self, n_workers: int) -> None:
        for _ in range(n_workers):
            self._submit()

    def _submit(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._count += 1
            then = self._launch(f"{self.engine}-{self._run}-{self._count}")
        if then is not None:
            then()

    @abc.abstractmethod
    def _launch(self, token: str) -> Callable[[], None] | None:
        """Launch the task of worker ``token`` (with the lock held) and keep its handle in
        ``_tasks``; return what is left to do once the lock is released, if anything."""

    def _resubmit(self) -> None:
        self._submit()

    def replace(self, link: Link) -> None:
        self._submit()

    def _forget(self, token: str) -> Any:
        """Drop the handle of worker ``token``'s task (None when unknown) and return it."""
        with self._lock:
            return self._tasks.pop(token, None)

    def _close(self) -> list[Any]:
        """Launch no more tasks and close the listener (connected workers see the end of the
        stream and return); returns the handles of the tasks launched and not forgotten."""
        with self._lock:
            self._closed = True
            handles = list(self._tasks.values())
            self._tasks.clear()
        self.listener.close()
        return handles


class ThreadedEngineBackend(EngineBackend):
    """Engines whose call blocks while its one task runs (a Spark job, a joblib ``Parallel``
    call): each worker's call waits in a thread of its own, the handle of its task."""

    def _launch(self, token: str) -> Callable[[], None]:
        thread = threading.Thread(target=self._run_task, args=(token,), daemon=True,
                                  name=f"tunefleet-{token}")
        self._tasks[token] = thread
        return thread.start

    def _run_task(self, token: str) -> None:
        try:
            self._call(token)
        except Exception as exc:  # the worker's task failed: the coordinator saw the link go,
            if not self._closed:  # or the worker never started (see task_ended)
                _logger.info(f"tunefleet: {self.engine} task of worker {token} ended: "
                             f"{error_line(exc)}")
                self.task_ended(token, error_line(exc))

    @abc.abstractmethod
    def _call(self, token: str) -> None:
        """Run worker ``token``'s task through the engine; return when it ends."""

    def _join(self, grace: float) -> list[threading.Thread]:
        """Launch no more, close the listener, and wait up to ``grace`` seconds for the
        calls; returns the threads whose call still runs."""
        threads = self._close()
        deadline = time.monotonic() + max(grace, 0.1)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t for t in threads if t.is_alive()]


class ManualBackend(TcpBackend):
    """Starts no worker: workers join by hand, at any time, and may leave (elastic). Those
    workers must hold the key, so it is never made up here: ``key=`` or ``$TUNEFLEET_KEY``."""

    starts_workers = False

    def __init__(self, listen: str = "tcp://127.0.0.1:5555", advertise: str | None = None,
                 key: bytes | None = None, **options: Any) -> None:
        super().__init__(listen, advertise, key or load_key(None), **options)

    def start(self, n_workers: int) -> None:
        _logger.warning(f"tunefleet: waiting for workers on {self.listener.address}")
