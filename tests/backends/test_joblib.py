"""backend="joblib": hub workers as tasks of a joblib backend, on loky (local processes) and on
joblib-spark (Spark in local mode)."""

from __future__ import annotations

import os

import cloudpickle
import joblib
import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tests.backends import objectives
from tunefleet import _attrs as attrs
from tunefleet.errors import UsageError

cloudpickle.register_pickle_by_value(objectives)


def _workers(study: optuna.Study) -> set[str]:
    return {t.system_attrs[attrs.WORKER] for t in study.trials}


def test_loky_workers_run_the_trials_in_their_own_processes():
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.where, n_trials=8, n_workers=2, backend="joblib")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 8
    # A loky worker process lost on a loaded machine fails its trial, which is retried.
    failed = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert len(failed) == sum("tunefleet:retry_of" in t.system_attrs for t in study.trials)
    pids = {t.user_attrs["pid"] for t in done}
    assert os.getpid() not in pids  # never inside the coordinator
    assert all(w.startswith("joblib-") for w in _workers(study)), _workers(study)
    assert len(_workers(study)) == 2


def test_a_dead_loky_worker_is_replaced_and_its_trial_retried(tmp_path):
    marker = tmp_path / "died"
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.dies_once(str(marker)), n_trials=6, n_workers=2,
                       backend="joblib")
    assert marker.exists()  # a worker process did die
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states, states
    # loky's shared pool broke (the sibling worker may be lost with it): fresh workers took
    # over, and the study went on after the failures
    assert len(_workers(study)) > 2, _workers(study)
    first_fail = states.index(TrialState.FAIL)
    assert TrialState.COMPLETE in states[first_fail + 1:], states


def test_backend_of_the_callers_parallel_config_is_used():
    """Inside ``joblib.parallel_config(backend="threading")`` the workers are threads of this
    process: the backend was taken from the caller's block."""
    study = optuna.create_study()
    with joblib.parallel_config(backend="threading"):
        tunefleet.optimize(study, objectives.where, n_trials=4, n_workers=2, backend="joblib")
    assert {t.user_attrs["pid"] for t in study.trials} == {os.getpid()}
    assert len(study.trials) == 4


def test_unknown_joblib_backend_is_one_line():
    with pytest.raises(UsageError, match="not registered.*registered: .*loky"):
        tunefleet.optimize(optuna.create_study(), objectives.where, n_trials=1,
                           backend="joblib", joblib_backend="nope")


@pytest.mark.timeout(300)
def test_joblib_spark_on_spark_local_mode(spark):
    from joblibspark import register_spark

    register_spark()
    study = optuna.create_study()
    with joblib.parallel_config(backend="spark"):
        tunefleet.optimize(study, objectives.where, n_trials=6, n_workers=2, backend="joblib")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert os.getpid() not in pids  # Spark's Python workers ran them
    assert len(_workers(study)) == 2 and all(w.startswith("joblib-") for w in _workers(study))
