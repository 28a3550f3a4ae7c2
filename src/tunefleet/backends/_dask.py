"""Hub workers on a Dask cluster: N long-lived tasks, each one a worker connected to the hub.

Dask only starts the workers and keeps them alive; trials travel over the hub's own TCP
channel, so the scheduler sees N tasks per study, not one per trial. Each task occupies one
Dask worker thread for the length of the study.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tunefleet.backends._tcp import EngineBackend, engine_worker, error_line, token_of
from tunefleet.errors import UsageError
from tunefleet.transport import Link


class DaskBackend(EngineBackend):
    """Hub workers as tasks of an existing ``distributed.Client``.

    Args:
        client: the Dask client (default: the current one, ``distributed.get_client()``).
        resources: Dask resources each worker task needs, e.g. ``{"GPU": 1}``.
        listen, advertise, key: see ``TcpBackend``; a cluster on other hosts needs
            ``listen="tcp://0.0.0.0:PORT"`` and ``advertise`` set to an address they reach.
    """

    engine = "dask"
    module = "distributed"
    gpus_instead = ("give the worker tasks resources={'GPU': 1} and start Dask workers with "
                    "GPU resources")

    def __init__(self, client: Any = None, resources: dict[str, float] | None = None,
                 gpus: Sequence[int | str] | None = None, **tcp: Any) -> None:
        distributed = self._engine_module(gpus)
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

    def default_workers(self) -> int:
        """One worker per Dask worker thread."""
        return max(1, sum(self.client.nthreads().values()))

    def _launch(self, token: str) -> Callable[[], None]:
        # pure=False and a unique key: every task is a new worker, never a cached result;
        # retries=0: a replacement is this backend's decision (see replace), not Dask's.
        future = self.client.submit(
            engine_worker, self.address, self.key, token, key=f"tunefleet-worker-{token}",
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
