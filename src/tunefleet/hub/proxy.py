"""The trial a worker's objective sees: an ``optuna.Trial`` whose answers come from the hub.

It is a real subclass of ``optuna.trial.Trial`` (so ``isinstance`` checks in integrations pass)
and reuses Optuna's own ``suggest_*`` front ends; only the points where Optuna would touch the
storage or the sampler are replaced. Values the coordinator sampled at ask time are used
locally, with Optuna's order of precedence (fixed, single-valued, sampled); reports and
attributes are buffered and travel with the next message, or after ``FLUSH_EVERY`` seconds.
"""

from __future__ import annotations

import copy
import datetime
import math
import time
from typing import Any, Callable

import optuna
from optuna import distributions as D
from optuna._warnings import optuna_warn

from tunefleet.hub import protocol as P

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

    def __init__(self, call: Callable[[int, list, tuple], Any],
                 send_ops: Callable[[int, list], None], n_objectives: int,
                 trial_id: int, number: int, datetime_start: datetime.datetime | None,
                 fixed_params: dict[str, Any], presampled: dict[str, Any],
                 space: dict[str, D.BaseDistribution], user_attrs: dict[str, Any]) -> None:
        # Deliberately not calling Trial.__init__: it needs the study and its storage.
        self._call = call
        self._send_ops = send_ops
        self._n_objectives = n_objectives
        self._trial_id = trial_id
        self._fixed_params = fixed_params
        self._presampled = presampled
        self._space = space
        self._cached_frozen_trial = _LocalTrialState(number, datetime_start, user_attrs)
        self._ops: list[tuple] = []
        self._last_flush = time.monotonic()
        self._constraints: dict[str, float] = {}
        self.study = _StudyProxy(self)  # type: ignore[assignment]

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
            value = D._get_single_value(distribution)
        else:
            if name in self._presampled and self._space.get(name) == distribution:
                value = self._presampled[name]
            else:
                # The coordinator samples and stores it: nothing to send back later.
                value = self._rpc((P.SUGGEST, name, distribution))
                state.distributions[name] = distribution
                state.params[name] = value
                return value
        distribution.to_internal_repr(value)  # validates, as Optuna does before storing
        self._ops.append(("param", name, distribution, value))
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
        self._ops.append(("report", step, value))
        self._maybe_flush()

    def should_prune(self) -> bool:
        if self._n_objectives > 1:
            raise NotImplementedError(
                "Trial.should_prune is not supported for multi-objective optimization.")
        return bool(self._rpc((P.PRUNE,)))

    # -- attributes -------------------------------------------------------------------------
    def set_user_attr(self, key: str, value: Any) -> None:
        self._cached_frozen_trial.user_attrs[key] = value
        self._ops.append(("user_attr", key, value))
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
        self._ops.append(("constraint", key, value))

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
    def _rpc(self, request: tuple) -> Any:
        ops, self._ops = self._ops, []
        self._last_flush = time.monotonic()
        return self._call(self._trial_id, ops, request)

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_EVERY:
            ops, self._ops = self._ops, []
            self._last_flush = now
            self._send_ops(self._trial_id, ops)

    def _take_ops(self) -> list[tuple]:
        ops, self._ops = self._ops, []
        return ops

    def __repr__(self) -> str:
        return f"ProxyTrial(number={self.number}, params={self._cached_frozen_trial.params})"


_STUDY_ATTRS = frozenset({
    "best_value", "best_params", "best_trial", "best_trials", "direction", "directions",
    "user_attrs", "study_name", "trials", "metric_names",
})
_STUDY_METHODS = frozenset({"get_trials", "set_user_attr", "enqueue_trial", "stop",
                            "trials_dataframe"})


class _StudyProxy:
    """``trial.study`` inside a worker: read-only attributes and a few methods of the real
    study, answered by the coordinator."""

    def __init__(self, trial: ProxyTrial) -> None:
        self._trial = trial

    def __getattr__(self, name: str) -> Any:
        if name in _STUDY_ATTRS:
            return self._trial._rpc((P.STUDY_GET, name))
        if name in _STUDY_METHODS:
            return lambda *args, **kwargs: self._trial._rpc((P.STUDY_CALL, name, args, kwargs))
        raise AttributeError(
            f"trial.study.{name} is not available inside a tunefleet worker; available: "
            f"{', '.join(sorted(_STUDY_ATTRS | _STUDY_METHODS))}")
