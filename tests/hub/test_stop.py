"""Stopping like Optuna: ``MaxTrialsCallback`` and ``study.stop()`` from a callback take effect
before a worker starts another trial, as in a thread of ``Study.optimize(n_jobs=...)``: no more
trials than Optuna's ``n_jobs`` gives for the same number of workers (measured in the same
run), and no trial counted before the storage holds it."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

import tunefleet

pytestmark = pytest.mark.timeout(600)
WORKERS = 4


def sleepy(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    time.sleep(0.05)
    return x * x


def stops_at_4(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    time.sleep(0.05)
    if trial.number == 4:
        trial.study.stop()
    return x * x


def _runs(tmp_path, objective, callbacks, n: int) -> tuple[list[int], list[int]]:
    ours, theirs = [], []
    for i in range(n):
        study = optuna.create_study(storage=f"sqlite:///{tmp_path}/tf{i}.db")
        tunefleet.optimize(study, objective, n_trials=100, n_workers=WORKERS,
                           callbacks=callbacks())
        assert all(t.state != TrialState.RUNNING for t in study.trials)
        ours.append(len(study.trials))
        study = optuna.create_study(storage=f"sqlite:///{tmp_path}/op{i}.db")
        study.optimize(objective, n_trials=100, n_jobs=WORKERS, callbacks=callbacks())
        theirs.append(len(study.trials))
    print(f"\ntunefleet {sorted(ours)}  optuna n_jobs={WORKERS} {sorted(theirs)}")
    return ours, theirs


def test_max_trials_callback_stops_as_optunas_n_jobs_does(tmp_path):
    def callbacks() -> list:
        return [MaxTrialsCallback(10, states=(TrialState.COMPLETE,))]

    ours, theirs = _runs(tmp_path, sleepy, callbacks, 3)
    # Once the 10th trial is stored and its callback stopped the study, the other workers
    # only finish the trial each holds: 10 + (workers - 1) at most, Optuna's own bound.
    assert all(10 <= n <= 10 + WORKERS - 1 for n in ours), ours
    assert all(10 <= n <= 10 + WORKERS - 1 for n in theirs), theirs


def test_study_stop_in_a_callback_and_in_the_objective(tmp_path):
    def stop_at_5(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 5:
            study.stop()

    # Stopped by trial k: every worker finishes the trial it holds, and none was handed one
    # while trial k's end waited for the storage: k + 1 + (workers - 1), plus one trial per
    # worker that ended while trial k ran (they start together, so at most one round).
    ours, theirs = _runs(tmp_path, sleepy, lambda: [stop_at_5], 2)
    assert all(6 <= n <= 6 + 2 * WORKERS - 1 for n in ours), (ours, theirs)
    ours, theirs = _runs(tmp_path, stops_at_4, list, 2)
    assert all(5 <= n <= 5 + 2 * WORKERS - 1 for n in ours), (ours, theirs)
