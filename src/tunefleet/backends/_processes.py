"""Workers as local processes, one per slot, talking to the coordinator over pipes.

By default a worker is forked from the coordinator, which has already imported Optuna, the
objective's modules and tunefleet: a worker is ready in milliseconds instead of paying a fresh
interpreter's start-up on a busy machine. A parent that has imported PyTorch is forked too when
each worker runs one CPU thread (PyTorch's DataLoader forks its workers the same way) and no
CUDA context exists; ``torch._dynamo``, which PyTorch 2 imports when the first optimizer is
built, is imported in the parent first, once. A torch parent whose workers run more threads
cannot be forked safely (its OpenMP pool, inherited half-made, hangs the child in its first
parallel region), nor can one with JAX or TensorFlow (threads started at import), nor one that
has used joblib's loky executor (scikit-learn with ``n_jobs>1``, ``joblib.Parallel``: a forked
child inherits the executor without its manager thread and hangs in its first
``joblib.Parallel``). Then the default is ``"forkserver"``: one fresh interpreter, started once
per process, imports tunefleet, Optuna and PyTorch (if the parent has it; never JAX or
TensorFlow, never the user's ``__main__``) and forks each worker from there, so that no worker
pays those imports again (a fresh interpreter that imports torch took 2-3 s per worker, all of
them at once on a small machine). It never runs a torch operation, so nothing half-made is
inherited. ``"spawn"``: each worker is a fresh ``python -m tunefleet.backends._child``. Either
way a worker gets the objective by cloudpickle, without re-running the user's ``__main__`` (no
``if __name__ == "__main__"`` guard needed).
``start_method=`` overrides the choice.

Each worker's OpenMP and BLAS pools are capped at ``threads_per_worker`` threads (default: the
CPUs this process may use, divided by the number of workers, at least 1), unless the user has
set ``OMP_NUM_THREADS`` already; ``threads_per_worker=0`` leaves them alone. See
``tunefleet.hub.limit_threads``.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Iterator, Sequence

from tunefleet._children import end_children, kill_tree, own_children
from tunefleet.backends._base import Backend
from tunefleet.errors import UsageError
from tunefleet._gpus import worker_env
from tunefleet.hub import THREAD_VARS
from tunefleet.transport import Link, PipeChannel, PipeLink, PipeListener


def _process_main(conn: Connection, env: dict[str, str],
                  cwd: str | None = None, whole_env: bool = False) -> None:
    if whole_env:  # a fork server's environment is from its start: the coordinator's is now
        os.environ.clear()
    os.environ.update(env)
    if cwd is not None and cwd != os.getcwd():  # a fork server's folder is from its start
        os.chdir(cwd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    _own_group()
    own_children()  # SIGTERM's default (not the coordinator's handler); the objective's processes
    from tunefleet.hub import forget_parent_pools, limit_threads, serve

    # The parent's atexit handlers are not this worker's (multiprocessing never runs them in a
    # forked child); those the objective's libraries register here are, as in any process:
    # joblib removes its memmapping folders in one, and the resource tracker warns of leaks
    # otherwise.
    atexit._clear()
    forget_parent_pools()
    if THREADS_VAR in env:
        limit_threads(int(env[THREADS_VAR]))
    # serve() shuts down the pools the objective started; then this worker's atexit handlers,
    # and multiprocessing's own clean-up, which waits for threads the objective left running.
    # The parent to watch is this process's own: the coordinator when forked from it, the
    # fork server otherwise (which lives as long as the coordinator). Watching the
    # coordinator's pid there took any reply slower than 1 s for the coordinator's death.
    code = serve(PipeChannel(conn, os.getppid()))
    end_children(services=False)  # what the objective left running (before multiprocessing's
    atexit._run_exitfuncs()        # own clean-up); services once their libraries said goodbye
    end_children()
    sys.exit(code)


def _own_group() -> None:
    """Make this worker the leader of a process group of its own, which the processes its
    objective starts join: the backend ends the whole group when the worker must go (silent,
    lost, or still there at shutdown), even what a worker that crashed left behind. Ctrl-C
    (the terminal's SIGINT to its foreground group) is the coordinator's to handle anyway."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass


#: The environment variable that tells a worker how many threads its pools may use.
THREADS_VAR = "TUNEFLEET_THREADS_PER_WORKER"


def threads_per_worker(n_workers: int, requested: int | None) -> int | None:
    """How many OpenMP/BLAS threads each of ``n_workers`` local workers may use: ``requested``
    if given (0: no limit), else None when the user set ``OMP_NUM_THREADS`` themselves, else
    this process's CPUs divided among the workers."""
    if requested is not None:
        return requested or None
    if "OMP_NUM_THREADS" in os.environ:
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, n_workers))


