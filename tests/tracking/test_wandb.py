"""W&B: one offline run per trial, grouped by study, with parameters, history and outcome."""

from __future__ import annotations

import optuna
import pytest

from tests.tracking.wandb_files import read_runs
from tests.trainer.toy import ToyTuner
from tunefleet.tracking import TrackingWarning, WandbTracker, log, track

pytestmark = pytest.mark.timeout(120)


def test_each_trial_of_a_plain_objective_is_a_run_with_params_history_and_state(wandb_offline):
    @track(WandbTracker(), study_name="quad", config={"budget": 3})
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2, 2)
        for step in range(3):
            log({"partial": x * step}, step=step)
        if trial.number == 1:
            raise optuna.TrialPruned()
        return x * x

    study = optuna.create_study()
    for x in (0.5, 1.0, -1.5):
        study.enqueue_trial({"x": x})
    study.optimize(objective, n_trials=3)

    runs = read_runs(wandb_offline)
    assert sorted(runs) == ["quad-trial-0", "quad-trial-1", "quad-trial-2"]
    for n, x in enumerate((0.5, 1.0, -1.5)):
        run = runs[f"quad-trial-{n}"]
        assert run["group"] == "quad" and run["project"] == "quad"
        assert run["config"]["x"] == x and run["config"]["budget"] == 3
        assert run["config"]["trial_number"] == n
        assert [(h["_step"], h["partial"]) for h in run["history"]] == [
            (s, x * s) for s in range(3)]
        assert run["exit_code"] == 0
    assert runs["quad-trial-0"]["summary"]["value"] == 0.25
    assert runs["quad-trial-0"]["summary"]["state"] == "COMPLETE"
    assert runs["quad-trial-1"]["summary"]["state"] == "PRUNED"
    assert "value" not in runs["quad-trial-1"]["summary"]


def test_tuner_trials_log_the_trainer_metric_history(wandb_offline, tmp_path):
    tuner = ToyTuner("toy", "valid_acc", trackers=[WandbTracker(project="tf-test")],
                     storage=":memory:", out_dir=str(tmp_path / "runs"), verbose=False)
    study = tuner.create_study()
    study.enqueue_trial({"lr": 0.3, "hidden": 8})
    study.optimize(tuner.objective, n_trials=1)

    (run,) = read_runs(wandb_offline).values()
    assert run["name"] == "toy-trial-0" and run["project"] == "tf-test"
    assert run["config"]["lr"] == 0.3 and run["config"]["hidden"] == 8
    assert run["config"]["max_epoch"] == 2 and run["config"]["valid_freq"] == 2  # fixed config
    steps = [h["_step"] for h in run["history"]]
    assert steps == list(range(12))  # 2 epochs x 6 iterations, one row each
    assert all("train_loss" in h for h in run["history"])
    valid = [h["valid_acc"] for h in run["history"] if "valid_acc" in h]
    assert len(valid) == 6
    assert run["summary"]["value"] == pytest.approx(study.trials[0].value)
    assert valid[-1] == pytest.approx(study.trials[0].value)


def test_a_wandb_failure_is_a_warning_and_the_trial_completes(wandb_offline):
    @track(WandbTracker(mode="no-such-mode"), study_name="s")
    def objective(trial: optuna.Trial) -> float:
        log({"a": 1.0}, step=0)
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study()
    with pytest.warns(TrackingWarning, match="wandb opening the run of trial 0 failed"):
        study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_a_hub_worker_opens_a_run_for_each_of_its_trials(wandb_offline):
    """W&B's service process (wandb-core, started by a worker's first ``wandb.init`` in a
    session of its own) is kept between trials: ending it with the trial's leftovers made the
    worker's next ``wandb.init`` fail (MailboxClosedError), so only the first trial of each
    worker had a run."""
    import tunefleet

    @track(WandbTracker(), study_name="hubwb")
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2, 2)
        log({"x": x}, step=0)
        return x * x

    study = optuna.create_study()
    tunefleet.optimize(study, objective, n_trials=4, n_workers=1)
    runs = read_runs(wandb_offline)
    assert sorted(runs) == [f"hubwb-trial-{n}" for n in range(4)]
    assert all(run["exit_code"] == 0 and run["history"] for run in runs.values())
