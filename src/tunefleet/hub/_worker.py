"""The worker side of hub mode: ask for a trial, run the objective on a proxy trial, send the
result with the request for the next one. The same loop runs behind every transport."""

from __future__ import annotations

import collections
import dataclasses
import linecache
import os
import pickle
import re
import socket
import sys
import threading
import traceback
import types
from typing import Any, Callable

import cloudpickle
import optuna

from tunefleet import checkpoint
from tunefleet import _children as children
from tunefleet.errors import CoordinatorGone
from tunefleet.hub import _protocol as P
from tunefleet.hub._beat import BeatingChannel
from tunefleet.hub._checkpoints import RemoteSession
from tunefleet.hub._proxy import ProxyTrial, StudyInfo
from tunefleet.transport import Channel, PipeChannel

_worker_data: Any = None


def worker_data() -> Any:
    """What the ``setup`` function given to ``optimize`` returned in this worker (once per
    worker, not per trial): a data set, a loaded model. ``None`` outside a worker."""
    return _worker_data


def set_worker_data(value: Any) -> None:
    """Give this worker its ``worker_data()`` before it serves: the data an engine hands each
    worker (a Spark broadcast's value, a partition's rows); a ``setup`` function still wins."""
    global _worker_data
    _worker_data = value


@dataclasses.dataclass
class WorkerConfig:
    """What a worker needs to run trials; shipped once per worker with cloudpickle, so
    closures, lambdas and objectives defined in ``__main__`` work."""

    objective: Callable[[optuna.Trial], Any]
    catch: tuple[type[BaseException], ...]
    n_objectives: int
    setup: Callable[[], Any] | None = None
    #: Seconds a trial gets to reach its next checkpoint once the worker is stopped (SIGTERM).
    grace: float = 5.0
    #: The checkpoint folder, for workers on the coordinator's machine (the others stream).
    checkpoints: str | None = None
    #: Bytes of resident memory above which a local worker is replaced after its trial.
    max_worker_memory: int | None = None

    def __post_init__(self) -> None:
        # The coordinator builds the config from the objective it was given: a limit set by
        # ``run_hub`` comes on the objective (``MemoryLimited``) and moves here.
        if isinstance(self.objective, MemoryLimited):
            self.max_worker_memory = self.objective.limit
            self.objective = self.objective.__wrapped__

    def __reduce__(self) -> tuple:
        # Pickled in the coordinator, loaded in the worker: locks in the objective's closure
        # (MLflowCallback keeps one) become new locks, and the source of functions defined
        # where no file holds it (a notebook cell, ``python -c``) travels for tracebacks.
        fields = (self.objective, self.catch, self.n_objectives, self.setup, self.grace,
                  self.checkpoints, self.max_worker_memory)
        return (_load_config, (_dumps(fields), _sources(self.objective, self.setup)))


_LOCK_TYPES = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


def _fresh_lock(lock: Any) -> tuple:
    return (_LOCK_TYPES[type(lock)], ())


def _code_with_filename(code: types.CodeType) -> tuple:
    """cloudpickle's reduction of a code object, with the file name it replaces by
    ``<dynamic-code>`` put back, so that tracebacks name the user's file."""
    ctor, args = cloudpickle.cloudpickle._code_reduce(code)
    return ctor, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, except that a lock pickles as a new, unlocked lock (a worker is another
    process, so a lock the parent holds means nothing there) and code keeps its file name."""

    dispatch_table = collections.ChainMap(
        {types.CodeType: _code_with_filename, **{t: _fresh_lock for t in _LOCK_TYPES}},
        cloudpickle.Pickler.dispatch_table)


def _dumps(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _load_config(data: bytes, sources: dict[str, list[str]]) -> WorkerConfig:
    for filename, lines in sources.items():
        if not os.path.exists(filename):  # a real file is read by linecache as usual
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return WorkerConfig(*pickle.loads(data))


def _sources(*functions: Any) -> dict[str, list[str]]:
    """The lines of the files the functions' code comes from, for the files this process
    knows (linecache) but a worker may not: notebook cells, ``<stdin>``, a file on another
    machine's disk. Code objects keep their file name through cloudpickle, so a worker's
    traceback names the user's file and line, and with this shows the line too."""
    out: dict[str, list[str]] = {}
    for fn in functions:
        fn = getattr(fn, "__wrapped__", fn)
        code = getattr(getattr(fn, "__call__", None), "__code__", None) or getattr(
            fn, "__code__", None)
        if not isinstance(code, types.CodeType):
            continue
        name = code.co_filename
        if name in out:
            continue
        lines = linecache.getlines(name, getattr(fn, "__globals__", None))
        if lines and sum(map(len, lines)) < 2_000_000:
            out[name] = lines
    return out