class ProcessBackend(Backend):
    """Local worker processes; ``gpus`` is the layout (``tunefleet._gpus.gpu_layout``): worker
    slot i starts with ``CUDA_VISIBLE_DEVICES=gpus[i]``, one worker per slot by default."""

    def __init__(self, gpus: Sequence[int | str] | None = None,
                 start_method: str | None = None, threads_per_worker: int | None = None) -> None:
        if start_method not in (None, "fork", "spawn", "forkserver"):
            raise UsageError(f"start_method {start_method!r}: choose fork, forkserver or spawn")
        self._method = start_method  # None: chosen at start, once the thread limit is known
        self._fork: mp.context.BaseContext | None = None
        self._gpus = list(gpus) if gpus else None
        self.listener = PipeListener()
        self._procs: dict[PipeLink, tuple[int, _Proc]] = {}
        self._host = socket.gethostname()
        self._threads_requested = threads_per_worker
        self._threads: int | None = None
        if threads_per_worker is not None and threads_per_worker < 0:
            raise UsageError(f"threads_per_worker={threads_per_worker}: give 0 (no limit) "
                             "or more")

    def default_workers(self) -> int:
        return len(self._gpus) if self._gpus else (os.cpu_count() or 1)

    def start(self, n_workers: int) -> None:
        self._threads = threads_per_worker(n_workers, self._threads_requested)
        method = self._method = self._method or default_start_method(self._threads)
        if method == "fork" and "torch" in sys.modules:
            _preload(_PRELOAD_TORCH)  # here once, not in each worker's first trial
        self._fork = forkserver_context() if method == "forkserver" else (
            mp.get_context("fork") if method == "fork" else None)
        for slot in range(n_workers):
            self._spawn(slot)

    def kill(self, link: Link) -> None:
        """SIGKILL the silent worker and every process below it (a stopped process too), and
        forget its pipe: the coordinator does not wait for its end of file, which a process
        that cannot be reaped (stuck in the kernel) would never send."""
        entry = self._procs.get(link)  # type: ignore[call-overload]
        if entry is not None:
            _kill(entry[1])
            entry[1].join(0.0)  # reaped now if it is gone already; never waits
        self.listener.drop(link)

    def replace(self, link: Link) -> None:
        slot, _ = self._procs.pop(link, (0, None))  # type: ignore[arg-type]
        self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        env = worker_env(slot, self._gpus)
        if self._threads is not None:
            env[THREADS_VAR] = str(self._threads)
            env.update({var: str(self._threads) for var in THREAD_VARS})
        if self._fork is not None:
            if self._method == "forkserver":  # the server's environment is from its start
                env = {**os.environ, **env}
            parent_conn, child_conn = self._fork.Pipe(duplex=True)
            mp_proc = self._fork.Process(target=_process_main, name=f"tunefleet-worker-{slot}",
                                         args=(child_conn, env, os.getcwd(),
                                               self._method == "forkserver"))
            with _main_not_imported_again():
                mp_proc.start()
            _set_group(mp_proc.pid)
            child_conn.close()
            proc: _Proc = _ForkedProc(mp_proc)
        else:
            parent_conn, proc = _start_fresh_interpreter(env)
        link = PipeLink(parent_conn, f"{self._host}/{proc.pid}", lambda: _describe_exit(proc))
        self._procs[link] = (slot, proc)
        self.listener.add(link)

    def shutdown(self, grace: float = 2.0) -> None:
        """Close the pipes (workers exit), wait up to ``grace`` seconds, then SIGKILL each
        worker still there with every process below it, stopped ones included; wait at most
        ``KILL_WAIT`` seconds more for them to be reaped (a process stuck in the kernel may
        never be: it is left, and the run ends anyway). Last, the workers' process groups
        are ended: nothing a worker started outlives the run."""
        self.listener.close()
        deadline = time.monotonic() + grace
        procs = [p for _, p in self._procs.values()]
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        killed = [p for p in procs if p.is_alive()]
        for p in killed:
            _kill(p)
        deadline = time.monotonic() + KILL_WAIT
        for p in killed:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            _end_group(p.pid)
        self._procs.clear()


