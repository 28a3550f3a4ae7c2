"""Hub workers on any joblib backend: loky (local processes), ``dask`` (a Dask cluster),
``spark`` (joblib-spark), ``ray``, ... Each worker is one joblib task, started by a one-task
``Parallel`` call from its own background thread, and it runs until the study is done; trials
travel over the hub's own TCP channel, never through joblib.

One call per worker rather than one call of N tasks, as in the Spark backend: joblib stops a
whole call (and its other tasks) when one task fails, so one lost worker would take the others
with it. The loky backend still shares one process pool between the calls: a worker process
that dies breaks that pool, its siblings are lost with it, and the coordinator fails their
trials and starts fresh workers on a new pool.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from tunefleet.backends._tcp import ThreadedEngineBackend, engine_worker, error_line, token_of
from tunefleet.errors import UsageError
from tunefleet.transport import Link

_logger = logging.getLogger("tunefleet")


def _active_backend_name() -> str | None:
    """The registered name of the backend of the caller's ``joblib.parallel_config`` (or
    ``parallel_backend``) block, None outside such a block. The name, not the instance: each
    worker's call builds its own instance, since joblib backends keep per-call state."""
    import joblib
    from joblib.parallel import BACKENDS, DEFAULT_BACKEND

    backend, _ = joblib.parallel.get_active_backend()
    for name, cls in BACKENDS.items():
        if type(backend) is cls:
            return None if name == DEFAULT_BACKEND else name
    return None


class JoblibBackend(ThreadedEngineBackend):
    """Hub workers as tasks of a joblib backend.

    Args:
        joblib_backend: the joblib backend's name ("loky", "dask", "spark", ...); default: the
            one of the caller's ``joblib.parallel_config(backend=...)`` block, else loky. A
            backend from a plug-in must be registered first (``joblibspark.register_spark()``).
        joblib_options: keyword arguments of that backend (e.g. ``num_gpus_per_spark_task``).
        n_jobs: the ``n_jobs`` of every call (default: the number of workers, at least 2, so
            that loky never falls back to running a worker inside the coordinator).
        listen, advertise, key: see ``TcpBackend``; workers on other hosts (Spark executors,
            Dask workers) need ``listen="tcp://0.0.0.0:PORT"`` and an ``advertise`` address.
    """

    engine = "joblib"
    module = "joblib"
    gpus_instead = ("give the joblib backend its GPUs (e.g. "
                    "joblib_options={'num_gpus_per_spark_task': 1})")

    def __init__(self, joblib_backend: str | None = None,
                 joblib_options: dict[str, Any] | None = None, n_jobs: int | None = None,
                 gpus: Sequence[int | str] | None = None, **tcp: Any) -> None:
        joblib = self._engine_module(gpus)
        from joblib.parallel import BACKENDS

        name = joblib_backend or _active_backend_name() or "loky"
        if name not in BACKENDS:
            hint = (" (joblib-spark: pip install 'tunefleet[joblibspark]', then "
                    "joblibspark.register_spark())" if name == "spark" else "")
            raise UsageError(f"joblib backend {name!r} is not registered{hint}; "
                             f"registered: {', '.join(sorted(BACKENDS))}")
        super().__init__(**tcp)
        self.joblib = joblib
        self.name = name
        self.options = dict(joblib_options or {})
        self.n_jobs = n_jobs
        try:  # a backend that cannot start here (no Dask client, no Spark) says so now
            with self._config():
                self.joblib.effective_n_jobs(-1)
        except Exception as exc:
            raise UsageError(f"joblib backend {name!r} cannot start: {error_line(exc)}") from None

    def _config(self, n_jobs: int | None = None) -> Any:
        return self.joblib.parallel_config(backend=self.name, n_jobs=n_jobs, **self.options)

    def default_workers(self) -> int:
        """As many workers as the joblib backend runs tasks at once (``n_jobs=-1``)."""
        with self._config():
            return max(1, self.joblib.effective_n_jobs(self.n_jobs or -1))

    def start(self, n_workers: int) -> None:
        if self.n_jobs is None:
            self.n_jobs = max(2, n_workers)
        super().start(n_workers)

    def _call(self, token: str) -> None:
        """One ``Parallel`` call holding one worker; it returns when the worker ends."""
        joblib = self.joblib
        with self._config(self.n_jobs):
            joblib.Parallel()([joblib.delayed(engine_worker)(self.address, self.key, token)])

    def replace(self, link: Link) -> None:
        _logger.info(f"tunefleet: starting a joblib worker in place of {token_of(link) or link}")
        self._submit()

    def shutdown(self, grace: float = 2.0) -> None:
        """Close the listener (connected workers see the end of the stream and return), then
        wait for the calls. joblib has no way to cancel a task from outside: a task still
        queued returns as soon as it starts and finds no coordinator."""
        self._join(grace)
