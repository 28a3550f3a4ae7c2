"""The processes an objective starts: ended when its trial or its worker ends.

An objective may open a ``multiprocessing.Pool``, a ``ProcessPoolExecutor``, joblib's workers or
a ``subprocess``, as under ``study.optimize``. What it leaves running must not outlive the run:
an orphan holds the run's output pipe open (``tunefleet run ... | cat`` never returns) and a
GPU's memory. A worker process that tunefleet owns (a local worker, ``tunefleet worker``) calls
:func:`own_children` once; it then

* becomes a *subreaper* (Linux): a process its objective started whose parent exits is
  re-parented to the worker, not to init, so the worker still finds it;
* after each trial (:func:`trial_started` / :func:`trial_ended`), ends the processes started
  during the trial that are still running, except the pools multiprocessing still tracks
  (``multiprocessing.active_children()``: a pool the objective keeps for its next trial), its
  helpers (resource trackers, the fork server), and services that lead a session of their own
  (started with ``setsid``: W&B's ``wandb-core``, which the next trial's ``wandb.init`` talks
  to; ended, it made that ``wandb.init`` fail); what ran before the trial (started by
  ``setup``) stays;
* at its exit (:func:`end_children`), ends every process below it: SIGTERM, a bounded wait,
  then SIGKILL.

The check after a trial is one ``waitid`` system call when the worker has no child process (the
usual case): /proc is read only when it has some. The coordinator's side, :func:`kill_tree`,
ends a worker that stopped answering together with everything below it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Iterable

_state: dict[str, object] = {"owned": False, "kept": None}
_PROC = os.path.isdir("/proc")


def own_children() -> None:
    """This process is a worker that tunefleet started: track the processes its objective
    starts, and give it default signal handlers (a forked worker inherits the coordinator's
    SIGTERM handler; the objective's pools must see SIGTERM's default). SIGINT stays as the
    caller set it (ignored in hub workers: Ctrl-C is the coordinator's)."""
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _state["owned"] and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_block_fork_signals, after_in_parent=_unblock_fork_signals,
                            after_in_child=_tunefleets_handlers_off)
    _become_subreaper()
    _state["owned"] = True
    _state["kept"] = None


_FORK_SIGNALS = (signal.SIGTERM, signal.SIGALRM)  # those tunefleet handles in a worker
_fork_mask = threading.local()  # the forking thread's signal mask before the fork


def _block_fork_signals() -> None:
    """Before a fork in a worker: block SIGTERM and SIGALRM in the forking thread, so that the
    child starts with them blocked, until it has their default actions back. Sent to a child
    that has not run yet (``Pool.terminate()`` just after ``Pool(2)`` on a busy machine), one
    went to the worker's handler, inherited, whose pending flag the child's interpreter clears
    after the fork: the pool process never died, and waited for ever for the queue's lock,
    which ``terminate()`` holds, while ``terminate()`` waited for it."""
    if hasattr(signal, "pthread_sigmask"):
        _fork_mask.old = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_SIGNALS)


def _unblock_fork_signals() -> None:
    """After a fork, in the parent and (last) in the child: the mask from before the fork."""
    old = getattr(_fork_mask, "old", None)
    if old is not None:
        _fork_mask.old = None
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _tunefleets_handlers_off() -> None:
    """In a process forked from a worker (a pool's): the signals tunefleet handles in the
    worker (SIGTERM's preemption, its SIGALRM) get their default action at once, before the
    child runs anything. A handler in Python runs only when the child runs Python code: one
    blocked in C (a lock taken at the fork) would never die of ``Pool.terminate()``. Then
    they are unblocked (see ``_block_fork_signals``): one sent meanwhile ends the child now."""
    try:
        for signum in _FORK_SIGNALS:
            handler = signal.getsignal(signum)
            if getattr(handler, "__module__", "").startswith("tunefleet"):
                signal.signal(signum, signal.SIG_DFL)
    finally:
        _unblock_fork_signals()


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:
        pass  # the processes of exited children are then found no more: the rest still works


