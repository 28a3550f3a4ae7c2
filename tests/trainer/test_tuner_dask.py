"""The tuner on the workers of a real Dask cluster (``client=``)."""

from __future__ import annotations

import os

import optuna
import pytest

from tests.trainer.toy import ToyTuner

pytestmark = pytest.mark.timeout(180)


def test_tuner_runs_its_trials_in_dask_workers(dask_client, tmp_path):
    given = [{"lr": 0.5, "hidden": 16}, {"lr": 0.3, "hidden": 8}]
    tuner = ToyTuner("dask", "valid_acc", n_trials=3, client=dask_client, n_workers=2,
                     storage=":memory:", log=False, verbose=False)
    study = tuner.run(trial_param_list=given)

    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert [t.params for t in study.trials[:2]] == given
    dask_pids = set(dask_client.run(os.getpid).values())
    assert {t.user_attrs["pid"] for t in study.trials} <= dask_pids
    assert study.trials[0].value > 0.9
