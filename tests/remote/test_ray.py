"""backend="ray": hub workers as long-lived tasks of a local Ray, started once for the module."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet import _attrs as attrs
from tests.remote import objectives

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def check_study(study: optuna.Study, n: int) -> None:
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == n
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_a_60_trial_study_on_ray():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"x": 2.0, "y": 0})
    tunefleet.optimize(study, objectives.quadratic, n_trials=60, backend="ray")
    check_study(study, 60)
    assert len(study.trials) == 60
    assert study.best_value == 0.0 and study.best_params == {"x": 2.0, "y": 0}
    workers = {t.system_attrs[attrs.WORKER] for t in study.trials}
    assert all(w.startswith("ray-") for w in workers) and len(workers) <= 2
    assert ray.is_initialized()  # the caller's Ray is left running


def test_a_killed_ray_worker_fails_its_trial_which_is_retried():
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.dies_at(10, sleep=0.02), n_trials=50, backend="ray")
    check_study(study, 50)
    dead = study.trials[10]
    assert dead.state == TrialState.FAIL and dead.system_attrs[attrs.FAIL_REASON]
    retry = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == 10]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE


def test_setup_runs_once_per_ray_worker(tmp_path):
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.tagging, n_trials=30, backend="ray",
                       setup=objectives.make_setup(str(tmp_path)))
    check_study(study, 30)
    tokens = {t.user_attrs["token"] for t in study.trials}
    assert tokens == {p.name for p in tmp_path.iterdir()}
    assert len(tokens) == len({t.system_attrs[attrs.WORKER] for t in study.trials}) <= 2