#: Seconds shutdown waits for killed workers to be reaped before it gives up on them.
KILL_WAIT = 2.0


def _kill(proc: "_Proc") -> None:
    """SIGKILL a worker, everything below it, and its process group."""
    kill_tree(proc.pid)
    _end_group(proc.pid)


def _set_group(pid: int) -> None:
    """The new worker leads its own process group (it does so itself too: whichever comes
    first, the group exists before the worker's objective can start anything)."""
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # done already, or it has exited


def _exited(pid: int) -> bool:
    """Whether the worker ``pid`` has exited, without reaping it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped already
    except (AttributeError, OSError):
        return False


def _end_group(pgid: int) -> None:
    """SIGKILL what is left in the process group of the worker ``pgid`` (it is the group's
    leader, see ``_own_group``); nothing when the group is empty or is not the worker's."""
    try:
        if os.getpgid(pgid) != pgid:
            return  # the worker had not made its group yet, or the pid is another's now
    except ProcessLookupError:
        pass  # the leader is gone (reaped); its group may still hold the processes it left
    except OSError:
        return
    if pgid == os.getpgrp():
        return  # never the coordinator's own group
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


#: Libraries that start threads when imported: a forked child inherits their state without
#: the threads.
_NOT_FORK_SAFE = ("jax", "tensorflow")


def default_start_method(threads: int | None = None) -> str:
    """``fork`` (fast: the parent's imports are shared) unless the parent is not safe to fork
    for workers that run ``threads`` OpenMP threads each (see ``_torch_fork_safe``), or has
    a loky executor; then ``forkserver`` (its imports are shared too), or ``spawn`` where
    neither exists."""
    methods = mp.get_all_start_methods()
    if ("fork" in methods and not any(name in sys.modules for name in _NOT_FORK_SAFE)
            and not _loky_executor_started() and _torch_fork_safe(threads)):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _torch_fork_safe(threads: int | None) -> bool:
    """Whether workers forked from this process may run PyTorch: yes without torch; with
    torch, only when no CUDA context exists and each worker runs one CPU thread
    (``limit_threads(1)`` before its first trial). An OpenMP pool the parent started by
    running a torch operation comes half-made into a forked child, which hangs in its first
    parallel region of two threads or more; with one thread it never enters one. PyTorch's
    DataLoader forks its workers the same way, one thread each."""
    torch = sys.modules.get("torch")
    if torch is None:
        return True
    cuda = getattr(torch, "cuda", None)
    return threads == 1 and not (cuda is not None and cuda.is_initialized())


def _preload(modules: list[str]) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name)


