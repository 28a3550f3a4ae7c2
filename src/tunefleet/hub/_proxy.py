"""The trial a worker's objective sees: an ``optuna.Trial`` whose answers come from the hub.

It is a real subclass of ``optuna.trial.Trial`` (so ``isinstance`` checks in integrations pass)
and reuses Optuna's own ``suggest_*`` front ends; only the points where Optuna would touch the
storage or the sampler are replaced. Values the coordinator sampled at ask time are used
locally, with Optuna's order of precedence (fixed, single-valued, sampled); reports and
attributes are buffered and travel with the next message, or after ``FLUSH_EVERY`` seconds.

``trial.study`` is an ``optuna.Study`` (``WorkerStudy``) and ``trial.storage`` an
``optuna.storages.BaseStorage`` (``StorageProxy``), both answered by the coordinator, because
integrations (optuna-integration's Lightning callback and LightGBM tuner, MLflow's
``track_in_mlflow``, ``optuna.artifacts``, ``optuna.terminator``) read and write through them.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import time
from typing import Any, Callable

import optuna
from optuna import distributions as D

from tunefleet._optuna import ThreadLocalStudyAttribute, optuna_warn, single_value
from tunefleet.errors import CoordinatorGone, NotInWorker
from tunefleet.hub import _protocol as P

FLUSH_EVERY = 0.5  # seconds: buffered reports older than this go out without waiting


class _LocalTrialState:
    """The slice of ``FrozenTrial`` that Optuna's ``suggest_*`` front ends read."""

    __slots__ = ("number", "params", "distributions", "user_attrs", "intermediate_values",
                 "datetime_start", "system_attrs")

    def __init__(self, number: int, datetime_start: datetime.datetime | None,
                 user_attrs: dict[str, Any]) -> None:
        self.number = number
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, D.BaseDistribution] = {}
        self.user_attrs = dict(user_attrs)
        self.intermediate_values: dict[int, float] = {}
        self.datetime_start = datetime_start
        self.system_attrs: dict[str, Any] = {}


