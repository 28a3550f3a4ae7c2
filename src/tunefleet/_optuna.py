"""Every private name of Optuna that tunefleet uses, in one place.

tunefleet runs Optuna's own code paths (``Study.tell``'s checks, the heartbeat table, the
journal's log records, TPE's estimators) from outside ``Study.optimize``, which Optuna's public
API does not offer. Those names are private: any Optuna release may move or change them. So the
rest of tunefleet imports them from here, never from ``optuna.*._*``, and the differences between
the supported Optuna releases (``optuna>=4.0,<6``, see docs/optuna-fidelity.md) are papered over
here. ``tests/test_optuna_private.py`` checks that each name below exists with the shape tunefleet
expects, so a new Optuna release fails there first, naming what moved.

Private *attributes* of Optuna's objects (``study._storage``, ``trial._trial_id``...) are plain
attributes read in place; ``ATTRIBUTES`` lists them, per class, for that same test.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from collections.abc import Sequence

    from optuna.trial import TrialState

#: (major, minor) of the installed Optuna.
VERSION: tuple[int, ...] = tuple(int(p) for p in optuna.__version__.split(".")[:2])

# -- storages -----------------------------------------------------------------------------------
# The heartbeat mixin of RDBStorage and the check whether a storage records heartbeats: storage
# mode and the hub's mirror beat for running trials and find stale ones through them.
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # noqa: E402


def stale_trial_callback(storage: BaseHeartbeat) -> Any:
    """The storage's callback for trials whose heartbeat went stale: Optuna 4.9 renamed
    ``get_failed_trial_callback`` (abstract before) to ``get_heartbeat_stale_trial_callback``."""
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    return getter() if getter is not None else storage.get_failed_trial_callback()


# Optuna's bookkeeping of a _CachedStorage (RDBStorage's cache): atomic.py tells it about a trial
# written behind its back.
from optuna.storages._cached_storage import _StudyInfo as CachedStudyInfo  # noqa: E402

# The log record codes of JournalStorage: the hub's mirror writes a round of them in one append.
from optuna.storages.journal._storage import JournalOperation  # noqa: E402

# The cache Optuna wraps an RDBStorage in (``optuna.storages.RDBStorage`` URLs given to
# ``create_study``): the hub's mirror writes to the storage inside it.
from optuna.storages._cached_storage import _CachedStorage as CachedStorage  # noqa: E402

#: The private methods of RDBStorage that Optuna's cache calls (besides BaseStorage's public
#: ones): storage mode makes them wait out a database outage (storage_mode/_patient.py). The
#: first three exist in every Optuna we support (checked below); the others only in newer ones
#: (Optuna 4.0.0 has neither ``_get_best_trial_id`` nor ``_set_trial_param``).
_RDB_CACHE_CALLS_ALWAYS = ("_create_new_trial", "_get_stale_trial_ids", "_get_trials")
RDB_CACHE_CALLS = _RDB_CACHE_CALLS_ALWAYS + tuple(
    name for name in ("_get_best_trial_id", "_set_trial_param")
    if hasattr(optuna.storages.RDBStorage, name))


def storage_location(storage: Any) -> str | None:
    """Where a storage keeps its data, as a URL (``sqlite:///x.db``, ``postgresql://...``) or a
    journal file's path; None for memory or a storage of unknown kind. Sees through Optuna's
    cache around an RDBStorage."""
    storage = getattr(storage, "_backend", storage) if isinstance(storage, CachedStorage) else storage
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage.url
    if isinstance(storage, optuna.storages.JournalStorage):
        return getattr(storage._backend, "_file_path", None)
    return None


# What ``BaseStorage.get_all_studies`` returns (not exported by optuna.study in 4.x or 5.x).
from optuna.study._frozen import FrozenStudy  # noqa: E402


def rdb_models() -> Any:
    """``optuna.storages._rdb.models``: Optuna's table definitions (SQLAlchemy), used for the
    one-statement writes (compare-and-set, group commit, the heartbeat table). Imported on first
    use, as it imports SQLAlchemy."""
    from optuna.storages._rdb import models

    return models


_STAMPED_LOCK = threading.Lock()


def open_stamped_rdb(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
    """``RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True, **kwargs)``
    for a database whose tables are known to be this Optuna's and stamped (a copy of the
    tables' template): without the import of alembic (about 0.5 s), which Optuna's
    ``_VersionManager`` does only to read the stamp. An unpickled copy of the storage checks
    the stamp as usual."""
    from optuna.storages._rdb import storage as rdb_storage

    class _Stamped(rdb_storage._VersionManager):  # type: ignore[name-defined]
        def _init_alembic(self) -> None:
            pass

    with _STAMPED_LOCK:
        plain = rdb_storage._VersionManager
        rdb_storage._VersionManager = _Stamped
        try:
            return optuna.storages.RDBStorage(url, skip_table_creation=True,
                                              skip_compatibility_check=True, **kwargs)
        finally:
            rdb_storage._VersionManager = plain


def rdb_time(value: datetime | None) -> datetime | None:
    """A naive local time (as Optuna's trials hold them) as this Optuna's RDBStorage stores it in
    its tables: naive UTC where its models convert (5.x), the naive local time itself before."""
    if value is None or not _rdb_stores_utc():
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


@functools.cache
def _rdb_stores_utc() -> bool:
    return hasattr(rdb_models().TrialModel, "_datetime_start_utc")


@functools.cache
def _journal_writes_utc() -> bool:
    """Whether JournalStorage writes aware UTC times (5.x) or naive local ones (4.x): probed
    once, on a journal held in a list."""
    from optuna.storages.journal import BaseJournalBackend

    class _Logs(BaseJournalBackend):
        def __init__(self) -> None:
            self.logs: list[dict[str, Any]] = []

        def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
            return self.logs[log_number_from:]

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            self.logs.extend(logs)

    backend = _Logs()
    storage = optuna.storages.JournalStorage(backend)
    storage.create_new_trial(storage.create_new_study([optuna.study.StudyDirection.MINIMIZE]))
    start = next(log["datetime_start"] for log in backend.logs if log.get("datetime_start"))
    return datetime.fromisoformat(start).tzinfo is not None


def journal_time(value: datetime | None) -> str | None:
    """A naive local time as this Optuna's JournalStorage writes it in its log records."""
    if value is None:
        return None
    if _journal_writes_utc():
        value = value.astimezone(timezone.utc)
    return value.isoformat(timespec="microseconds")


def journal_file_lock(path: str) -> Any:
    """Optuna's ``JournalFileOpenLock`` for the journal at PATH, which breaks a lock left by a
    dead process (a SIGKILLed coordinator) after 30 s unchanged, as Optuna's does since it has a
    ``grace_period``; Optuna 4.0's lock has none and would wait for it forever."""
    from optuna.storages.journal import JournalFileOpenLock

    if "grace_period" in inspect.signature(JournalFileOpenLock.__init__).parameters:
        return JournalFileOpenLock(path)
    return _GraceOpenLock(path)


def journal_lock_held(lock: Any) -> Any:
    """A context manager holding a journal file's lock, as Optuna's writers hold it while they
    append (``optuna.storages.journal._file.get_lock_file``)."""
    from optuna.storages.journal._file import get_lock_file

    return get_lock_file(lock)


def _grace_open_lock_class() -> type:
    import errno
    import os
    import time

    from optuna.storages.journal import JournalFileOpenLock

    class GraceOpenLock(JournalFileOpenLock):  # type: ignore[misc,valid-type]
        grace_period = 30.0

        def acquire(self) -> bool:  # Optuna 5.x's loop, on Optuna 4.0's lock file
            sleep_secs = 0.001
            mtime = None
            changed = time.monotonic()
            while True:
                try:
                    os.close(os.open(self._lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    return True
                except OSError as err:
                    if err.errno != errno.EEXIST:
                        raise
                try:
                    current = os.stat(self._lock_file).st_mtime
                except OSError:
                    continue  # released meanwhile
                if current != mtime:
                    mtime, changed = current, time.monotonic()
                elif time.monotonic() - changed > self.grace_period:
                    try:
                        self.release()  # a dead holder's lock
                        sleep_secs = 0.001
                    except RuntimeError:
                        pass  # someone else broke it first
                    continue
                time.sleep(sleep_secs)
                sleep_secs = min(sleep_secs * 2, 1)

    return GraceOpenLock


_GraceOpenLock: Any = None if VERSION >= (5, 0) else _grace_open_lock_class()


# -- study and trial ----------------------------------------------------------------------------
# Study.tell's checks and conversion of the objective's values, without its warning (the
# coordinator tells trials for its workers, as Study.optimize does).
from optuna.study import _tell as _tell_module  # noqa: E402
from optuna.study._tell import _tell_with_warning  # noqa: E402

# Optuna 4.x: _tell_with_warning returns the FrozenTrial, with the warning under this system
# attribute; 5.x returns (state, values, warning).
_TELL_WARNING_KEY = getattr(_tell_module, "STUDY_TELL_WARNING_KEY", "STUDY_TELL_WARNING")


def tell_with_warning(study: optuna.Study, trial: optuna.Trial | int, value_or_values: Any = None,
                      state: TrialState | None = None,
                      suppress_warning: bool = False) -> tuple[TrialState, list[float] | None,
                                                               str | None]:
    """``Study.tell`` as ``Study.optimize`` calls it: (final state, values, warning or None)."""
    if VERSION < (5, 0) and state is None and isinstance(value_or_values, str) and any(
            _casts(c) for c in value_or_values):
        # Optuna 5.x checks every character of a text value and raises this TypeError at the
        # first one that casts ("12"); 4.x stops at the first that does not, with a warning.
        raise TypeError("must be real number, not str")
    out = _tell_with_warning(study=study, trial=trial, value_or_values=value_or_values,
                             state=state, suppress_warning=suppress_warning)
    if isinstance(out, tuple):
        return out  # type: ignore[return-value]
    return out.state, out.values, out.system_attrs.get(_TELL_WARNING_KEY)


def _casts(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def log_completed_trial(study: optuna.Study, values: Sequence[float], number: int,
                        params: dict[str, Any]) -> None:
    """Optuna's "Trial N finished with value ..." log line (``Study._log_completed_trial``: 5.x
    takes the values, number and parameters; 4.x a FrozenTrial)."""
    if VERSION >= (5, 0):
        study._log_completed_trial(list(values), number, params)
        return
    frozen = optuna.trial.FrozenTrial(
        number=number, state=optuna.trial.TrialState.COMPLETE, value=None, values=list(values),
        datetime_start=None, datetime_complete=None, params=params, distributions={},
        user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1)
    study._log_completed_trial(frozen)


# The Pareto front of a list of trials (reports: multi-objective studies).
from optuna.study._multi_objective import _get_pareto_front_trials_by_trials as pareto_front  # noqa: E402,E501

# The study as a pruner sees it (the coordinator samples ahead for a trial as Trial does).
from optuna.pruners import _filter_study as filter_study  # noqa: E402

# The value of a distribution with a single choice (ProxyTrial suggests it without asking).
from optuna.distributions import _get_single_value as single_value  # noqa: E402

# -- Trial.set_constraint: the system attribute that holds constraint KEY (Optuna 5.1) ---------
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY  # noqa: E402


def constraint_attr(key: str) -> str:
    return f"{_CONSTRAINTS_KEY}:{key}"

# The lazily made numpy RandomState of Optuna's samplers: seeded runs reseed it per trial.
from optuna.samplers._lazy_random_state import LazyRandomState  # noqa: E402

# RandomSampler's map of a one-parameter space to the box it draws uniformly from, and back
# (tunefleet.samplers.RandomDraw keeps one per parameter).
from optuna._transform import _SearchSpaceTransform as SearchSpaceTransform  # noqa: E402
from optuna._transform import (  # noqa: E402
    _untransform_numerical_param as untransform_numerical)

# Optuna's own warning function (5.x; a plain warnings.warn before it existed).
try:
    from optuna._warnings import optuna_warn
except ImportError:  # Optuna 4.x
    def optuna_warn(message: str, category: type[Warning] = UserWarning,
                    stacklevel: int = 1) -> None:
        warnings.warn(message, category, stacklevel=stacklevel + 1)


#: What a write to a finished trial raises: Optuna's UpdateFinishedTrialError (a RuntimeError)
#: where it exists, a plain RuntimeError in Optuna 4.0.
UpdateFinishedTrialError: type[Exception] = getattr(optuna.exceptions, "UpdateFinishedTrialError",
                                                    RuntimeError)


# -- studies, samplers and trials ---------------------------------------------------------------
# The thread-local flags of a study (in_optimize_loop, cached trials): a worker's stand-in study
# keeps the same shape, so that Optuna code reading them works unchanged.
from optuna.study.study import _ThreadLocalStudyAttribute as ThreadLocalStudyAttribute  # noqa: E402,E501


def pop_waiting_trial_id(study: optuna.Study) -> int | None:
    """The first enqueued (WAITING) trial, made RUNNING, as ``study.ask()`` takes it; None when
    the queue is empty. The hub's --deterministic ask builds its trial around it."""
    return study._pop_waiting_trial_id()


def wrapped_sampler(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """The sampler that draws: the one inside a PartialFixedSampler, else ``sampler``."""
    while isinstance(sampler, optuna.samplers.PartialFixedSampler):
        sampler = sampler._base_sampler
    return sampler


def tpe_is_multivariate(sampler: optuna.samplers.TPESampler, study: optuna.Study) -> bool:
    """Whether a TPE sampler draws jointly (multivariate): Optuna 5 decides per study when
    ``multivariate=None``; Optuna 4 has the flag."""
    decide = getattr(sampler, "_is_multivariate", None)
    return bool(decide(study) if decide is not None else sampler._multivariate)


# -- TPE internals (tunefleet.samplers.TPESampler) ----------------------------------------------
# tunefleet's TPE reuses Optuna's Parzen estimator and its batched distributions, and replaces
# only the per-trial Python work. It follows Optuna 5.x's TPE; where these names are missing
# (Optuna 4.x) ``FAST_TPE`` is False and tunefleet.samplers.TPESampler is Optuna's own TPE.
try:
    from optuna.samplers._tpe import _truncnorm as tpe_truncnorm
    from optuna.samplers._tpe import sampler as tpe_sampler
    from optuna.samplers._tpe.parzen_estimator import EPS as TPE_EPS
    from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator as ParzenEstimator
    from optuna.samplers._tpe.probability_distributions import (
        _BatchedCategoricalDistributions as BatchedCategoricalDistributions,
        _BatchedDiscreteTruncLogNormDistributions as BatchedDiscreteTruncLogNormDistributions,
        _BatchedDiscreteTruncNormDistributions as BatchedDiscreteTruncNormDistributions,
        _BatchedTruncLogNormDistributions as BatchedTruncLogNormDistributions,
        _BatchedTruncNormDistributions as BatchedTruncNormDistributions,
        _unique_inverse_2d as unique_inverse_2d,
    )

    #: The functions of Optuna's TPE module that tunefleet's TPE calls.
    TPE_FUNCTIONS = ("_get_pruned_trial_score", "_get_infeasible_trial_score",
                     "_solve_hssp_with_cache", "_get_reference_point")
    FAST_TPE = all(hasattr(tpe_sampler, name) for name in TPE_FUNCTIONS)
except ImportError:  # Optuna 4.x
    FAST_TPE = False


# -- private attributes read in place -----------------------------------------------------------
#: Private attributes of Optuna's classes that tunefleet reads or sets directly, by class (the
#: dotted name under ``optuna``). Instance attributes are checked on real instances by the test.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "study.Study": ("_storage", "_study_id", "_thread_local", "_get_trials",
                    "_log_completed_trial", "_directions", "_stop_flag",
                    "_pop_waiting_trial_id", "_is_multi_objective"),
    "trial.Trial": ("_trial_id", "_cached_frozen_trial", "_relative_params", "_fixed_params",
                    "_get_latest_trial", "_is_relative_param", "_suggest"),
    "trial.FrozenTrial": ("_trial_id", "_system_attrs", "_user_attrs", "_distributions"),
    "storages.RDBStorage": ("engine", *_RDB_CACHE_CALLS_ALWAYS),
    "storages._cached_storage._CachedStorage": ("_backend", "_lock", "_studies",
                                                "_add_trials_to_cache"),
    "storages.JournalStorage": ("_backend", "_thread_lock", "_replay_result",
                                "_sync_with_backend"),
    "storages.journal._storage.JournalStorageReplayResult": ("_study_id_to_trial_ids",),
    "storages.journal.JournalFileBackend": ("_file_path",),
    "storages.InMemoryStorage": ("_get_trial",),
    "samplers.PartialFixedSampler": ("_base_sampler",),
    "samplers.TPESampler": ("_group", "_n_startup_trials", "_random_sampler",
                            "_warn_independent_sampling",
                            "_is_multivariate" if VERSION >= (5, 0) else "_multivariate"),
    "distributions.BaseDistribution": ("_contains",),
}
