"""examples/digits/tune.py as a user runs it: 2 workers, pruning, W&B offline and MLflow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import EXAMPLES
from tests.tracking.wandb_files import read_runs

pytestmark = pytest.mark.timeout(240)


def test_digits_example_tunes_on_two_workers_and_logs_every_trial(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/tracking.db"}
    env.pop("WANDB_DIR", None)
    done = subprocess.run([sys.executable, str(EXAMPLES / "digits" / "tune.py"), "--n-trials", "4",
                           "--epochs", "2"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=220)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study digits: 4 trials" in done.stdout
    best = float(done.stdout.split("best valid_acc ")[1].split()[0])
    assert best > 0.7  # two epochs of a small CNN already read most digits (chance: 0.1)

    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 4
    for folder in folders:
        assert {"log.txt", "train_metrics.png", "valid_metrics.pdf"} <= {
            p.name for p in folder.iterdir()}

    runs = read_runs(tmp_path)  # WANDB_DIR unset: ./wandb under the current folder
    assert sorted(runs) == [f"digits-trial-{n}" for n in range(4)]
    first = runs["digits-trial-0"]
    assert first["group"] == "digits" and first["project"] == "tunefleet-digits"
    assert first["config"]["lr"] == 3e-3 and first["config"]["hidden"] == 64  # enqueued first
    assert any("valid_acc" in row for row in first["history"])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("digits")
    all_runs = client.search_runs([exp.experiment_id])
    parents = [r for r in all_runs if r.data.tags.get("tunefleet.role") == "study"]
    trials = [r for r in all_runs if r.data.tags.get("tunefleet.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 4
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"lr", "hidden", "channels", "max_epoch"} <= set(run.data.params)
        assert client.get_metric_history(run.info.run_id, "valid_acc")
