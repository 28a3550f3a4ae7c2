"""Workers as local processes, one per slot, talking to the coordinator over pipes.

By default a worker is forked from the coordinator, which has already imported Optuna, the
objective's modules and tunefleet: a worker is ready in milliseconds instead of paying a fresh
interpreter's start-up on a busy machine. ``start_method="spawn"`` or ``"forkserver"`` are
there for programs that cannot be forked (a parent holding CUDA or threads that hold locks).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Sequence

from tunefleet.backends._base import Backend
from tunefleet.gpus import worker_env
from tunefleet.transport._base import Link
from tunefleet.transport.local import PipeChannel, PipeLink, PipeListener


def _process_main(conn: Connection, parent_pid: int, env: dict[str, str]) -> None:
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    from tunefleet.hub.worker import serve

    code = serve(PipeChannel(conn, parent_pid))
    os._exit(code)  # skip the parent's atexit handlers, inherited through fork


class ProcessBackend(Backend):
    """Local worker processes; ``gpus`` are handed out one per slot."""

    def __init__(self, gpus: Sequence[int | str] | None = None,
                 start_method: str | None = None) -> None:
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(start_method)
        self._gpus = list(gpus) if gpus else None
        self.listener = PipeListener()
        self._procs: dict[PipeLink, tuple[int, mp.process.BaseProcess]] = {}
        self._host = socket.gethostname()

    def default_workers(self) -> int:
        return len(self._gpus) if self._gpus else (os.cpu_count() or 1)

    def start(self, n_workers: int) -> None:
        for slot in range(n_workers):
            self._spawn(slot)

    def replace(self, link: Link) -> None:
        slot, _ = self._procs.pop(link, (0, None))  # type: ignore[arg-type]
        self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_process_main, name=f"tunefleet-worker-{slot}",
                                 args=(child_conn, os.getpid(), worker_env(slot, self._gpus)))
        proc.start()
        child_conn.close()
        link = PipeLink(parent_conn, f"{self._host}/{proc.pid}", lambda: _describe_exit(proc))
        self._procs[link] = (slot, proc)
        self.listener.add(link)

    def shutdown(self, grace: float = 2.0) -> None:
        self.listener.close()
        deadline = time.monotonic() + grace
        procs = [p for _, p in self._procs.values()]
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(1.0)
        self._procs.clear()


def _describe_exit(proc: mp.process.BaseProcess) -> str:
    proc.join(1.0)
    code = proc.exitcode
    who = f"worker process {proc.pid}"
    if code is None:
        return f"{who} closed its connection while still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{who} was killed by {name}"
    return f"{who} exited with code {code}"
