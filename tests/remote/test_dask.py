"""backend="dask": hub workers as long-lived tasks of a real Dask LocalCluster (2 processes), the
``dask_client`` fixture of tests/conftest.py."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet.errors import WorkerStartError
from tests.helpers import wait_until
from tests.remote import objectives
from tests.remote.engines import run_60_trials, run_with_a_killed_worker, run_with_setup

distributed = pytest.importorskip("distributed")


def test_a_60_trial_study_on_dask(dask_client):
    run_60_trials("dask", client=dask_client)
    # the worker tasks have ended: nothing is left running on the cluster
    wait_until(lambda: not any(dask_client.processing().values()), 30,
               "the worker tasks to end")


def test_a_killed_dask_worker_process_fails_its_trial_which_is_retried(dask_client):
    dead, retry = run_with_a_killed_worker("dask", client=dask_client)
    assert retry.user_attrs["pid"] != dead.user_attrs.get("pid", -1)
    dask_client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_setup_runs_once_per_dask_worker(dask_client, tmp_path):
    run_with_setup("dask", tmp_path, client=dask_client)


def test_workers_that_cannot_reach_the_coordinator_stop_the_study(dask_client):
    study = optuna.create_study()
    with pytest.raises(WorkerStartError, match="cannot reach the coordinator"):
        tunefleet.optimize(study, objectives.quadratic, n_trials=10, backend="dask",
                           client=dask_client,
                           advertise="tcp://127.0.0.1:9")  # nobody listens there
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