class ProxyTrial(optuna.trial.Trial):
    """A trial running in a worker; see the module docstring."""

    def __init__(self, call: Callable[[int, list[P.Op], P.Request], Any],
                 send_ops: Callable[[int, list[P.Op]], None], n_objectives: int,
                 trial_id: int, number: int, datetime_start: datetime.datetime | None,
                 fixed_params: dict[str, Any], presampled: dict[str, Any],
                 space: dict[str, D.BaseDistribution], user_attrs: dict[str, Any],
                 study_info: StudyInfo | None = None, rejoins: bool = False) -> None:
        """``rejoins``: the worker joins a coordinator started again and hands it the result,
        so a trial whose coordinator died between calls runs on instead of ending there."""
        # Deliberately not calling Trial.__init__: it needs the study and its storage.
        self._call = call
        self._send_ops = send_ops
        self._n_objectives = n_objectives
        self._trial_id = trial_id
        self._fixed_params = fixed_params
        self._presampled = presampled
        self._space = space
        self._cached_frozen_trial = _LocalTrialState(number, datetime_start, user_attrs)
        self._ops: list[P.Op] = []
        # Once the coordinator is gone, ops wait in _ops and the trial runs on; its result is
        # kept with every op of the trial (_whole_ops) for the coordinator started again.
        self._gone = False
        self._rejoins = rejoins
        self._last_flush = time.monotonic()
        self._constraints: dict[str, float] = {}
        self._study_info = study_info or StudyInfo()
        self._study: WorkerStudy | None = None

    # -- the study and the storage, built on first use (most objectives never touch them) ----
    @property  # type: ignore[override]
    def study(self) -> WorkerStudy:
        if self._study is None:
            self._study = WorkerStudy(self)
        return self._study

    @property  # type: ignore[override]
    def storage(self) -> StorageProxy:
        return self.study._storage

    # -- sampling ---------------------------------------------------------------------------
    def _suggest(self, name: str, distribution: D.BaseDistribution) -> Any:
        state = self._cached_frozen_trial
        if name in state.distributions:
            D.check_distribution_compatibility(state.distributions[name], distribution)
            return state.params[name]
        if name in self._fixed_params:
            value = self._fixed_params[name]
            if not distribution._contains(distribution.to_internal_repr(value)):
                optuna_warn(f"Fixed parameter {name} with value {value} is out of range "
                            f"for distribution {distribution}.")
        elif distribution.single():
            value = single_value(distribution)
        else:
            if name in self._presampled and self._space.get(name) == distribution:
                value = self._presampled[name]
            else:
                # The coordinator samples and stores it: nothing to send back later.
                value = self._rpc(P.Suggest(name, distribution))
                state.distributions[name] = distribution
                state.params[name] = value
                return value
        distribution.to_internal_repr(value)  # validates, as Optuna does before storing
        self._ops.append(P.Param(name, distribution, value))
        state.distributions[name] = distribution
        state.params[name] = value
        self._maybe_flush()
        return value

    @property
    def relative_params(self) -> dict[str, Any]:  # type: ignore[override]
        return {}

    # -- pruning ----------------------------------------------------------------------------
    def report(self, value: float, step: int) -> None:
        if self._n_objectives > 1:
            raise NotImplementedError(
                "Trial.report is not supported for multi-objective optimization.")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"The `value` argument is of type '{type(value)}' but supposed "
                            "to be a float.") from None
        try:
            step = int(step)
        except (TypeError, ValueError):
            raise TypeError(f"The `step` argument is of type '{type(step)}' but supposed "
                            "to be an int.") from None
        if step < 0:
            raise ValueError(f"`{step=}` must be non-negative.")
        values = self._cached_frozen_trial.intermediate_values
        if step in values:
            optuna_warn(f"The reported value is ignored because this `{step=}` is already reported.")
            return
        values[step] = value
        self._ops.append(P.Report(step, value))
        self._maybe_flush()

    def should_prune(self) -> bool:
        if self._n_objectives > 1:
            raise NotImplementedError(
                "Trial.should_prune is not supported for multi-objective optimization.")
        return bool(self._rpc(P.Prune()))

    # -- attributes -------------------------------------------------------------------------
    def set_user_attr(self, key: str, value: Any) -> None:
        # Checked here, not when the coordinator writes it: a database or journal storage
        # rejects what is not JSON, and the objective must be able to catch that at the call.
        json.dumps(value)
        self._cached_frozen_trial.user_attrs[key] = copy.deepcopy(value)
        self._ops.append(P.UserAttr(key, value))
        self._maybe_flush()

    def set_constraint(self, key: str, value: float) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"The `value` argument is of type '{type(value)}' but supposed "
                            "to be a float.") from None
        if math.isnan(value):
            raise ValueError(f"Attempted to set a constraint for {key!r}, but NaN is not allowed.")
        if key in self._constraints:
            optuna_warn(f"The constraint value is ignored because this constraint `{key=}` "
                        "is already set.")
            return
        self._constraints[key] = value
        self._ops.append(P.Constraint(key, value))

    @property
    def constraints(self) -> dict[str, float]:  # type: ignore[override]
        return dict(self._constraints)

    @property
    def params(self) -> dict[str, Any]:
        return copy.deepcopy(self._cached_frozen_trial.params)

    @property
    def distributions(self) -> dict[str, D.BaseDistribution]:
        return copy.deepcopy(self._cached_frozen_trial.distributions)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return copy.deepcopy(self._cached_frozen_trial.user_attrs)

    @property
    def datetime_start(self) -> datetime.datetime | None:
        return self._cached_frozen_trial.datetime_start

    @property
    def number(self) -> int:
        return self._cached_frozen_trial.number

    # -- plumbing ---------------------------------------------------------------------------
    def _rpc(self, request: P.Request) -> Any:
        ops, self._ops = self._ops, []
        self._last_flush = time.monotonic()
        return self._call(self._trial_id, ops, request)

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_EVERY and not self._gone:
            ops, self._ops = self._ops, []
            self._last_flush = now
            try:
                self._send_ops(self._trial_id, ops)
            except CoordinatorGone:  # the trial runs on; its result is kept for a new one
                if not self._rejoins:
                    raise
                self._gone = True
                self._ops = ops + self._ops

    def _take_ops(self) -> list[P.Op]:
        ops, self._ops = self._ops, []
        return ops

    def _whole_ops(self) -> list[P.Op]:
        """Every op of this trial so far, as a coordinator that knows none of them needs them
        (one started again after the one that ran it died before storing them)."""
        state = self._cached_frozen_trial
        return [*(P.Param(k, state.distributions[k], v) for k, v in state.params.items()),
                *(P.Report(step, v) for step, v in state.intermediate_values.items()),
                *(P.UserAttr(k, v) for k, v in state.user_attrs.items()),
                *(P.Constraint(k, v) for k, v in self._constraints.items())]

    def __repr__(self) -> str:
        return f"ProxyTrial(number={self.number}, params={self._cached_frozen_trial.params})"




class StudyInfo:
    """What every trial of one worker shares about the study: fetched from the coordinator
    the first time an objective touches ``trial.study``, then kept for the worker's life."""

    def __init__(self) -> None:
        self.fetched = False
        self.study_id = 0
        self.study_name = ""
        self.directions: list[optuna.study.StudyDirection] = []

    def fetch(self, trial: ProxyTrial) -> StudyInfo:
        if not self.fetched:
            self.study_id = trial._rpc(P.StudyGet("_study_id"))
            self.study_name = trial._rpc(P.StudyGet("study_name"))
            self.directions = list(trial._rpc(P.StudyGet("directions")))
            self.fetched = True
        return self