class _Lost(CoordinatorGone):
    """The coordinator went away; ``results`` are the finished trials that its storage may
    not hold (not received, or received and not stored yet), as ``(number, Result)``, each
    with every op of its trial, for a coordinator started again to reclaim."""

    def __init__(self, message: str, results: list[tuple[int, P.Result]]) -> None:
        super().__init__(message)
        self.results = results


def serve(channel: Channel, label: str | None = None,
          reconnect: Callable[[], Channel] | None = None) -> int:
    """Run trials for the coordinator behind ``channel`` until it says stop. Returns an exit
    code: 0 when the study is done or the coordinator is gone, 1 when the objective could not
    be loaded here. With ``reconnect`` (a new channel to the same address, raising
    ``CoordinatorGone`` once it gives up), a worker whose coordinator disappears keeps the
    finished results its storage may not hold, joins the coordinator started again and hands
    them over."""
    global _worker_data
    config: WorkerConfig | None = None
    reclaim: list[tuple[int, P.Result]] = []
    try:
        while True:
            try:
                channel.send(P.encode(P.Hello(os.getpid(), socket.gethostname(), label, reclaim)))
                msg = P.decode(channel.recv())
                reclaim = []  # answered: the coordinator has kept them
                if type(msg) is P.Stop:
                    return _stopped(msg, isinstance(channel, PipeChannel))
                if config is None:
                    try:
                        config = cloudpickle.loads(msg.payload)
                        if config.setup is not None:
                            _worker_data = config.setup()
                    except Exception as exc:
                        channel.send(P.encode(P.Failed(
                            f"worker on {socket.gethostname()} (pid {os.getpid()}) could not "
                            f"load the objective: {type(exc).__name__}: {exc}")))
                        return 1
                # Workers joined by pipes run on the coordinator's machine and share its disk.
                local = isinstance(channel, PipeChannel)
                channel = BeatingChannel(channel)  # liveness for the coordinator's timeout
                checkpoint.install_preemption(config.grace)
                return _trial_loop(channel, config, local, rejoins=reconnect is not None)
            except CoordinatorGone as exc:
                if reconnect is None:
                    return 0
                if isinstance(exc, _Lost):  # lost while running trials: results not stored
                    reclaim = exc.results
                # else lost before the Hello was answered: the results it carried are kept
                channel.close()
                channel = reconnect()  # CoordinatorGone once it gives up: exit 0
    except CoordinatorGone:
        return 0
    finally:
        channel.close()
        release_pools()


def _stopped(msg: P.Stop, local: bool = False) -> int:
    """The exit code of a worker told to stop: 1, said in one line, when the study stopped on
    an error (the coordinator exits 1 too), else 0. A local worker says nothing: its stderr is
    its coordinator's, which says why the study stopped."""
    if msg.error is None:
        return 0
    if local:
        return 1
    print(f"tunefleet worker: the study stopped on an error: {msg.error.splitlines()[0]}",
          file=sys.stderr)
    return 1


