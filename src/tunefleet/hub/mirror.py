"""A write-behind mirror of one study, so that the hub's coordinator never waits for a database.

In hub mode the coordinator is the only writer of the study, so it may keep the study in memory
and let the durable storage (SQLite, PostgreSQL, MySQL, a journal file) follow: every read is
served from an :class:`~optuna.storages.InMemoryStorage`, and every write is applied to memory at
once and queued for one background thread that applies the same writes, in the same order, to
the durable storage. Samplers such as TPE read all trials for each new trial; on an RDB storage
these reads, not the objective, used to bound the hub's speed.

The durable storage lags behind by what is queued: :meth:`MirroredStorage.flush` waits for it,
:meth:`MirroredStorage.close` flushes and stops the thread. Numbers, states, params,
distributions, values, intermediate values, attributes and datetimes end up identical (start and
completion times are memory's, not those at which the writes arrived). A writer that has fallen
behind catches up by writing a trial that memory has already finished in one go, from its final
state, instead of one write per parameter and report; trials are still created in order. A
durable write that fails stops the mirroring (the two would no longer match): the error is logged
once and raised by every later ``flush()`` and ``close()``.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import threading
import time
from collections import deque
from datetime import datetime, timezone
from collections.abc import Callable, Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.study._frozen import FrozenStudy
from optuna.study._study_direction import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["MirrorError", "MirroredStorage", "mirrored_study", "durable_storage"]

_logger = logging.getLogger("tunefleet.mirror")

#: A queued durable write: (operation name, arguments with in-memory ids).
_Op = tuple[str, tuple]
#: Operations whose first argument is a memory trial id.
_TRIAL_OPS = frozenset({"create_trial", "set_trial_param", "set_trial_state_values",
                        "set_trial_intermediate_value", "set_trial_user_attr",
                        "set_trial_system_attr", "record_heartbeat"})


class MirrorError(RuntimeError):
    """The durable storage did not accept the mirror's writes; it no longer matches memory."""


def durable_storage(storage: BaseStorage) -> BaseStorage:
    """The storage that really holds the data: Optuna wraps an RDBStorage in a _CachedStorage,
    whose caching the mirror makes useless (and whose reads it exists to avoid)."""
    backend = getattr(storage, "_backend", None)
    if isinstance(storage, optuna.storages._CachedStorage) and isinstance(backend, BaseStorage):
        return backend
    return storage


