"""Hub workers on a Dask cluster: N long-lived tasks, each one a worker connected to the hub.

Dask only starts the workers and keeps them alive; trials travel over the hub's own TCP
channel, so the scheduler sees N tasks per study, not one per trial. Each task occupies one
Dask worker thread for the length of the study.

GPUs: Dask knows GPUs only as a resource that workers declare (``resources={"GPU": 2}``), and
the tasks of one Dask worker share its process, hence its ``CUDA_VISIBLE_DEVICES``. With GPU
packing (``trials_per_gpu`` or ``gpus_per_trial``), each task asks for its share of the
``GPU`` resource and runs its hub worker in a child process that sees the GPUs of its slot of
the Dask worker's layout (``tunefleet._gpus.pack`` over the GPUs that Dask worker declares).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
from typing import Any, Callable, Sequence

from tunefleet._gpus import gpu_share, pack, visible_gpus
from tunefleet.backends._tcp import EngineBackend, engine_worker, error_line, token_of
from tunefleet.errors import UsageError
from tunefleet.transport import Link


#: seconds to wait for a Dask worker that has the resources the worker tasks need
RESOURCE_WAIT = 10.0


def _polled(read: Callable[[], Any], wait: float) -> Any:
    """``read()`` until it gives something true, for up to ``wait`` seconds (a cluster may still
    be starting, or a worker be restarted by its nanny); its last value."""
    import time

    deadline = time.monotonic() + wait
    while not (value := read()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def _workers(client: Any) -> list[dict]:
    return list(client.scheduler_info(n_workers=-1).get("workers", {}).values())


def check_resources(client: Any, resources: dict[str, float] | None,
                    wait: float = RESOURCE_WAIT) -> None:
    """Dask queues a task whose resources no worker has, silently and for ever: wait up to
    ``wait`` seconds for a worker that has them, else a one-line ``UsageError`` that says how
    to start workers with them."""
    if not resources or _polled(lambda: any(
            all(w.get("resources", {}).get(name, 0) >= amount
                for name, amount in resources.items()) for w in _workers(client)), wait):
        return
    given = ", ".join(f"{k}={v:g}" for k, v in resources.items())
    raise UsageError(
        f"no Dask worker has the resources each worker task needs ({given}): its tasks would "
        f"wait for ever; start the Dask workers with them, e.g. LocalCluster(n_workers=2, "
        f"resources={dict(resources)!r}) or dask worker SCHEDULER --resources "
        f"\"{' '.join(f'{k}={v:g}' for k, v in resources.items())}\"")


class DaskBackend(EngineBackend):
    """Hub workers as tasks of an existing ``distributed.Client``.

    Args:
        client: the Dask client (default: the current one, ``distributed.get_client()``).
        resources: Dask resources each worker task needs, e.g. ``{"CPU_HEAVY": 1}``.
        trials_per_gpu, gpus_per_trial: GPU packing: each task needs ``1 / trials_per_gpu``
            or ``gpus_per_trial`` of the ``GPU`` resource, and its worker sees its own GPUs
            (see the module docstring). Default ``n_workers``: the cluster's GPUs / that share.
        listen, advertise, key: see ``TcpBackend``; a cluster on other hosts needs
            ``listen="tcp://0.0.0.0:PORT"`` and ``advertise`` set to an address they reach.
    """

    engine = "dask"
    module = "distributed"
    gpus_instead = ("Dask workers own the GPUs: start them with resources={'GPU': N} and pass "
                    "trials_per_gpu= or gpus_per_trial=")

    def __init__(self, client: Any = None, resources: dict[str, float] | None = None,
                 gpus: Sequence[int | str] | None = None, trials_per_gpu: int | None = None,
                 gpus_per_trial: int | None = None, **tcp: Any) -> None:
        distributed = self._engine_module(gpus)
        self._packing: tuple[int | None, int | None] | None = None
        if trials_per_gpu is not None or gpus_per_trial is not None:
            self._packing = (trials_per_gpu, gpus_per_trial)
            resources = {**(resources or {}), "GPU": gpu_share(trials_per_gpu, gpus_per_trial)}
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError:
                raise UsageError("backend='dask' needs a Dask cluster: pass client=Client(...) "
                                 "or create a Client first") from None
        if not isinstance(client, distributed.Client):
            raise UsageError(f"client= must be a distributed.Client, not {type(client).__name__}")
        super().__init__(**tcp)
        self.client = client
        self.resources = resources

    def start(self, n_workers: int) -> None:
        check_resources(self.client, self.resources)  # before any task can queue for ever
        super().start(n_workers)

    def default_workers(self) -> int:
        """One worker per Dask worker thread; with GPU packing, one per GPU share."""
        if self._packing is None:
            return max(1, sum(self.client.nthreads().values()))
        share = gpu_share(*self._packing)
        total = _polled(lambda: sum(w.get("resources", {}).get("GPU", 0)
                                    for w in _workers(self.client)), RESOURCE_WAIT)
        if not total:
            raise UsageError("no Dask worker declares a GPU resource: start them with "
                             "resources={'GPU': N} (dask-cuda does) or leave GPU packing out")
        return max(1, int(total / share + 1e-9))

    def _launch(self, token: str) -> Callable[[], None]:
        # pure=False and a unique key: every task is a new worker, never a cached result;
        # retries=0: a replacement is this backend's decision (see replace), not Dask's.
        task, extra = (engine_worker, ()) if self._packing is None else \
            (gpu_engine_worker, self._packing)
        future = self.client.submit(
            task, self.address, self.key, token, *extra, key=f"tunefleet-worker-{token}",
            pure=False, retries=0, resources=self.resources)
        self._tasks[token] = future
        return lambda: future.add_done_callback(lambda f: self._done(token, f))

    def _done(self, token: str, future: Any) -> None:
        if future.status == "error" and not self._closed:
            try:
                exc = future.exception(timeout=5)
            except Exception as err:  # the cluster is going away
                exc = err
            self.task_ended(token, error_line(exc))

    def replace(self, link: Link) -> None:
        """Cancel the lost worker's task (Dask would otherwise run it again on another
        worker once it notices the death) and submit a fresh one."""
        future = self._forget(token_of(link))
        if future is not None:
            future.cancel()
        self._submit()

    def shutdown(self, grace: float = 2.0) -> None:
        from distributed import wait

        futures = self._close()
        if futures:
            try:
                wait(futures, timeout=max(grace, 0.1))
            except Exception:  # dask's TimeoutError: some tasks are still queued or starting
                pass
            self.client.cancel([f for f in futures if not f.done()])


#: Slots of this Dask worker process's GPU layout that a task holds now.
_taken: set[int] = set()
_taken_lock = threading.Lock()

#: The child's exit status when ``engine_worker`` raised (its traceback is on stderr).
_RAISED = 70
#: What the child process of a GPU task runs: a hub worker, the key read from stdin.
_CHILD = f"""
import sys, traceback
from tunefleet.backends._tcp import engine_worker
try:
    code = engine_worker(sys.argv[1], sys.stdin.buffer.read(), sys.argv[2])