def _has_children() -> bool:
    """Whether this process has any child process, running or exited: one system call."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    except (AttributeError, OSError):  # no waitid (not Linux/BSD): look
        return bool(descendants(os.getpid()))
    return True


def trial_started() -> None:
    """A trial begins: what runs now (``setup``'s processes, pools kept from earlier trials)
    is not the trial's to end."""
    if _state["owned"] and _state["kept"] is None:
        _state["kept"] = set(descendants(os.getpid())) if _has_children() else set()


def trial_ended(grace: float = 1.0) -> None:
    """A trial ended: end the processes it started and left running (see the module's
    docstring for what is kept)."""
    if not _state["owned"]:
        return
    if not _has_children():
        _state["kept"] = set()
        return
    tree = _tree(os.getpid())
    services = {pid for pid in tree if _leads_own_session(pid)}
    keep = _below(tree, set(_state["kept"] or ()) | _tracked() | services)  # type: ignore[arg-type]
    leftovers = [pid for pid in tree if pid not in keep]
    if leftovers:
        _end(leftovers, grace)
    _state["kept"] = {pid for pid in keep if pid in tree}


def end_children(grace: float = 2.0, services: bool = True) -> None:
    """The worker exits: end every process below it (SIGTERM, up to ``grace`` seconds for them
    to exit, then SIGKILL), and reap those multiprocessing does not. ``services=False`` spares
    those that lead a session of their own (and what they started): their library's exit
    handler still has to say goodbye to them (W&B's ``teardown`` printed a traceback when its
    service was gone); call again with ``services=True`` after the exit handlers."""
    if not _state["owned"] or not _has_children():
        return
    pids = descendants(os.getpid())
    if not services:
        tree = _tree(os.getpid())
        spared = _below(tree, {pid for pid in tree if _leads_own_session(pid)})
        pids = [pid for pid in pids if pid not in spared]
    if pids:
        _end(pids, grace, helpers=_helpers())


def _end(pids: list[int], grace: float, helpers: Iterable[int] = ()) -> None:
    """SIGTERM to ``pids`` but ``helpers`` (resource trackers ignore SIGTERM; they go once the
    others have), a bounded wait, then SIGKILL to whatever is left; reap our own children
    that multiprocessing does not track (it reaps its own, and ``subprocess.Popen`` copes
    with a child reaped for it)."""
    helpers = set(helpers)
    _signal(pids, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    _signal([p for p in pids if p not in helpers], signal.SIGTERM)
    deadline = time.monotonic() + grace
    tracked = _tracked()
    alive = list(pids)
    while True:
        _reap(p for p in alive if p not in tracked)
        alive = [p for p in alive if process_alive(p)]
        if not [p for p in alive if p not in helpers] or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    if alive:
        _signal(alive, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while alive and time.monotonic() < deadline:
            _reap(p for p in alive if p not in tracked)
            alive = [p for p in alive if process_alive(p)]
            if alive:
                time.sleep(0.01)
    if tracked:
        import multiprocessing

        multiprocessing.active_children()  # reaps the pool processes that were ended


def kill_tree(pid: int) -> None:
    """SIGKILL process ``pid`` and every process below it, at once: they are stopped first
    (SIGSTOP), so that none starts another meanwhile. For a worker that stopped answering;
    SIGKILL ends a stopped process too. Reaping ``pid`` is the caller's."""
    seen: list[int] = []
    for _ in range(3):
        new = [p for p in descendants(pid) if p not in seen]
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        seen.extend(new)
    _signal([pid, *seen], signal.SIGKILL)


def join_workers(procs: list) -> None:
    """Wait for worker processes (``multiprocessing.Process``) of one command. Once one has
    exited 0 (the study is done) and all those left are stopped (SIGSTOP: the coordinator has
    dropped them already), those are killed: nothing waits for a process that cannot move."""
    from multiprocessing.connection import wait

    while True:
        alive = [p for p in procs if p.is_alive()]
        if not alive:
            return
        if any(p.exitcode == 0 for p in procs) and all(_stopped(p.pid) for p in alive):
            for p in alive:
                kill_tree(p.pid)
            deadline = time.monotonic() + 2.0
            for p in alive:
                p.join(max(0.0, deadline - time.monotonic()))
            return
        wait([p.sentinel for p in alive], timeout=0.5)


def _stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, or traced)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] in ("T", "t")
    except OSError:
        return False


# -- the process tree, from /proc -------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc; empty where there is none."""
    return list(_tree(pid))


def _tree(pid: int) -> dict[int, int]:
    """``{process: its parent}`` for every process below ``pid``, parents before children."""
    out: dict[int, int] = {}
    todo = [pid]
    use_children_files = os.path.exists(f"/proc/{pid}/task")
    table: dict[int, list[int]] | None = None
    while todo:
        parent = todo.pop(0)
        if use_children_files:
            kids = _children_of(parent)
            if kids is None:  # the kernel has no children files: read every process's parent
                use_children_files = False
                table = _parent_table()
                kids = table.get(parent, [])
        else:
            if table is None:
                table = _parent_table()
            kids = table.get(parent, [])
        for kid in kids:
            if kid not in out and kid != pid:
                out[kid] = parent
                todo.append(kid)
    return out


def _children_of(pid: int) -> list[int] | None:
    """The children of ``pid`` from /proc/PID/task/*/children; None when the kernel does not
    offer those files."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone meanwhile
    kids: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{task}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return kids


def _parent_table() -> dict[int, list[int]]:
    """``{parent: [children]}`` from every /proc/PID/stat."""
    table: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            table.setdefault(int(fields[1]), []).append(int(name))
    return table


def _below(tree: dict[int, int], roots: set[int]) -> set[int]:
    """``roots`` (those in ``tree``) and everything below them."""
    out = {pid for pid in roots if pid in tree}
    for pid, parent in tree.items():  # parents come before their children
        if parent in out:
            out.add(pid)
    return out


def _tracked() -> set[int]:
    """Processes multiprocessing (and joblib) still track, with their helper processes: a pool
    the objective keeps, and the resource trackers and fork server it needs."""
    mp = sys.modules.get("multiprocessing")
    out: set[int] = set()
    if mp is not None:
        try:
            out.update(p.pid for p in mp.active_children() if p.pid)
        except Exception:
            pass
    out.update(_helpers())
    return out


def _helpers() -> set[int]:
    """The helper processes of multiprocessing and joblib started in this process."""
    out: set[int] = set()
    for module, attr, field in (
            ("multiprocessing.resource_tracker", "_resource_tracker", "_pid"),
            ("multiprocessing.forkserver", "_forkserver", "_forkserver_pid"),
            ("joblib.externals.loky.backend.resource_tracker", "_resource_tracker", "_pid")):
        pid = getattr(getattr(sys.modules.get(module), attr, None), field, None)
        if isinstance(pid, int):
            out.add(pid)
    return out


def _leads_own_session(pid: int) -> bool:
    """Whether ``pid`` made a session of its own (``setsid``, ``start_new_session=True``): a
    service meant to outlive the call that started it, kept until the worker ends."""
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (below one), or reaped already


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not); any user's process."""
    if _PROC:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
