"""Shared-storage mode: many ``tunefleet worker`` processes on one Optuna storage.

There is no coordinator: every worker talks to the storage (SQLite, PostgreSQL, MySQL/MariaDB
or a journal file) and the storage's own atomic steps keep the workers in line. The pieces:

- ``_db``: open a storage for workers (SQLite busy timeout, heartbeats) and ``init`` a study.
- ``_backoff``: retry on SQLite's "database is locked" instead of dying; wait out a database
  that is away (restarted, failed over) for up to the storage timeout.
- ``_patient``: the worker's RDBStorage, whose every call (the objective's too) waits it out.
- ``_heartbeat``: say "I am alive" for the running trial; find trials of dead workers.
- ``_budget``: the exact, fleet-wide trial budget.
- ``_atomic``: the steps exactly one worker wins (claiming a waiting trial, failing a dead
  worker's).
SIGTERM hands the running trial back after its next checkpoint
(``tunefleet.checkpoint.install_preemption``, shared with hub workers).
- ``_worker``: the loop that ties them together (and each trial's checkpoints).
"""

from tunefleet.storage_mode._backoff import StorageUnreachable, with_backoff
from tunefleet.storage_mode._db import init_study, open_worker_storage
from tunefleet.storage_mode._worker import (WorkerOptions, WorkerStopped, default_worker_id,
                                            run_storage_worker)

__all__ = ["StorageUnreachable", "WorkerOptions", "WorkerStopped", "default_worker_id",
           "init_study", "open_worker_storage", "run_storage_worker", "with_backoff"]