#: What the fork server imports before it forks workers: what every worker needs, and PyTorch,
#: whose import (2-3 s) is safe to share as long as no torch operation has run, which the
#: server never does. ``torch._dynamo`` too: PyTorch 2 imports it (with sympy, about 820
#: modules) when the first optimizer is built, so that a worker's first trial took several
#: times its later ones. JAX and TensorFlow start threads when imported: their workers import
#: them themselves.
_PRELOAD = ["tunefleet.backends._processes", "tunefleet.hub", "optuna", "cloudpickle"]
_PRELOAD_TORCH = ["torch", "torch._dynamo"]


@contextlib.contextmanager
def _main_not_imported_again() -> Iterator[None]:
    """While a worker is started through the fork server, its preparation leaves out the
    user's ``__main__``: multiprocessing would import the script again in the worker (as
    spawn does), running a script without an ``if __name__ == "__main__"`` guard once more.
    The worker needs nothing of it: the objective arrives by cloudpickle."""
    from multiprocessing import spawn

    prepare = spawn.get_preparation_data

    def without_main(name: str) -> dict:
        data = prepare(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = without_main  # type: ignore[assignment]
    try:
        yield
    finally:
        spawn.get_preparation_data = prepare  # type: ignore[assignment]


def forkserver_context() -> mp.context.BaseContext:
    """multiprocessing's fork server, told once what to preload (never ``__main__``, which
    multiprocessing would import again as spawn does). The server starts with the first worker
    and serves every later run of this process; its preload is fixed then."""
    ctx = mp.get_context("forkserver")
    preload = _PRELOAD + (_PRELOAD_TORCH if "torch" in sys.modules else [])
    ctx.set_forkserver_preload(preload)
    return ctx


def _loky_executor_started() -> bool:
    """Whether joblib's loky executor exists in this process (its manager thread and worker
    processes do not survive a fork; a forked child's ``joblib.Parallel`` waits forever)."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    return getattr(loky, "_executor", None) is not None


class _Proc:
    """What the backend needs of a worker process, forked or started fresh."""

    pid: int

    def join(self, timeout: float) -> None: ...
    def is_alive(self) -> bool: ...
    def kill(self) -> None: ...
    @property
    def exitcode(self) -> int | None: ...


class _ForkedProc(_Proc):
    def __init__(self, proc: mp.process.BaseProcess) -> None:
        self._p = proc
        self.pid = proc.pid  # type: ignore[assignment]

    def join(self, timeout: float) -> None:
        self._p.join(timeout)

    def is_alive(self) -> bool:
        return self._p.is_alive()

    def kill(self) -> None:
        self._p.kill()

    @property
    def exitcode(self) -> int | None:
        return self._p.exitcode


class _FreshProc(_Proc):
    def __init__(self, popen: subprocess.Popen) -> None:
        self._p = popen
        self.pid = popen.pid

    def join(self, timeout: float) -> None:
        try:
            self._p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def is_alive(self) -> bool:
        return self._p.poll() is None

    def kill(self) -> None:
        self._p.kill()

    @property
    def exitcode(self) -> int | None:
        return self._p.poll()


def _start_fresh_interpreter(env: dict[str, str]) -> tuple[Connection, _Proc]:
    """A new ``python -m tunefleet.backends._child`` on one end of a socket pair (what
    ``multiprocessing.Pipe`` is on Unix); it sees the parent's ``sys.path``."""
    parent_sock, child_sock = socket.socketpair()
    child_env = {**os.environ, **env,
                 "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    popen = subprocess.Popen(
        [sys.executable, "-m", "tunefleet.backends._child", str(child_sock.fileno()),
         str(os.getpid())], pass_fds=[child_sock.fileno()], env=child_env,
        stdin=subprocess.DEVNULL)  # as a forked worker's: no read of the terminal
    _set_group(popen.pid)
    child_sock.close()
    return Connection(parent_sock.detach()), _FreshProc(popen)


def _describe_exit(proc: _Proc) -> str:
    if _exited(proc.pid):
        _end_group(proc.pid)  # what a worker that died left running (its pid is still held)
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
