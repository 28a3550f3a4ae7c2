"""The study in memory as an Optuna storage: reads served by memory, writes made there and
handed to group commit; and :func:`mirrored_study`, which puts a study on it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunefleet._optuna import BaseHeartbeat, FrozenStudy, stale_trial_callback
from tunefleet._outage import DEFAULT_STORAGE_TIMEOUT
from tunefleet.errors import MirrorError
from tunefleet.hub._mirror._commit import _GroupCommit


def durable_storage(storage: BaseStorage) -> BaseStorage:
    """The storage that really holds the data: Optuna wraps an RDBStorage in a _CachedStorage,
    whose caching the mirror makes useless (and whose reads it exists to avoid)."""
    backend = getattr(storage, "_backend", None)
    if isinstance(storage, optuna.storages._CachedStorage) and isinstance(backend, BaseStorage):
        return backend
    return storage


class MirroredStorage(_GroupCommit, BaseStorage, BaseHeartbeat):
    """An in-memory copy of study ``study_name`` of ``durable``, written back by group commit.

    Only this object may write the study while it is open (the hub's coordinator owns it);
    trials added to the durable study by anyone else make the mirror stop with
    :class:`MirrorError`. Studies other than ``study_name`` are invisible, except those created
    through the mirror.
    """

    def __init__(self, durable: BaseStorage, study_name: str,
                 storage_timeout: float = DEFAULT_STORAGE_TIMEOUT) -> None:
        super().__init__(durable_storage(durable), storage_timeout)
        self._beats: dict[int, float] = {}  # memory trial id -> time.time() of last heartbeat
        self.orphans: list[int] = []  # memory ids of trials RUNNING when loaded
        self._load(study_name)
        self._start(study_name)

    # -- loading --------------------------------------------------------------------------------
    def _load(self, study_name: str) -> None:
        durable = self._durable
        durable_id = durable.get_study_id_from_name(study_name)
        memory_id = self._memory.create_new_study(durable.get_study_directions(durable_id),
                                                  study_name)
        self._study_ids[memory_id] = durable_id
        for key, value in durable.get_study_user_attrs(durable_id).items():
            self._memory.set_study_user_attr(memory_id, key, value)
        for key, value in durable.get_study_system_attrs(durable_id).items():
            self._memory.set_study_system_attr(memory_id, key, value)
        stale = set(self._durable_stale_ids(durable_id))
        now = time.time()
        known = self._memory._studies[memory_id].param_distribution
        trials = sorted(durable.get_all_trials(durable_id, deepcopy=False),
                        key=lambda t: t.number)
        for index, trial in enumerate(trials):
            if trial.number != index:
                raise MirrorError(f"study {study_name!r}: trial numbers are not 0..n-1 "
                                  f"(found {trial.number} at position {index})")
            memory_trial_id = self._memory.create_new_trial(memory_id, template_trial=trial)
            self._writer.known(memory_trial_id, trial._trial_id, trial)
            if not trial.state.is_finished():
                self._trial_study[memory_trial_id] = memory_id
            known.update(trial.distributions)
            if trial.state == TrialState.RUNNING:
                self.orphans.append(memory_trial_id)
                # Stale now if the durable storage says so, else once nobody has beaten for
                # them for a grace period from now.
                self._beats[memory_trial_id] = 0.0 if trial._trial_id in stale else now
        self._writer.counts[durable_id] = len(trials)

    def _durable_stale_ids(self, durable_study_id: int) -> list[int]:
        if not self._durable_heartbeat():
            return []
        return list(self._durable._get_stale_trial_ids(durable_study_id))  # type: ignore[attr-defined]

    def _durable_heartbeat(self) -> bool:
        return (isinstance(self._durable, BaseHeartbeat)
                and self._durable.get_heartbeat_interval() is not None)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a MirroredStorage lives in one process: send its durable storage "
                        "instead")

    # -- studies ----------------------------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection],
                         study_name: str | None = None) -> int:
        with self._lock:
            self.flush()
            durable_id = self._durable.create_new_study(directions, study_name)
            name = self._durable.get_study_name_from_id(durable_id)
            memory_id = self._memory.create_new_study(directions, name)
            self._study_ids[memory_id] = durable_id
            self._writer.counts[durable_id] = 0
            return memory_id

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self._memory.delete_study(study_id)
            self._after.append(("delete_study", self._study_ids.pop(study_id)))
            self._changed()

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("user", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._set_study_attr("system", study_id, key, value)

    def _set_study_attr(self, kind: str, study_id: int, key: str, value: Any) -> None:
        """A study's ``kind`` ("user" or "system") attribute, set in memory and queued for the
        next round."""
        _check_json(key, value)
        memory = self._memory
        with self._lock:
            (memory.set_study_user_attr if kind == "user" else memory.set_study_system_attr)(
                study_id, key, value)
            self._study_ops.append((kind, self._study_ids[study_id], key, value))
            self._changed()

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._memory.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._memory.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._memory.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._memory.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._memory.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._memory.get_all_studies()

    # -- trials: writes ---------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with self._lock:
            trial_id = self._memory.create_new_trial(study_id, template_trial)
            self._trial_study[trial_id] = study_id
            self._changed(trial_id)
            return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._lock:
            self._memory.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            self._changed(trial_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with self._lock:
            changed = self._memory.set_trial_state_values(trial_id, state, values)
            if changed:
                if state.is_finished():
                    self._beats.pop(trial_id, None)
                self._changed(trial_id)
            return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        with self._lock:
            self._memory.set_trial_intermediate_value(trial_id, step, intermediate_value)
            self._changed(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_trial_attr(self._memory.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_trial_attr(self._memory.set_trial_system_attr, trial_id, key, value)

    def _set_trial_attr(self, set_in_memory: Callable[[int, str, Any], None], trial_id: int,
                        key: str, value: Any) -> None:
        """A trial's attribute, set in memory by ``set_in_memory`` and marked for the next round."""
        _check_json(key, value)
        with self._lock:
            set_in_memory(trial_id, key, value)
            self._changed(trial_id)

    def remove_session(self) -> None:
        with self._lock:
            self._after.append(("session",))
            self._changed()

    # -- trials: reads ----------------------------------------------------------------------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._memory.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._memory.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_n_trials(self, study_id: int,
                     state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._memory.get_n_trials(study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._memory.get_best_trial(study_id)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._memory.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._memory.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._memory.get_trial_param(trial_id, param_name)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._memory.get_trial_params(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._memory.get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._memory.get_trial_system_attrs(trial_id)

    # -- heartbeats (only when the durable storage has them enabled) -------------------------------
    def get_heartbeat_interval(self) -> int | None:
        if isinstance(self._durable, BaseHeartbeat):
            return self._durable.get_heartbeat_interval()
        return None

    def get_heartbeat_stale_trial_callback(
            self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        if isinstance(self._durable, BaseHeartbeat):
            return stale_trial_callback(self._durable)
        return None

    def get_failed_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """Optuna < 4.9's name of the method above (abstract there, deprecated since)."""
        return self.get_heartbeat_stale_trial_callback()

    def record_heartbeat(self, trial_id: int) -> None:
        """Remember the beat here (staleness is judged from memory, which is never behind) and
        pass it on, so that other readers of the durable storage see the trial alive."""
        with self._lock:
            self._memory.get_trial(trial_id)  # KeyError for an unknown trial, as Optuna's
            self._beats[trial_id] = time.time()
            if self._durable_heartbeat():
                self._dirty[trial_id] = None  # the trial must exist there before its beat
                self._after.append(("heartbeat", trial_id))
                self._changed()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        interval = self.get_heartbeat_interval()
        if interval is None:
            return []
        grace = getattr(self._durable, "grace_period", None) or 2 * interval
        now = time.time()
        with self._lock:
            return [t._trial_id for t in self._memory.get_all_trials(
                        study_id, deepcopy=False, states=(TrialState.RUNNING,))
                    if t._trial_id in self._beats and now - self._beats[t._trial_id] > grace]


def _check_json(key: str, value: Any) -> None:
    """Refuse, in the caller's thread as the durable storage would, a value it cannot store."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"attribute {key!r}: value is not JSON serializable: {exc}") from None


def mirrored_study(study: optuna.Study, storage_timeout: float = DEFAULT_STORAGE_TIMEOUT
                   ) -> tuple[optuna.Study, MirroredStorage | None]:
    """``study`` on a :class:`MirroredStorage` of its RDB or journal storage, with the same
    name, sampler and pruner, and the mirror (call ``close()`` on it when done); ``(study,
    None)`` for any other storage (in memory already, or one the mirror does not know)."""
    durable = durable_storage(study._storage)
    if not isinstance(durable, (optuna.storages.RDBStorage, optuna.storages.JournalStorage)):
        return study, None
    if isinstance(durable, optuna.storages.RDBStorage) and durable.engine.url.database in (
            None, "", ":memory:") and durable.engine.url.get_backend_name() == "sqlite":
        return study, None  # SQLite in memory exists per connection: the writer would not see it
    mirror = MirroredStorage(durable, study.study_name, storage_timeout)
    try:
        mirrored = optuna.Study(study_name=study.study_name, storage=mirror,
                                sampler=study.sampler, pruner=study.pruner)
    except BaseException:
        mirror.close()
        raise
    return mirrored, mirror
