"""A hub worker on any host: connect to a coordinator over authenticated TCP and run trials."""

from __future__ import annotations

import logging
import os
import socket
import sys

from tunefleet._children import join_workers
from tunefleet.errors import CoordinatorGone, CoordinatorUnreachable
from tunefleet.hub._worker import serve
from tunefleet.transport import TcpChannel, load_key


def run_worker(address: str, key_file: str | None = None, *, key: bytes | None = None,
               label: str | None = None, connect_timeout: float = 60.0,
               reconnect_timeout: float = 0.0, own_process: bool = False) -> int:
    """Join the coordinator at ``address`` and run trials until the study is done.

    With ``reconnect_timeout``, a coordinator that disappears (killed, restarted, partitioned)
    does not end this worker: it finishes its trial, tries that long to join the coordinator
    at the same address again, and hands over the result (the restarted coordinator reclaims
    the trial). Without, the worker leaves as soon as the coordinator is gone.

    ``own_process``: this process exists for this worker (``tunefleet worker``), so it may end
    itself the moment the coordinator is gone mid-trial. A worker inside an engine's process
    (Dask, Ray, Spark, a joblib thread) must not: it finishes its trial and returns.

    Returns 0 when the study is done (or the coordinator went away), 1 when the objective
    could not be loaded here, 2 when the coordinator cannot be reached or authenticated.
    """
    secret = key if key is not None else load_key(key_file)

    def waiting(why: str) -> None:
        print(f"tunefleet worker: no coordinator at {address} yet ({why}); trying for up to "
              f"{connect_timeout:g} s", file=sys.stderr)

    try:
        channel = TcpChannel(address, secret, connect_timeout=connect_timeout, waiting=waiting)
    except CoordinatorGone as exc:
        print(f"tunefleet worker: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("tunefleet").debug("connected to %s", address)
    if not reconnect_timeout:
        if own_process:
            channel.watch_while_running()
        return serve(channel, label=label)

    def reconnect() -> TcpChannel:
        print(f"tunefleet worker: the coordinator at {address} is gone; trying for "
              f"{reconnect_timeout:g} s to join it again", file=sys.stderr)
        try:
            return TcpChannel(address, secret, connect_timeout=reconnect_timeout)
        except CoordinatorGone as exc:  # the worker ends (exit 0): never without a word
            print(f"tunefleet worker: gave up joining the coordinator again: {exc}",
                  file=sys.stderr)
            raise

    return serve(channel, label=label, reconnect=reconnect)


def run_workers(address: str, n_processes: int, key_file: str | None = None,
                reconnect_timeout: float = 0.0) -> int:
    """``n_processes`` workers on this host, forked from one interpreter that has imported
    tunefleet and Optuna once: 64 workers start in about a second instead of 64 interpreter
    start-ups. Returns 0 once any of them saw the study done, else the worst exit code."""
    if n_processes == 1:
        return run_worker(address, key_file, reconnect_timeout=reconnect_timeout,
                          own_process=True)
    import multiprocessing as mp

    secret = load_key(key_file)  # read once, so a bad key file is one error, not N
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_forked_worker, args=(address, secret, reconnect_timeout),
                         daemon=False)
             for _ in range(n_processes)]
    for p in procs:
        p.start()
    try:
        join_workers(procs)  # a worker stopped (SIGSTOP) once the study is done is killed
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130
    codes = [p.exitcode for p in procs]
    return 0 if 0 in codes else max((c for c in codes if c is not None and c > 0), default=1)


def _forked_worker(address: str, secret: bytes, reconnect_timeout: float = 0.0) -> None:
    os._exit(run_worker(address, key=secret, reconnect_timeout=reconnect_timeout,
                        own_process=True))


#: How long an engine-started worker tries to reach the coordinator. Its listener is up before
#: any worker task is submitted, so a refusal means a wrong address or a study already over.
ENGINE_CONNECT_TIMEOUT = 5.0


def run_engine_worker(address: str, key: bytes, token: str) -> int:
    """What a Dask, Ray or Spark worker task runs: a hub worker labelled ``token@host/pid``.
    Raises when the coordinator cannot be reached, so the engine reports the task as failed
    and the backend can tell the coordinator that its workers cannot start."""
    label = f"{token}@{socket.gethostname()}/{os.getpid()}"
    code = run_worker(address, key=key, label=label, connect_timeout=ENGINE_CONNECT_TIMEOUT)
    if code == 2:
        raise CoordinatorUnreachable(f"ConnectionError: worker on {socket.gethostname()} cannot reach "
                           f"the coordinator at {address}")
    return code
