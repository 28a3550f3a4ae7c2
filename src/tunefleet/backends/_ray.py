"""Hub workers on Ray: N long-lived Ray tasks, each one a worker connected to the hub.

Ray only starts the workers; trials travel over the hub's own TCP channel. A task whose
process dies is not retried by Ray (``max_retries=0``): the coordinator fails and retries the
trial, and this backend starts a fresh task in the lost one's place.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from tunefleet._gpus import gpu_share
from tunefleet.backends._tcp import EngineBackend, engine_worker, error_line, token_of
from tunefleet.errors import UsageError
from tunefleet.transport import Link

_logger = logging.getLogger("tunefleet")


class RayBackend(EngineBackend):
    """Hub workers as Ray tasks, on the Ray of ``ray.init()`` or on a local one started here
    (and shut down when the study ends).

    Args:
        num_cpus, num_gpus: what each worker task reserves (Ray sets ``CUDA_VISIBLE_DEVICES``
            for a task that reserves GPUs).
        trials_per_gpu, gpus_per_trial: GPU packing, instead of ``num_gpus``: each task
            reserves ``1 / trials_per_gpu`` GPU (Ray puts that many on one GPU) or
            ``gpus_per_trial`` GPUs.
        ray_options: more ``ray.remote`` options for the worker tasks (``resources=``, ...).
        listen, advertise, key: see ``TcpBackend``.
    """

    engine = "ray"
    module = "ray"
    gpus_instead = ("Ray hands out its GPUs: pass trials_per_gpu= or gpus_per_trial= (or "
                    "num_gpus=) and each worker task reserves its share")

    def __init__(self, num_cpus: float = 1, num_gpus: float = 0,
                 ray_options: dict[str, Any] | None = None,
                 gpus: Sequence[int | str] | None = None, trials_per_gpu: int | None = None,
                 gpus_per_trial: int | None = None, **tcp: Any) -> None:
        ray = self._engine_module(gpus)
        if trials_per_gpu is not None or gpus_per_trial is not None:
            if num_gpus:
                raise UsageError(f"num_gpus={num_gpus} and GPU packing: give num_gpus, or "
                                 "trials_per_gpu / gpus_per_trial, not both")
            num_gpus = gpu_share(trials_per_gpu, gpus_per_trial)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _logger.info("tunefleet: starting a local Ray")
            ray.init(include_dashboard=False, log_to_driver=False)
        super().__init__(**tcp)
        options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0}
        options.update(ray_options or {})
        self._per_worker = options
        self._remote = ray.remote(engine_worker).options(**options)
        self._watch = threading.Thread(target=self._watch_tasks, daemon=True,
                                       name="tunefleet-ray-watch")
        self._watch.start()

    def _watch_tasks(self) -> None:
        """Tell ``task_ended`` about worker tasks that failed (Ray has no done callbacks)."""
        import ray

        while not self._closed:
            with self._lock:
                pending = {ref: token for token, ref in self._tasks.items()}
            if not pending:
                time.sleep(0.5)
                continue
            try:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            except Exception:  # Ray is shutting down
                return
            for ref in ready:
                token = pending[ref]
                self._forget(token)
                try:
                    ray.get(ref)
                except Exception as exc:
                    if not self._closed:
                        self.task_ended(token, error_line(exc))

    def default_workers(self) -> int:
        """As many workers as the cluster's CPUs (or GPUs, with ``num_gpus``) allow."""
        import ray

        total = ray.cluster_resources()
        kind, each = ("GPU", self._per_worker["num_gpus"]) if self._per_worker["num_gpus"] \
            else ("CPU", self._per_worker["num_cpus"] or 1)
        if kind == "GPU" and not total.get("GPU"):
            raise UsageError(f"each worker task reserves num_gpus={each:g}, but the Ray cluster "
                             "has no GPU (ray.init(num_gpus=N) declares them)")
        return max(1, int(total.get(kind, 1) / each + 1e-9))  # 2 / (1/3) is 6, not 5

    def _launch(self, token: str) -> None:
        self._tasks[token] = self._remote.remote(self.address, self.key, token)

    def replace(self, link: Link) -> None:
        self._forget(token_of(link))
        self._submit()

    def shutdown(self, grace: float = 2.0) -> None:
        import ray

        refs = self._close()
        self._watch.join(2.0)
        if refs:
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=max(grace, 0.1))
            for ref in pending:  # still queued, or still trying to reach the coordinator
                ray.cancel(ref, force=True)
        if self._owns_ray:
            ray.shutdown()
