"""Hub workers on Spark: one long-lived Spark task per worker, each task a hub worker.

Each worker is a one-task Spark job submitted from its own background thread. One job per
worker rather than one job of N tasks: Spark fails a whole job when one of its tasks fails
(after ``spark.task.maxFailures`` attempts, 1 in local mode) and kills the job's other tasks,
so one lost Python worker would take every other worker with it. A task attempt after the
first returns at once: the coordinator has already failed the trial and started a fresh job.

Per-worker data (``data=``), the two ways of the Spark seed notes:
- a ``Broadcast`` (or any picklable value, broadcast here): ``tunefleet.worker_data()`` is its
  value, fetched once per worker;
- a ``DataFrame``: it is coalesced to one partition and each worker's task runs on a copy of
  it, so ``tunefleet.worker_data()`` is the list of its ``Row`` objects, read by Spark.
A ``setup=`` function given to ``optimize`` runs after that, and its result wins.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from tunefleet.backends._tcp import ThreadedEngineBackend, engine_worker
from tunefleet.errors import UsageError


def _spark_worker(address: str, key: bytes, token: str, broadcast: Any,
                  rows: Iterator[Any]) -> Iterator[int]:
    """What one Spark task runs: a hub worker, until the study is done."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.attemptNumber() > 0:
        yield 0  # Spark retried a lost worker's task: its replacement already runs elsewhere
        return
    if ctx is not None:
        gpus = ctx.resources().get("gpu")
        if gpus is not None and gpus.addresses:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
    from tunefleet.hub import set_worker_data

    if broadcast is not None:
        set_worker_data(broadcast.value)
    else:
        data = list(rows)
        set_worker_data(data if data else None)
    yield engine_worker(address, key, token)


class SparkBackend(ThreadedEngineBackend):
    """Hub workers as Spark tasks of the active ``SparkSession``.

    Args:
        spark: the session (default: the active one).
        data: per-worker data, a ``Broadcast``, a picklable value or a ``DataFrame`` (see the
            module docstring).
        listen, advertise, key: see ``TcpBackend``; executors on other hosts need
            ``listen="tcp://0.0.0.0:PORT"`` and an ``advertise`` address they reach.
    """

    engine = "spark"
    module = "pyspark.sql"
    gpus_instead = "set spark.task.resource.gpu.amount and Spark gives each task its GPU"

    def __init__(self, spark: Any = None, data: Any = None,
                 gpus: Sequence[int | str] | None = None, **tcp: Any) -> None:
        sql = self._engine_module(gpus)
        spark = spark or sql.SparkSession.getActiveSession()
        if spark is None:
            raise UsageError("backend='spark' needs an active SparkSession: create one first "
                             "(SparkSession.builder...getOrCreate()) or pass spark=")
        super().__init__(**tcp)
        self.spark = spark
        self.sc = spark.sparkContext
        self._frame = data if isinstance(data, sql.DataFrame) else None
        self._broadcast = None
        if data is not None and self._frame is None:
            from pyspark import Broadcast

            self._broadcast = data if isinstance(data, Broadcast) else self.sc.broadcast(data)
        self._owns_broadcast = self._broadcast is not None and self._broadcast is not data
        self._group = f"tunefleet-{self._run}"  # the Spark job group of this study's workers

    def default_workers(self) -> int:
        """One worker per task slot, or per GPU when Spark schedules GPUs to tasks."""
        conf = self.sc.getConf()
        per_task = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
        per_executor = float(conf.get("spark.executor.resource.gpu.amount", "0") or 0)
        if per_task > 0 and per_executor > 0:
            executors = max(1, self.sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
            return max(1, int(executors * per_executor // per_task))
        return max(1, self.sc.defaultParallelism)

    def _call(self, token: str) -> None:
        """One Spark job holding one worker; it ends when the worker does."""
        address, key, broadcast = self.address, self.key, self._broadcast

        def task(rows: Iterator[Any]) -> Iterator[int]:
            return _spark_worker(address, key, token, broadcast, rows)

        self.sc.setJobGroup(self._group, f"tunefleet worker {token}", True)
        if self._frame is not None:
            rdd = self._frame.coalesce(1).rdd
        else:
            rdd = self.sc.parallelize([0], 1)
        rdd.mapPartitions(task).collect()

    def shutdown(self, grace: float = 2.0) -> None:
        running = self._join(grace)
        if running:
            self.sc.cancelJobGroup(self._group)  # queued tasks, or workers still connecting
            for thread in running:
                thread.join(5.0)
        if self._owns_broadcast:
            self._broadcast.unpersist()