def _trial_loop(channel: Channel, config: WorkerConfig, local: bool,
                rejoins: bool = False) -> int:
    def call(trial_id: int, ops: list[P.Op], request: P.Request) -> Any:
        channel.send(P.encode(P.Call(trial_id, ops, request)))
        reply = P.decode(channel.recv())
        if type(reply) is not P.Reply:
            raise CoordinatorGone(f"unexpected message {type(reply).__name__} from the "
                                  "coordinator")
        if reply.ok:
            return reply.value
        raise reply.value

    def send_ops(trial_id: int, ops: list[P.Op]) -> None:
        channel.send(P.encode(P.Ops(trial_id, ops)))

    result: P.Result | None = None
    # Results sent that the coordinator's storage may not hold yet (it says how many it came
    # to hold with each new trial): a coordinator killed before its group commit loses them,
    # and one started again takes them back. Each carries every op of its trial, the
    # parameters too, which the dead one may have answered without storing them.
    unstored: collections.deque[tuple[int, P.Result]] = collections.deque()
    whole: tuple[int, P.Result] | None = None
    space: dict = {}  # the search space known to the coordinator, sent when it changes
    study_info = StudyInfo()
    store = checkpoint.FolderStore(config.checkpoints) if local and config.checkpoints else None
    worn_out = False  # a local worker leaves to be replaced by a fresh process (see leave_reason)
    while True:
        leaving = worn_out or checkpoint.stop_requested()
        if whole is not None:  # (kept only by a worker that rejoins)
            unstored.append(whole)
        try:
            channel.send(P.encode(P.Next(result, leaving)))
            msg = P.decode(channel.recv())  # a reply means the coordinator has the result
        except CoordinatorGone as exc:
            raise _Lost(str(exc), list(unstored)) from None
        if type(msg) is not P.NewTrial:
            return _stopped(msg, local) if type(msg) is P.Stop else 0
        for _ in range(min(msg.stored, len(unstored))):
            unstored.popleft()
        number = msg.number
        if msg.space is not None:
            space = msg.space
        trial = ProxyTrial(call, send_ops, config.n_objectives, msg.trial_id, number,
                           msg.datetime_start, msg.fixed_params, msg.presampled, space,
                           msg.user_attrs, study_info, rejoins)
        session = (store.session(number, msg.lineage) if store is not None
                   else RemoteSession(trial._rpc, number, msg.lineage))
        with checkpoint.running(session):  # load/save find the session while the objective runs
            children.trial_started()
            result = run_objective(config, trial)
        whole = (number, result._replace(ops=trial._whole_ops())) if rejoins else None
        children.trial_ended()  # processes the trial left running end with it
        # Only a process the fleet started here is replaced; one that joined over TCP, or
        # runs inside an engine's long-lived process, would just be gone.
        why = leave_reason(result, config.max_worker_memory) if local else None
        if why is not None:
            worn_out = True
            _say(f"worker {socket.gethostname()}/{os.getpid()} replaced after trial {number}: "
                 f"{why}")


def run_objective(config: WorkerConfig, trial: ProxyTrial) -> P.Result:
    """Run the objective once and describe the outcome as a protocol ``Result``."""
    checkpoint.in_trial(True)
    try:
        value = config.objective(trial)
    except checkpoint.Preempted as exc:  # stopped (SIGTERM): its work is in its checkpoint
        return P.Result(trial._trial_id, P.PREEMPTED, None, trial._take_ops(),
                        P.Error(None, str(exc), None, True))
    except optuna.TrialPruned as exc:
        return P.Result(trial._trial_id, P.PRUNED, None, trial._take_ops(),
                        P.Error(None, str(exc), None, True))
    except CoordinatorGone:
        raise
    except Exception as exc:
        text = _user_traceback(exc)
        caught = isinstance(exc, config.catch)
        if not caught and hasattr(exc, "add_note"):
            # Re-raised by tunefleet.optimize in the coordinator, where its own traceback
            # shows tunefleet's frames: the note (pickled with it) shows the user's.
            exc.add_note(f"The objective raised it in tunefleet worker {os.getpid()} on "
                         f"{socket.gethostname()}:\n" + text.rstrip())
        error = P.Error(_picklable(exc), repr(exc), text, caught)
        return P.Result(trial._trial_id, P.FAIL, None, trial._take_ops(), error)
    finally:
        checkpoint.in_trial(False)  # and the grace period's alarm, if any, is not needed
    return P.Result(trial._trial_id, P.COMPLETE, _plain_values(value), trial._take_ops(), None)