except BaseException:
    traceback.print_exc()
    sys.exit({_RAISED})
sys.exit(code)
"""


def gpu_engine_worker(address: str, key: bytes, token: str, trials_per_gpu: int | None,
                      gpus_per_trial: int | None) -> int:
    """A GPU task on a Dask worker: take a free slot of the layout of the GPUs this Dask
    worker declares (its ``CUDA_VISIBLE_DEVICES``, else 0..N-1) and run the hub worker in a
    child process that sees that slot's GPUs. Dask's resource accounting keeps the slots
    enough."""
    from distributed import get_worker

    declared = int(get_worker().state.total_resources.get("GPU", 0))
    visible = visible_gpus()
    ids = visible[:declared] if visible is not None else [str(i) for i in range(declared)]
    layout = pack(ids, trials_per_gpu, gpus_per_trial)
    with _taken_lock:
        slot = next((i for i in range(len(layout)) if i not in _taken), None)
        if slot is None:
            raise RuntimeError(f"UsageError: no free GPU slot on this Dask worker "
                               f"(layout {layout})")
        _taken.add(slot)
    try:
        return _run_child(address, key, token, layout[slot])
    finally:
        with _taken_lock:
            _taken.discard(slot)


def _run_child(address: str, key: bytes, token: str, cuda: str) -> int:
    """Run the hub worker in a child process with ``CUDA_VISIBLE_DEVICES=cuda`` and this
    process's import path; its stderr is passed on, and its last lines say why it failed."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": cuda,
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, address, token], env=env,
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def relay() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            tail.append(line)
            sys.stderr.write(line)

    reader = threading.Thread(target=relay, daemon=True, name=f"tunefleet-{token}-stderr")
    reader.start()
    assert proc.stdin is not None
    proc.stdin.write(key)
    proc.stdin.close()
    code = proc.wait()
    reader.join(5)
    if code == _RAISED or code < 0:  # as the task would have raised, or its process died
        raise RuntimeError("".join(tail).strip() or f"worker process ended by signal {-code}")
    return code
