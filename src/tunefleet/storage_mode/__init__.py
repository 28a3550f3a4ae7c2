"""Shared-storage mode: many ``tunefleet worker`` processes on one Optuna storage.

There is no coordinator: every worker talks to the storage (SQLite, PostgreSQL, MySQL/MariaDB
or a journal file) and the storage's own atomic steps keep the workers in line. The pieces:

- :mod:`.db`: open a storage for workers (SQLite busy timeout, heartbeats) and ``init`` a study.
- :mod:`.backoff`: retry on SQLite's "database is locked" instead of dying.
- :mod:`.heartbeat`: say "I am alive" for the running trial; find trials of dead workers.
- :mod:`.budget`: the exact, fleet-wide trial budget.
- :mod:`.worker`: the loop that ties them together.
"""

from tunefleet.storage_mode._worker import WorkerOptions, run_storage_worker

__all__ = ["WorkerOptions", "run_storage_worker"]
