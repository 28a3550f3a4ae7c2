"""backend="dask": hub workers as long-lived tasks of a real Dask LocalCluster (2 processes)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet import _attrs as attrs
from tunefleet.errors import WorkerStartError
from tests.remote import objectives
from tests.remote.conftest import wait_for

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def check_study(study: optuna.Study, n: int) -> None:
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_a_60_trial_study_on_dask(client):
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"x": 2.0, "y": 0})
    tunefleet.optimize(study, objectives.quadratic, n_trials=60, backend="dask", client=client)
    check_study(study, 60)
    assert len(study.trials) == 60
    assert study.best_value == 0.0 and study.best_params == {"x": 2.0, "y": 0}
    workers = {t.system_attrs[attrs.WORKER] for t in study.trials}
    assert all(w.startswith("dask-") for w in workers) and len(workers) <= 2
    # the worker tasks have ended: nothing is left running on the cluster
    wait_for(lambda: not any(client.processing().values()), 30, "the worker tasks to end")


def test_a_killed_dask_worker_process_fails_its_trial_which_is_retried(client):
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.dies_at(10, sleep=0.02), n_trials=50, backend="dask",
                       client=client)
    check_study(study, 50)
    dead = study.trials[10]
    assert dead.state == TrialState.FAIL
    assert dead.system_attrs[attrs.FAIL_REASON]
    retry = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == 10]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["pid"] != dead.user_attrs.get("pid", -1)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_setup_runs_once_per_dask_worker(client, tmp_path):
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.tagging, n_trials=30, backend="dask", client=client,
                       setup=objectives.make_setup(str(tmp_path)))
    check_study(study, 30)
    tokens = {t.user_attrs["token"] for t in study.trials}
    assert tokens == {p.name for p in tmp_path.iterdir()}
    assert len(tokens) == len({t.system_attrs[attrs.WORKER] for t in study.trials}) <= 2


def test_workers_that_cannot_reach_the_coordinator_stop_the_study(client):
    study = optuna.create_study()
    with pytest.raises(WorkerStartError, match="cannot reach the coordinator"):
        tunefleet.optimize(study, objectives.quadratic, n_trials=10, backend="dask",
                           client=client, advertise="tcp://127.0.0.1:9")  # nobody listens there
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
