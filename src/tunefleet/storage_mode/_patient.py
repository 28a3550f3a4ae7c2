"""A worker's database storage that waits out an outage inside every call, including the calls
the objective makes through its trial (``trial.suggest_*``, ``trial.report``,
``trial.set_user_attr``), which tunefleet's own loop cannot wrap.

The worker hands Optuna a real ``RDBStorage``: Optuna wraps it in its ``_CachedStorage``
(``optuna.storages.get_storage`` checks ``isinstance(storage, RDBStorage)``), the heartbeat code
checks ``isinstance(storage, BaseHeartbeat)``, and tunefleet's one-statement writes reach its
``engine``. A wrapper object would fail those checks, so the storage stays an ``RDBStorage`` and
only its class becomes :class:`PatientRDBStorage`, whose database calls retry an outage with
back-off (:func:`.backoff.with_backoff`) for up to the storage timeout. The retry sits under
Optuna's cache, which sees one call that succeeded or one that failed, as before.

Running a call again after an outage is safe when its first try never committed. When the commit
went through and only its reply was lost (the server died in between):

- ``set_trial_param``, ``set_trial_*_attr``, ``set_trial_intermediate_value``,
  ``set_study_*_attr`` write the same row again (or Optuna ignores the
  duplicate key): no harm.
- ``set_trial_state_values`` finds the trial finished and raises ``UpdateFinishedTrialError``;
  the worker then reads the trial and counts its own result (``StorageWorker._finish``).
- ``create_new_trial`` makes a second trial; the first one stays RUNNING with no heartbeat, is
  failed by the workers' heartbeat check after the grace period and retried (its parameters, if
  any, run again), so the budget stays exact. (Workers create their trials with
  ``create_within_budget``, one transaction run through :func:`.backoff.with_backoff`: the same
  holds for it.)
- ``create_new_study`` raises ``DuplicatedStudyError``, which ``create_or_load_study`` answers by
  loading the study.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import optuna

from tunefleet._optuna import RDB_CACHE_CALLS
from tunefleet._outage import quiet_outage_noise
from tunefleet.storage_mode._backoff import with_backoff

#: The calls of an RDBStorage that reach the database: BaseStorage's, and the private ones
#: Optuna's cache makes. ``record_heartbeat`` is left out: the heartbeat thread beats again at
#: its next interval anyway, and must not hold the worker's exit for a storage timeout.
_CALLS = tuple(sorted(
    {name for name, value in vars(optuna.storages.BaseStorage).items()
     if callable(value) and not name.startswith("_")}
    - {"check_trial_is_updatable", "remove_session"}
)) + RDB_CACHE_CALLS


def _waiting_out_outages(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return with_backoff(lambda: method(self, *args, **kwargs), what=name,
                            retry_if=lambda exc: False, outage_wait=self.storage_timeout)

    return call


class PatientRDBStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose database calls wait out an outage for ``storage_timeout`` seconds."""

    storage_timeout: float


for _name in _CALLS:
    setattr(PatientRDBStorage, _name, _waiting_out_outages(_name))


def wait_out_outages(storage: optuna.storages.BaseStorage,
                     storage_timeout: float) -> optuna.storages.BaseStorage:
    """STORAGE, whose database calls from now on wait out an outage for up to STORAGE_TIMEOUT
    seconds (see the module). Journal files and memory have no server to be away: as they are."""
    if type(storage) is optuna.storages.RDBStorage:
        # The storage is made by tunefleet._studies.open_storage (SQLite's template, WAL, the
        # drivers' errors); its class is switched rather than the storage made twice.
        storage.__class__ = PatientRDBStorage
    if isinstance(storage, PatientRDBStorage):
        storage.storage_timeout = storage_timeout
        quiet_outage_noise(storage.engine)
    return storage
