"""MLflow: a parent run per study, a nested run per trial with its parameters and history."""

from __future__ import annotations

import optuna
import pytest

from tests.trainer.toy import ToyTuner
from tunefleet.tracking import MlflowTracker, TrackingWarning, log, track

pytestmark = pytest.mark.timeout(150)


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tunefleet.role") == "study"]
    trials = {r.info.run_name: r for r in runs if r.data.tags.get("tunefleet.role") == "trial"}
    return client, parents, trials


def test_tuner_trials_are_nested_runs_in_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(tracking_uri=uri)
    tuner = ToyTuner("toy", "valid_acc", trackers=[tracker], storage=":memory:",
                     pruner=optuna.pruners.MedianPruner(n_startup_trials=1),
                     out_dir=str(tmp_path / "runs"), verbose=False)
    study = tuner.create_study()
    tracker.prepare(study.study_name)  # what Tuner.run does in the study's process
    for lr in (0.3, 1e-4):  # the second cannot learn and is pruned at its first report
        study.enqueue_trial({"lr": lr, "hidden": 8})
    study.optimize(tuner.objective, n_trials=2)
    tracker.end_study(study)

    client, parents, trials = _runs(uri, "toy")
    (parent,) = parents
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert sorted(trials) == ["trial-0", "trial-1"]
    for name, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    good, bad = trials["trial-0"], trials["trial-1"]
    assert good.data.params == {"lr": "0.3", "hidden": "8", "max_epoch": "2", "valid_freq": "2"}
    assert good.info.status == "FINISHED" and good.data.tags["tunefleet.state"] == "COMPLETE"
    history = client.get_metric_history(good.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(12))
    acc = sorted(client.get_metric_history(good.info.run_id, "valid_acc"), key=lambda m: m.step)
    assert [m.step for m in acc] == [1, 3, 5, 7, 9, 11]
    assert good.data.metrics["value"] == pytest.approx(study.trials[0].value)
    assert bad.info.status == "KILLED" and bad.data.tags["tunefleet.state"] == "PRUNED"
    assert bad.data.params["lr"] == "0.0001"
    assert [m.step for m in client.get_metric_history(bad.info.run_id, "valid_acc")] == [1]


def test_a_plain_objective_in_a_file_store_finds_its_parent_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()

    @track(MlflowTracker(tracking_uri=uri, experiment_name="exp"), study_name="quad")
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2, 2)
        for step in range(4):
            log({"partial": x + step}, step=step)
        return x * x

    study = optuna.create_study()
    study.optimize(objective, n_trials=3)

    client, parents, trials = _runs(uri, "exp")
    assert len(parents) == 1, "every trial must find the same parent run"
    assert sorted(trials) == ["trial-0", "trial-1", "trial-2"]
    for t in study.trials:
        run = trials[f"trial-{t.number}"]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert float(run.data.params["x"]) == pytest.approx(t.params["x"])
        steps = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                             "partial"))
        assert steps == [(s, pytest.approx(t.params["x"] + s)) for s in range(4)]
        assert run.data.metrics["value"] == pytest.approx(t.value)



def test_workers_racing_to_create_the_experiment_share_it(tmp_path):
    """Storage and peer modes: two workers find no experiment and both create it; the one that
    loses the race (MLflow refuses the duplicate name) uses the winner's, and its trial runs."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"

    class LateClient(MlflowClient):
        """Looks the experiment up just before another worker creates it."""

        def get_experiment_by_name(self, name):
            found = super().get_experiment_by_name(name)
            if found is None and not getattr(self, "raced", False):
                self.raced = True
                MlflowClient(tracking_uri=uri).create_experiment(name)  # the other worker
            return found

    tracker = MlflowTracker(tracking_uri=uri, experiment_name="race")
    experiment_id, parent = tracker._parent(LateClient(tracking_uri=uri), "quad")
    client, parents, _ = _runs(uri, "race")
    assert experiment_id == client.get_experiment_by_name("race").experiment_id
    assert [p.info.run_id for p in parents] == [parent]

def test_an_unusable_store_is_a_warning_and_the_trial_completes(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"

    @track(MlflowTracker(tracking_uri=uri), study_name="s")
    def objective(trial: optuna.Trial) -> float:
        log({"a": 1.0}, step=0)
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study()
    with pytest.warns(TrackingWarning, match="mlflow opening the run of trial 0 failed"):
        study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
