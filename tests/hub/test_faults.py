"""Faults in hub mode: objectives that raise, workers that die, nothing left RUNNING."""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tests.helpers import wait_until
from tunefleet import _attrs as attrs
from tunefleet.errors import WorkerStartError


def by_state(study):
    out: dict[str, list] = {}
    for t in study.trials:
        out.setdefault(t.state.name, []).append(t)
    return out


def no_worker_left() -> bool:
    """Every worker process has exited (soon after the run ends: within 60 s on a loaded
    machine)."""
    wait_until(lambda: not multiprocessing.active_children(), 60,
               lambda: f"the worker processes to exit: {multiprocessing.active_children()}",
               interval=0.05)
    return True


def raises_on_5(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 5:
        raise ValueError("bad trial five")
    time.sleep(0.01)
    return x


def test_uncaught_exception_reaches_the_caller_and_stops_the_workers():
    study = optuna.create_study()
    with pytest.raises(ValueError, match="bad trial five"):
        tunefleet.optimize(study, raises_on_5, n_trials=50, n_workers=2)
    failed = by_state(study)["FAIL"]
    assert 5 in [t.number for t in failed]
    assert "bad trial five" in study.trials[5].system_attrs[attrs.FAIL_REASON]
    assert not by_state(study).get("RUNNING")
    assert len(study.trials) < 50
    assert no_worker_left()


def test_caught_exception_fails_the_trial_and_the_study_goes_on():
    study = optuna.create_study()
    tunefleet.optimize(study, raises_on_5, n_trials=20, n_workers=2, catch=(ValueError,))
    states = by_state(study)
    assert [t.number for t in states["FAIL"]] == [5]
    assert len(states["COMPLETE"]) == 19


def prune_or_nan(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number % 3 == 0:
        raise optuna.TrialPruned("not promising")
    if trial.number % 3 == 1:
        return math.nan
    return x


def test_pruned_gives_pruned_and_nan_gives_fail():
    study = optuna.create_study()
    tunefleet.optimize(study, prune_or_nan, n_trials=12, n_workers=2)
    for t in study.trials:
        expected = {0: TrialState.PRUNED, 1: TrialState.FAIL, 2: TrialState.COMPLETE}
        assert t.state == expected[t.number % 3], t


class DiesOnce:
    """Kills its own worker the first time it runs trial ``number``, the way given."""

    def __init__(self, marker: Path, how: str, number: int = 3):
        self.marker, self.how, self.number = str(marker), how, number

    def __call__(self, trial):
        x = trial.suggest_float("x", -10, 10)
        y = trial.suggest_int("y", 0, 3)
        trial.report(x, 0)
        if trial.number == self.number and not os.path.exists(self.marker):
            Path(self.marker).write_text(repr((x, y)))
            # the report has reached the coordinator (reading the study is a round trip)
            wait_until(lambda: trial.study.trials[trial.number].intermediate_values, 30,
                       "the report to reach the coordinator")
            if self.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.how == "exit":
                os._exit(3)
            elif self.how == "segfault":
                ctypes.string_at(0)
        return x**2 + y


@pytest.mark.parametrize("how, reason", [("sigkill", "SIGKILL"), ("exit", "exited with code 3"),
                                         ("segfault", "SIGSEGV")])
def test_dead_worker_fails_its_trial_and_the_parameters_run_again(tmp_path, how, reason):
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    marker = tmp_path / "died"
    tunefleet.optimize(study, DiesOnce(marker, how), n_trials=12, n_workers=2)
    states = by_state(study)
    assert not states.get("RUNNING") and not states.get("WAITING")
    assert len(states["COMPLETE"]) == 12  # the run finishes with the trials asked for
    [dead] = states["FAIL"]
    assert dead.number == 3
    assert reason in dead.system_attrs[attrs.FAIL_REASON]
    [retry] = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == 3]
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs[attrs.RETRY_COUNT] == 1
    x, y = eval(marker.read_text())
    assert retry.params == {"x": x, "y": y}
    assert retry.value == pytest.approx(x**2 + y)
    assert no_worker_left()


def always_dies(trial):
    trial.suggest_float("x", 0, 1)
    os._exit(1)


def test_objective_that_always_kills_its_worker_ends_with_an_error_not_a_hang():
    study = optuna.create_study()
    with pytest.raises(WorkerStartError, match="keep dying"):
        tunefleet.optimize(study, always_dies, n_trials=50, n_workers=2, max_retries=1)
    assert not by_state(study).get("RUNNING")
    assert all(t.state in (TrialState.FAIL, TrialState.WAITING) for t in study.trials)
    assert no_worker_left()


def test_max_retries_zero_does_not_retry(tmp_path):
    study = optuna.create_study()
    tunefleet.optimize(study, DiesOnce(tmp_path / "m", "sigkill", number=1), n_trials=6,
                       n_workers=2, max_retries=0)
    states = by_state(study)
    assert [t.number for t in states["FAIL"]] == [1]
    assert len(states["COMPLETE"]) == 5
    assert not any(attrs.RETRY_OF in t.system_attrs for t in study.trials)


class NeedsMissingModule:
    def __reduce__(self):
        return (__import__, ("tunefleet_no_such_module",))


def test_objective_that_cannot_be_loaded_in_the_worker_is_one_clear_error():
    blob = NeedsMissingModule()

    def objective(trial):
        return blob is not None

    study = optuna.create_study()
    with pytest.raises(WorkerStartError, match="could not load the objective"):
        tunefleet.optimize(study, objective, n_trials=5, n_workers=2)
    assert len(study.trials) == 0
    assert no_worker_left()