class MemoryLimited:
    """The objective of a run with ``max_worker_memory``: the coordinator ships it as it is,
    and ``WorkerConfig`` takes the limit off it, so that the coordinator needs no option."""

    def __init__(self, objective: Callable[[optuna.Trial], Any], limit: int) -> None:
        self.__wrapped__ = objective
        self.limit = limit

    def __call__(self, trial: optuna.Trial) -> Any:
        return self.__wrapped__(trial)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(value: int | float | str) -> int:
    """Bytes from ``2GB``, ``500MB``, ``1.5GiB`` or plain bytes (KB, MB, GB, TB count in
    thousands, KiB, MiB, GiB, TiB in 1024s); ``ValueError`` with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{value!r} is not a size: give bytes, or a number with KB, MB, "
                             "GB, TB (or KiB, MiB, GiB, TiB), e.g. 500MB or 2GB")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{value!r}: a size must be more than 0 bytes")
    return size


def resident_memory() -> int | None:
    """This process's resident memory (RSS) in bytes: /proc/self/statm on Linux (a read of a
    few bytes, cheap after every trial), else psutil if installed; None when unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def leave_reason(result: P.Result, limit: int | None) -> str | None:
    """Why this worker should give way to a fresh process after the trial that gave
    ``result``, or None: its objective raised ``MemoryError`` (and ``catch`` let the study go
    on), so this process may be left fragmented or half-broken; or its resident memory is
    still above ``limit`` after a garbage collection, so it leaks (a module-level cache, a
    library's). A fresh process gives the memory back to the machine at once."""
    error = result.error
    if (result.state == P.FAIL and error is not None and error.caught
            and (isinstance(error.exc, MemoryError) or error.text.startswith("MemoryError("))):
        return "its objective raised MemoryError"
    if limit is None:
        return None
    rss = resident_memory()
    if rss is not None and rss > limit:
        import gc

        gc.collect()  # what only cycles held may go back; measure again
        rss = resident_memory() or 0
    if rss is None or rss <= limit:
        return None
    return f"its memory {rss / 1e6:.0f} MB passed --max-worker-memory {limit / 1e6:.0f} MB"


def _say(line: str) -> None:
    """One line on stderr (the coordinator's terminal, for a local worker): a plain write, as
    tqdm's lock, inherited from a coordinator that forked this worker, may be held."""
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over the coordinator's progress bar
    print(f"{clear}tunefleet: {line}", file=sys.stderr, flush=True)


class GcAfterTrial:
    """``gc_after_trial=True``: the objective, then ``gc.collect()`` in the worker that ran it,
    whatever the outcome, as ``Study.optimize`` does after each trial."""

    def __init__(self, objective: Callable[[optuna.Trial], Any]) -> None:
        self.__wrapped__ = objective

    def __call__(self, trial: optuna.Trial) -> Any:
        try:
            return self.__wrapped__(trial)
        finally:
            import gc

            gc.collect()


def _plain_values(value: Any) -> Any:
    """Floats travel as floats; anything else as itself if it pickles, or as text, so that
    the coordinator's ``tell`` fails the trial with Optuna's own message."""
    if isinstance(value, (list, tuple)):
        return [_plain_values(v) for v in value]
    if not isinstance(value, (str, bytes)):  # text is not a number, even "12" (as in Optuna)
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    try:
        pickle.dumps(value)
        return value
    except Exception:  # no float() and no pickle: a text no float() can read, to fail the trial
        return f"<unpicklable {type(value).__name__}: {repr(value)[:200]}>"


def _picklable(exc: BaseException) -> BaseException | None:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the objective down, without this module's frame: the user's file
    and line come first, as under ``study.optimize``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(n: int) -> None:
    """Cap this worker's OpenMP and BLAS pools at ``n`` threads, as Dask does for its workers:
    N workers that each start a pool as wide as the machine oversubscribe it N times (LightGBM
    ran 10-60 times slower). The variables cover libraries loaded from now on; threadpoolctl
    covers those already loaded, whose pools read the variables before a fork."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(n)
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def release_pools() -> None:
    """Shut down the process pools the objective started (joblib's loky executor) before the
    worker exits: left alone they outlive it until their idle timeout, holding the terminal's
    pipe open (``tunefleet run ... | cat`` would not return) and leaking semaphores."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None)
    if executor is not None:
        try:
            # joblib's executor: shut down, then remove its memmapping folders, which joblib
            # leaves to atexit (not run in a forked worker).
            stop = getattr(executor, "terminate", None)
            if stop is not None:
                stop(kill_workers=False)
            else:
                executor.shutdown(wait=True, kill_workers=False)
        except Exception:
            pass
        loky._executor = None


def forget_parent_pools() -> None:
    """In a forked worker, forget the parent's loky executor: its manager thread did not come
    through the fork, so handing it work would hang; joblib starts a new one when needed."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    if loky is not None and getattr(loky, "_executor", None) is not None:
        loky._executor = None
        loky._executor_kwargs = None
