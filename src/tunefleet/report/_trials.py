"""Who ran a trial and when, read the same way in every mode, and trial subsets for big studies.

tunefleet records the worker and its start/finish unix times in each trial's system
attributes; trials written by plain Optuna lack them, so the report falls back to Optuna's own
datetimes and to an "unknown worker" rather than dropping the trial.
"""

from __future__ import annotations

import math
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs

UNKNOWN_WORKER = "unknown worker"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def worker_of(trial: FrozenTrial) -> str:
    """The worker that ran TRIAL, or ``UNKNOWN_WORKER``."""
    worker = trial.system_attrs.get(attrs.WORKER)
    return str(worker) if worker not in (None, "") else UNKNOWN_WORKER


def host_of(trial: FrozenTrial) -> str | None:
    """The worker's host: its attribute, else the HOST of a hub worker named "HOST/PID"."""
    host = trial.system_attrs.get(attrs.HOST)
    if host in (None, ""):
        worker = str(trial.system_attrs.get(attrs.WORKER) or "")
        host = worker.rpartition("/")[0] if "/" in worker else None
    return str(host) if host not in (None, "") else None


def _as_float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def started_at(trial: FrozenTrial) -> float | None:
    """Unix time the objective started: tunefleet's attribute, else Optuna's datetime_start."""
    value = _as_float(trial.system_attrs.get(attrs.STARTED))
    if value is None and trial.datetime_start is not None:
        value = trial.datetime_start.timestamp()
    return value


def finished_at(trial: FrozenTrial) -> float | None:
    """Unix time the objective finished (None while running): attribute, else datetime_complete."""
    if not trial.state.is_finished():
        return None
    value = _as_float(trial.system_attrs.get(attrs.FINISHED))
    if value is None and trial.datetime_complete is not None:
        value = trial.datetime_complete.timestamp()
    return value


def completed(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]


def objective_value(trial: FrozenTrial, index: int) -> float:
    assert trial.values is not None
    return trial.values[index]


def sample_trials(trials: Sequence[FrozenTrial], limit: int, *, objective: int = 0,
                  direction: optuna.study.StudyDirection = optuna.study.StudyDirection.MINIMIZE,
                  ) -> list[FrozenTrial]:
    """At most LIMIT completed trials: the best half by the objective and an even spread of the
    rest by trial number, so a plot of a huge study stays light and still shows its optimum."""
    if len(trials) <= limit:
        return list(trials)
    sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    by_value = sorted(trials, key=lambda t: sign * objective_value(t, objective))
    n_best = limit // 2
    chosen = {t.number: t for t in by_value[:n_best]}
    rest = sorted(by_value[n_best:], key=lambda t: t.number)
    n_rest = limit - n_best
    step = len(rest) / n_rest
    for i in range(n_rest):
        t = rest[int(i * step)]
        chosen[t.number] = t
    return sorted(chosen.values(), key=lambda t: t.number)


def study_of(trials: Sequence[FrozenTrial], directions: Sequence[optuna.study.StudyDirection],
             ) -> optuna.Study:
    """An in-memory study holding copies of TRIALS, for Optuna's plot functions."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                    directions=list(directions))
    finally:
        optuna.logging.set_verbosity(level)
    study.add_trials(list(trials))
    # add_trials renumbers from 0; give the copies their real numbers back, so that the
    # plots' "Trial" axes and hover texts match the study's trial numbers.
    for copy, original in zip(study._storage.get_all_trials(study._study_id, deepcopy=False),
                              trials):
        copy.number = original.number
    return study