class _InOptimize(ThreadLocalStudyAttribute):
    """In every thread of a worker, the study is inside ``optimize`` (so a nested
    ``optimize`` raises Optuna's own RuntimeError, and ``stop`` is allowed)."""

    in_optimize_loop = True


class WorkerStudy(optuna.Study):
    """``trial.study`` inside a worker: an ``optuna.Study`` whose reads and writes go to the
    coordinator's study. Reads of trials and attributes are answered there (a snapshot at the
    time of the call); ``stop``, ``enqueue_trial``, ``add_trial(s)``, ``set_user_attr`` and
    ``set_metric_names`` act on the real study. ``sampler`` and ``pruner`` are copies."""

    def __init__(self, trial: ProxyTrial) -> None:
        # Not calling Study.__init__: it would open the storage; everything it sets is here.
        info = trial._study_info.fetch(trial)
        self._trial = trial
        self.study_name = info.study_name
        self._study_id = info.study_id
        self._directions = list(info.directions)
        self._storage = StorageProxy(trial)
        self._thread_local = _InOptimize()
        self._stop_flag = False

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._trial._rpc(P.StudyCall(name, args, kwargs))

    def _get(self, name: str) -> Any:
        return self._trial._rpc(P.StudyGet(name))

    @property  # type: ignore[override]
    def sampler(self) -> optuna.samplers.BaseSampler:
        return self._get("sampler")

    @property  # type: ignore[override]
    def pruner(self) -> optuna.pruners.BasePruner:
        return self._get("pruner")

    # Reads: one round trip each, answered by the real study (constraints and all).
    def _get_trials(self, deepcopy: bool = True, states: Any = None,
                    use_cache: bool = False) -> list[optuna.trial.FrozenTrial]:
        return self._call("get_trials", deepcopy=False, states=states)

    def _get_best_trial(self, deepcopy: bool) -> optuna.trial.FrozenTrial:
        return self._call("_get_best_trial", False)

    @property
    def user_attrs(self) -> dict[str, Any]:
        return self._get("user_attrs")

    @property
    def metric_names(self) -> list[str] | None:
        return self._get("metric_names")

    # Writes: done by the coordinator on the real study.
    def stop(self) -> None:
        self._call("stop")

    def set_user_attr(self, key: str, value: Any) -> None:
        json.dumps(value)  # as for a trial's attribute: raise at the call
        self._call("set_user_attr", key, value)

    def set_metric_names(self, metric_names: list[str]) -> None:
        self._call("set_metric_names", metric_names)

    def enqueue_trial(self, params: dict[str, Any], user_attrs: dict[str, Any] | None = None,
                      skip_if_exists: bool = False) -> None:
        if not isinstance(params, dict):
            raise TypeError("params must be a dictionary.")
        self._call("enqueue_trial", params, user_attrs, skip_if_exists)

    def add_trial(self, trial: optuna.trial.FrozenTrial) -> None:
        self._call("add_trial", trial)

    def add_trials(self, trials: Any) -> None:
        self._call("add_trials", list(trials))

    def ask(self, fixed_distributions: Any = None) -> optuna.Trial:
        raise NotInWorker("trial.study.ask() is not available inside a tunefleet worker: "
                           "the coordinator asks for trials")

    def tell(self, *args: Any, **kwargs: Any) -> Any:
        raise NotInWorker("trial.study.tell() is not available inside a tunefleet worker: "
                           "the coordinator tells the study each trial's result")

    def __getstate__(self) -> dict[Any, Any]:
        raise TypeError("trial.study inside a tunefleet worker cannot be pickled; pass "
                        "values read from it instead")

    def __repr__(self) -> str:
        return f"WorkerStudy(study_name={self.study_name!r})"


class StorageProxy(optuna.storages.BaseStorage):
    """``trial.storage`` inside a worker: reads of any trial or study attribute, and writes of
    attributes and intermediate values, answered by the coordinator's storage (see
    ``protocol.STORAGE_METHODS``). Creating or deleting studies and trials, and setting a
    trial's state, values or parameters, are the coordinator's alone."""

    def __init__(self, trial: ProxyTrial) -> None:
        self._trial = trial

    def _forward(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name not in P.STORAGE_METHODS:
            raise NotImplementedError(
                f"trial.storage.{name}() is not available inside a tunefleet worker: the "
                f"coordinator alone creates trials and sets their state; available: "
                f"{', '.join(sorted(P.STORAGE_METHODS))}")
        return self._trial._rpc(P.StorageCall(name, args, kwargs))

    def __repr__(self) -> str:
        return "StorageProxy()"


def _forwarder(name: str) -> Callable[..., Any]:
    def method(self: StorageProxy, *args: Any, **kwargs: Any) -> Any:
        return self._forward(name, *args, **kwargs)

    method.__name__ = name
    return method


for _name in sorted(set(optuna.storages.BaseStorage.__abstractmethods__) | P.STORAGE_METHODS):
    setattr(StorageProxy, _name, _forwarder(_name))
StorageProxy.__abstractmethods__ = frozenset()
