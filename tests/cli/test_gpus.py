"""GPU ids are indices into the inherited CUDA_VISIBLE_DEVICES; a lone number is a count."""

from __future__ import annotations

import optuna
import pytest

import tunefleet
from tests.cli.conftest import OBJECTIVES
from tunefleet.cli._options import parse_gpus
from tunefleet.errors import UsageError
from tunefleet._gpus import resolve_gpus, visible_gpus


@pytest.mark.parametrize("given,env,expected", [
    (["0", "1"], {"CUDA_VISIBLE_DEVICES": "5,6"}, ["5", "6"]),
    (["1"], {"CUDA_VISIBLE_DEVICES": "5,6"}, ["6"]),
    (2, {"CUDA_VISIBLE_DEVICES": "5,6,7"}, ["5", "6"]),
    (2, {}, ["0", "1"]),
    ([3, 5], {}, ["3", "5"]),
    ([0], {"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, ["GPU-aa"]),
    (None, {"CUDA_VISIBLE_DEVICES": "5"}, None),
])
def test_resolve(given, env, expected):
    assert resolve_gpus(given, env) == expected


@pytest.mark.parametrize("given,env,words", [
    (["2"], {"CUDA_VISIBLE_DEVICES": "5,6"}, "out of range"),
    (3, {"CUDA_VISIBLE_DEVICES": "5,6"}, "more GPUs than visible"),
    (1, {"CUDA_VISIBLE_DEVICES": ""}, "hides every GPU"),
    (0, {}, "at least 1"),
    ("0,1", {}, "not a string"),
])
def test_resolve_refuses_what_the_scheduler_did_not_give(given, env, words):
    with pytest.raises(UsageError, match=words):
        resolve_gpus(given, env)


def test_visible_stops_at_minus_one():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({}) is None


def test_parse_gpus_count_or_indices():
    assert parse_gpus("4") == 4
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus("3,") == ["3"]
    assert parse_gpus(None) is None
    with pytest.raises(UsageError, match="--gpus 0,"):
        parse_gpus("0")


def _gpus_seen(url: str) -> set[str]:
    trials = optuna.load_study(study_name="tunefleet", storage=url).get_trials()
    return {t.user_attrs["cuda"] for t in trials}


@pytest.mark.parametrize("flag", ["0,1", "2"])
def test_cli_hands_out_the_inherited_gpus(flag, cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    r = cli("run", f"{OBJECTIVES}:records_gpu", "--n-trials", "6", "--gpus", flag,
            "--storage", url, "--no-progress", cwd=tmp_path,
            env={"CUDA_VISIBLE_DEVICES": "5,6"})
    assert r.returncode == 0, r.stderr
    assert _gpus_seen(url) <= {"5", "6"} and _gpus_seen(url)


def test_cli_refuses_a_gpu_it_was_not_given(cli, tmp_path):
    r = cli("run", f"{OBJECTIVES}:records_gpu", "--n-trials", "2", "--gpus", "3",
            "--storage", "sqlite:///g.db", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": "5,6"})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "CUDA_VISIBLE_DEVICES=5,6" in r.stderr


def test_api_takes_a_count(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,8,9")
    from tests.cli import objectives

    study = optuna.create_study()
    tunefleet.optimize(study, objectives.records_gpu, n_trials=4, gpus=1)
    assert {t.user_attrs["cuda"] for t in study.trials} == {"7"}


@pytest.mark.timeout(240)
def test_tuner_on_dask_workers_that_own_gpus(tmp_path):
    """``Tuner(client=..., gpus=2)``: one worker task per GPU, each needing Dask's ``GPU``
    resource, so that each runs on a Dask worker that owns a GPU (as dask-cuda starts them:
    one worker per GPU, with its CUDA_VISIBLE_DEVICES)."""
    import distributed
    from distributed.deploy.spec import SpecCluster

    from tests.trainer.toy import ToyTuner

    workers = {f"gpu{g}": {"cls": distributed.Nanny,
                           "options": {"nthreads": 1, "resources": {"GPU": 1},
                                       "env": {"CUDA_VISIBLE_DEVICES": g}}}
               for g in ("5", "6")}
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, \
            distributed.Client(cluster) as client:
        tuner = ToyTuner("dask-gpus", "valid_loss", n_trials=6, client=client, gpus=2,
                         storage=":memory:", log=False, verbose=False)
        tuner.sleep = 0.5  # both workers take trials
        study = tuner.run()
    assert len(study.trials) == 6
    assert {t.user_attrs["cuda_visible_devices"] for t in study.trials} == {"5", "6"}
