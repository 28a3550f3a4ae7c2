"""``deterministic=True`` / ``tunefleet run --deterministic``: a seeded hub run with N workers
gives the same trials, values and pruning decisions whatever the workers' timing."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tests.conftest import EXAMPLES, run_cli

pytestmark = pytest.mark.timeout(600)


def timed(slow_parity: int):
    """A pruned objective whose trials of one parity take 0.3 s longer: two runs that differ
    only in that finish their trials in different orders."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        y = trial.suggest_float("y", -10, 10)
        value = (x - 2) ** 2 + (y + 1) ** 2
        if trial.number % 2 == slow_parity:
            time.sleep(0.3)
        for step in range(3):
            trial.report(value * (3 - step), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


def run(slow_parity: int, deterministic: bool) -> list[tuple]:
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(n_startup_trials=4),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4))
    tunefleet.optimize(study, timed(slow_parity), n_trials=24, n_workers=3, seed=11,
                       deterministic=deterministic)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    return [(t.number, t.state, t.params, t.value) for t in study.trials]


def test_the_same_trials_whatever_the_timing():
    a, b = run(0, True), run(1, True)
    assert len(a) == 24 and a == b
    assert {s for _, s, _, _ in a} == {TrialState.COMPLETE, TrialState.PRUNED}  # both matter
    # Without it, the same seed gives other trials when the timing differs: TPE and the
    # pruner saw other trials ended at each ask.
    assert run(0, False) != run(1, False)


def test_deterministic_needs_a_seed():
    study = optuna.create_study()
    with pytest.raises(ValueError, match="needs a seed"):
        tunefleet.optimize(study, timed(0), n_trials=2, n_workers=2, deterministic=True)
    assert not study.trials


def test_cli_deterministic_runs_agree_and_needs_seed(tmp_path):
    quad = f"{EXAMPLES / 'quadratic.py'}:objective"
    got = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        r = run_cli("run", quad, "--no-progress", "--sampler", "tpe", "--seed", "3",
                    "--n-trials", "12", "--workers", "2", "--deterministic", cwd=folder,
                    timeout=300)
        assert r.returncode == 0, r.stderr
        study = optuna.load_study(study_name="tunefleet",
                                  storage=f"sqlite:///{folder}/tunefleet.db")
        got.append([(t.params, t.value) for t in study.trials])
    assert len(got[0]) == 12 and got[0] == got[1]
    r = run_cli("run", quad, "--n-trials", "2", "--deterministic", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "--deterministic needs --seed" in r.stderr


def test_a_worker_killed_mid_trial_holds_nothing_back():
    from tests.remote import objectives

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(n_startup_trials=3))
    tunefleet.optimize(study, objectives.dies_at(5, 0.05), n_trials=20, n_workers=3, seed=1,
                       deterministic=True)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 20 and states.count(TrialState.FAIL) == 1
    assert study.trials[5].state == TrialState.FAIL and len(states) == 21
