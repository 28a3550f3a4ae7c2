"""The trial hook on its own, with a plain in-process study: reports and pruning."""

from __future__ import annotations

import optuna
import pytest
import torch

from tests.trainer.toy import make_trainer
from tunefleet import UsageError
from tunefleet.trainer import TrialHook

pytestmark = pytest.mark.timeout(90)


def _objective(report_last_n: int = 1, allow_prune: bool = True, metric: str = "valid_acc"):
    def objective(trial: optuna.Trial) -> float:
        # The same start for every trial: with a random one the untrained model's accuracy at
        # the first report was now and then not below the learners' median (CI, stop 23).
        torch.manual_seed(0)
        lr = trial.suggest_float("lr", 0.0, 1.0)
        trainer = make_trainer(lr=lr, max_epoch=3, valid_freq=2, log=False)
        hook = TrialHook(trial, metric, report_last_n=report_last_n, allow_prune=allow_prune)
        trainer.register_hooks([hook])
        trainer.run()
        trial.set_user_attr("iters", trainer.iters_done)
        return hook.final_value()

    return objective


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for lr in (0.5, 0.4, 0.0):  # two that learn, then one that cannot (lr=0)
        study.enqueue_trial({"lr": lr})
    return study


def test_a_bad_trial_is_pruned_early():
    study = _study()
    study.optimize(_objective(), n_trials=3)
    good1, good2, bad = study.trials
    assert good1.state == good2.state == optuna.trial.TrialState.COMPLETE
    assert good1.value > 0.9 and len(good1.intermediate_values) == 9  # 18 iterations / 2
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert list(bad.intermediate_values) == [1]  # stopped at its first report (iteration 1)
    assert "iters" not in bad.user_attrs  # training never finished


def test_without_allow_prune_the_bad_trial_runs_to_the_end():
    study = _study()
    study.optimize(_objective(allow_prune=False), n_trials=3)
    bad = study.trials[2]
    assert bad.state == optuna.trial.TrialState.COMPLETE
    assert bad.user_attrs["iters"] == 18 and bad.value < 0.7


def test_reports_the_mean_of_the_last_n_values_at_each_validation_step():
    study = optuna.create_study(direction="minimize")
    values: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        trainer = make_trainer(lr=0.2, max_epoch=2, valid_freq=3, log=False)
        hook = TrialHook(trial, "valid_loss", report_last_n=3)
        trainer.register_hooks([hook])
        trainer.run()
        values.extend(trainer.history.values("valid_loss"))
        return hook.final_value()

    study.optimize(objective, n_trials=1)
    reported = study.trials[0].intermediate_values
    assert sorted(reported) == [2, 5, 8, 11]
    for i, step in enumerate(sorted(reported)):
        window = values[max(0, i - 2): i + 1]
        assert reported[step] == pytest.approx(sum(window) / len(window))
    assert study.trials[0].value == pytest.approx(sum(values[-3:]) / 3)


def test_a_metric_missing_from_valid_out_is_one_clear_error():
    study = optuna.create_study()
    with pytest.raises(UsageError, match=r"'valid_f1' is not in valid_out.*valid_loss, valid_acc"):
        study.optimize(_objective(metric="valid_f1"), n_trials=1)
