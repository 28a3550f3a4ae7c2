"""What every engine backend (Dask, Ray, Spark) must do, run and checked the same way for each:
a whole study, a worker killed mid-trial, a set-up run once per worker. Each test file adds
what only its engine shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import tunefleet
from tunefleet import _attrs as attrs
from tests.remote import objectives


def check_study(study: optuna.Study, n: int) -> None:
    """N trials complete, none left running."""
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == n
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def workers_of(study: optuna.Study) -> set[str]:
    return {t.system_attrs[attrs.WORKER] for t in study.trials}


def run_60_trials(backend: str, **options: Any) -> optuna.Study:
    """60 trials of the quadratic, its optimum enqueued: every trial done, on at most 2
    workers of BACKEND."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"x": 2.0, "y": 0})
    tunefleet.optimize(study, objectives.quadratic, n_trials=60, backend=backend, **options)
    check_study(study, 60)
    assert len(study.trials) == 60
    assert study.best_value == 0.0 and study.best_params == {"x": 2.0, "y": 0}
    workers = workers_of(study)
    assert all(w.startswith(f"{backend}-") for w in workers) and len(workers) <= 2
    return study


def run_with_a_killed_worker(backend: str, **options: Any) -> tuple[FrozenTrial, FrozenTrial]:
    """Trial 10's worker process is SIGKILLed: that trial fails with a reason, and is run
    again once, to completion; the study still gets its 50 trials. (dead, retry)."""
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.dies_at(10, sleep=0.02), n_trials=50, backend=backend,
                       **options)
    check_study(study, 50)
    dead = study.trials[10]
    assert dead.state == TrialState.FAIL and dead.system_attrs[attrs.FAIL_REASON]
    retry = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == 10]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    return dead, retry[0]


def run_with_setup(backend: str, folder: Path, n_trials: int = 30,
                   **options: Any) -> optuna.Study:
    """The set-up runs once per worker (one file in FOLDER each), and each worker's trials see
    its token."""
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.tagging, n_trials=n_trials, backend=backend,
                       setup=objectives.make_setup(str(folder)), **options)
    check_study(study, n_trials)
    tokens = {t.user_attrs["token"] for t in study.trials}
    assert tokens == {p.name for p in folder.iterdir()}
    assert len(tokens) == len(workers_of(study)) <= 2
    return study