class MirroredStorage(BaseStorage, BaseHeartbeat):
    """An in-memory copy of study ``study_name`` of ``durable``, written back in the background.

    Only this object may write the study while it is open (the hub's coordinator owns it);
    writes made to the durable storage by anyone else are not seen and may make the mirror's
    writes fail. Studies other than ``study_name`` are invisible, except those created through
    the mirror.
    """

    def __init__(self, durable: BaseStorage, study_name: str) -> None:
        self._durable = durable_storage(durable)
        self._memory = InMemoryStorage()
        self._lock = threading.RLock()  # one write at a time: memory order == queue order
        self._study_ids: dict[int, int] = {}  # memory study id -> durable study id
        self._trial_ids: dict[int, int] = {}  # memory trial id -> durable trial id (writer's)
        self._beats: dict[int, float] = {}  # memory trial id -> time.time() of last heartbeat
        self._collapsed: set[int] = set()  # memory ids of trials written whole (writer's)
        self._queue: deque[_Op] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._submitted = 0
        self._done = 0
        self._error: BaseException | None = None
        self._stopping = False
        self._closed = False
        self._load(study_name)
        self._thread = threading.Thread(target=self._run, name=f"tunefleet-mirror-{study_name}",
                                        daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

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
        trials = sorted(durable.get_all_trials(durable_id, deepcopy=True), key=lambda t: t.number)
        for index, trial in enumerate(trials):
            if trial.number != index:
                raise MirrorError(f"study {study_name!r}: trial numbers are not 0..n-1 "
                                  f"(found {trial.number} at position {index})")
            memory_trial_id = self._memory.create_new_trial(memory_id, template_trial=trial)
            self._trial_ids[memory_trial_id] = trial._trial_id
            known.update(trial.distributions)
            if trial.state == TrialState.RUNNING:
                # Orphans of an earlier run: stale now if the durable storage says so, else once
                # nobody has beaten for them for a grace period from now.
                self._beats[memory_trial_id] = 0.0 if trial._trial_id in stale else now

    def _durable_stale_ids(self, durable_study_id: int) -> list[int]:
        if not self._durable_heartbeat():
            return []
        return list(self._durable._get_stale_trial_ids(durable_study_id))  # type: ignore[attr-defined]

    def _durable_heartbeat(self) -> bool:
        return (isinstance(self._durable, BaseHeartbeat)
                and self._durable.get_heartbeat_interval() is not None)

    # -- the writer -----------------------------------------------------------------------------
    def _submit(self, name: str, *args: Any) -> None:
        """Queue one durable write (the caller holds ``self._lock``); once closed, apply it in
        the calling thread instead, so that a study used after ``close()`` still persists."""
        if self._closed:
            if self._error is None:
                self._apply((name, args))
            return
        with self._cond:
            self._queue.append((name, args))
            self._submitted += 1
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                op = self._queue[0]
            if self._error is None and not self._superseded(op):
                try:
                    self._apply(self._collapse(op))
                except BaseException as exc:  # kept for flush(); the thread must go on draining
                    self._error = exc
                    _logger.error(f"tunefleet: the durable storage refused a write ({op[0]}); "
                                  f"it is no longer updated: {exc!r}")
            with self._cond:
                self._queue.popleft()
                self._done += 1
                self._cond.notify_all()

    def _superseded(self, op: _Op) -> bool:
        """Whether ``op`` belongs to a trial already written whole by :meth:`_collapse`."""
        return op[0] in _TRIAL_OPS and op[1][0] in self._collapsed

    def _collapse(self, op: _Op) -> _Op:
        """Write a trial that memory has already finished in one go, from its final state: one
        transaction instead of one per parameter, report and attribute, which is how a writer
        that fell behind catches up. Trials keep their order, so their numbers do not change."""
        if op[0] != "create_trial":
            return op
        trial_id, study_id, _ = op[1]
        try:
            final = self._memory.get_trial(trial_id)
        except KeyError:  # its study was deleted since
            return op
        if not final.state.is_finished():
            return op
        self._collapsed.add(trial_id)
        return ("create_trial", (trial_id, study_id, final))

    def _apply(self, op: _Op) -> None:
        """Apply one queued write to the durable storage, translating the ids."""
        name, args = op
        durable = self._durable
        trials = self._trial_ids
        if name == "create_trial":
            memory_trial_id, memory_study_id, template = args
            study_id = self._study_ids[memory_study_id]
            if isinstance(durable, optuna.storages.RDBStorage):
                created = durable._create_new_trial(study_id, template_trial=template)
                trial_id, number = created._trial_id, created.number
            else:
                trial_id = durable.create_new_trial(study_id, template_trial=template)
                number = durable.get_trial_number_from_id(trial_id)
            trials[memory_trial_id] = trial_id
            if number != template.number:
                raise MirrorError(f"the durable storage numbered trial {template.number} as "
                                  f"{number}: someone else wrote to the study")
        elif name == "set_trial_state_values":
            memory_trial_id, state, values, when = args
            if not _set_state_at(durable, trials[memory_trial_id], state, values, when):
                raise MirrorError(f"the durable storage did not move a trial to {state.name}: "
                                  "someone else wrote to the study")
        elif name in ("set_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
                      "set_trial_system_attr", "record_heartbeat"):
            getattr(durable, name)(trials[args[0]], *args[1:])
        elif name in ("set_study_user_attr", "set_study_system_attr"):
            getattr(durable, name)(self._study_ids[args[0]], *args[1:])
        elif name == "delete_study":
            durable.delete_study(self._study_ids.pop(args[0]))
        elif name == "remove_session":
            durable.remove_session()
        else:  # pragma: no cover - a bug in this module
            raise AssertionError(f"unknown mirror operation {name!r}")

    # -- flushing and closing ---------------------------------------------------------------------
    @property
    def error(self) -> BaseException | None:
        """The first durable write that failed, if any (the mirror stopped writing there)."""
        return self._error

    @property
    def pending(self) -> int:
        """How many writes the durable storage has yet to receive."""
        return self._submitted - self._done

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the durable storage holds every write made so far; raise
        :class:`MirrorError` (from the original exception) if one of them failed, and
        ``TimeoutError`` if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            while self._done < target and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the durable storage is {target - self._done} "
                                       "writes behind")
                self._cond.wait(left)
        self._raise_error()

    def close(self) -> None:
        """Flush, stop the writer thread, and raise a durable write's error if there was one.
        Later writes go to memory and, in the calling thread, to the durable storage."""
        with self._lock:
            if not self._closed:
                with self._cond:
                    self._stopping = True
                    self._cond.notify_all()
                self._thread.join()
                self._closed = True
                atexit.unregister(self._at_exit)
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise MirrorError(f"the durable storage {type(self._durable).__name__} missed writes "
                              f"and no longer matches the study: {self._error!r}") from self._error

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # already logged by the writer
            pass

    def __enter__(self) -> "MirroredStorage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            return memory_id

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self._memory.delete_study(study_id)
            self._submit("delete_study", study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_study_user_attr(study_id, key, value)
            self._submit("set_study_user_attr", study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_study_system_attr(study_id, key, value)
            self._submit("set_study_system_attr", study_id, key, value)

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
            # The durable copy is made from memory's, so both have the same start time.
            created = copy.deepcopy(self._memory.get_trial(trial_id))
            self._submit("create_trial", trial_id, study_id, created)
            return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._lock:
            self._memory.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            self._submit("set_trial_param", trial_id, param_name, param_value_internal,
                         distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with self._lock:
            changed = self._memory.set_trial_state_values(trial_id, state, values)
            if changed:
                trial = self._memory.get_trial(trial_id)
                when = trial.datetime_start if state == TrialState.RUNNING else (
                    trial.datetime_complete)
                self._submit("set_trial_state_values", trial_id, state,
                             None if values is None else list(values), when)
                if state.is_finished():
                    self._beats.pop(trial_id, None)
            return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        with self._lock:
            self._memory.set_trial_intermediate_value(trial_id, step, intermediate_value)
            self._submit("set_trial_intermediate_value", trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_trial_user_attr(trial_id, key, value)
            self._submit("set_trial_user_attr", trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_trial_system_attr(trial_id, key, value)
            self._submit("set_trial_system_attr", trial_id, key, value)

    def remove_session(self) -> None:
        with self._lock:
            self._submit("remove_session")

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
            return self._durable.get_heartbeat_stale_trial_callback()
        return None

    def record_heartbeat(self, trial_id: int) -> None:
        """Remember the beat here (staleness is judged from memory, which is never behind) and
        pass it on, so that other readers of the durable storage see the trial alive."""
        with self._lock:
            self._memory.get_trial(trial_id)  # KeyError for an unknown trial, as Optuna's
            self._beats[trial_id] = time.time()
            if self._durable_heartbeat():
                self._submit("record_heartbeat", trial_id)

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


def _set_state_at(durable: BaseStorage, trial_id: int, state: TrialState,
                  values: Sequence[float] | None, when: datetime | None) -> bool:
    """``durable.set_trial_state_values``, but with the start (RUNNING) or completion time
    memory recorded rather than the time the write reaches the durable storage, which may be
    seconds later. Done with Optuna's internals for RDB and journal storages, as their own
    method would do it; any other storage (or another Optuna) gets the public method."""
    if when is not None and (state == TrialState.RUNNING or state.is_finished()):
        if isinstance(durable, optuna.storages.RDBStorage) and _RDB_INTERNALS:
            return _rdb_set_state_at(durable, trial_id, state, values, when)
        if isinstance(durable, optuna.storages.JournalStorage) and _JOURNAL_INTERNALS:
            return _journal_set_state_at(durable, trial_id, state, values, when)
    return durable.set_trial_state_values(trial_id, state, values)


try:
    from optuna.storages._rdb import models as _rdb_models
    from optuna.storages._rdb.storage import _create_scoped_session

    _RDB_INTERNALS = hasattr(optuna.storages.RDBStorage, "_set_trial_value_without_commit")
except ImportError:  # pragma: no cover - another Optuna
    _RDB_INTERNALS = False

try:
    from optuna.storages.journal._storage import JournalOperation

    _JOURNAL_INTERNALS = all(hasattr(optuna.storages.JournalStorage, name) for name in (
        "_write_log", "_sync_with_backend"))
except ImportError:  # pragma: no cover - another Optuna
    _JOURNAL_INTERNALS = False


def _rdb_set_state_at(durable: optuna.storages.RDBStorage, trial_id: int, state: TrialState,
                      values: Sequence[float] | None, when: datetime) -> bool:
    import sqlalchemy.exc

    try:
        with _create_scoped_session(durable.scoped_session) as session:
            trial = _rdb_models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            durable.check_trial_is_updatable(trial_id, trial.state)
            if values is not None:
                for objective, value in enumerate(values):
                    durable._set_trial_value_without_commit(session, trial, objective, value)
            if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
                return False
            trial.state = state
            if state == TrialState.RUNNING:
                trial.datetime_start = when
            else:
                trial.datetime_complete = when
    except sqlalchemy.exc.IntegrityError:
        return False
    return True


def _journal_set_state_at(durable: optuna.storages.JournalStorage, trial_id: int,
                          state: TrialState, values: Sequence[float] | None,
                          when: datetime) -> bool:
    stamp = when.astimezone(timezone.utc).isoformat(timespec="microseconds")
    log: dict[str, Any] = {"trial_id": trial_id, "state": state, "values": values,
                           "datetime_start" if state == TrialState.RUNNING
                           else "datetime_complete": stamp}
    with durable._thread_lock:
        if state == TrialState.RUNNING:
            durable._sync_with_backend()
            existing = durable._replay_result._trials.get(trial_id)
            if existing is None:
                raise KeyError(f"No trial with trial_id {trial_id} exists.")
            if existing.state.is_finished():
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"Trial#{existing.number} has already finished and can not be updated.")
            if existing.state != TrialState.WAITING:
                return False
        durable._write_log(JournalOperation.SET_TRIAL_STATE_VALUES, log)
        durable._sync_with_backend()
        return (state != TrialState.RUNNING
                or trial_id == durable._replay_result.owned_trial_id)


def _check_json(key: str, value: Any) -> None:
    """Refuse, in the caller's thread as the durable storage would, a value it cannot store."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"attribute {key!r}: value is not JSON serializable: {exc}") from None


def mirrored_study(study: optuna.Study) -> tuple[optuna.Study, MirroredStorage | None]:
    """``study`` on a :class:`MirroredStorage` of its RDB or journal storage, with the same
    name, sampler and pruner, and the mirror (call ``close()`` on it when done); ``(study,
    None)`` for any other storage (in memory already, or one the mirror does not know)."""
    durable = durable_storage(study._storage)
    if not isinstance(durable, (optuna.storages.RDBStorage, optuna.storages.JournalStorage)):
        return study, None
    mirror = MirroredStorage(durable, study.study_name)
    try:
        mirrored = optuna.Study(study_name=study.study_name, storage=mirror,
                                sampler=study.sampler, pruner=study.pruner)
    except BaseException:
        mirror.close()
        raise
    return mirrored, mirror
