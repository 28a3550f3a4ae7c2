"""The tuner on tunefleet workers (hub mode, local processes): enqueued sets first, pruning,
fixed trials with their seeds, one GPU id per worker."""

from __future__ import annotations

import optuna
import pytest

from tests.trainer.toy import ToyTuner
from tunefleet import UsageError
from tunefleet.trainer._tuner import REPEAT_PARAM, direction_for

pytestmark = pytest.mark.timeout(180)
COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def test_enqueued_sets_run_first_in_workers_and_a_bad_trial_is_pruned_early(tmp_path, capsys):
    runs = tmp_path / "runs"
    given = [{"lr": 0.5, "hidden": 16, "max_epoch": 2},  # other config keys are ignored
             {"lr": 1e-4, "hidden": 8},  # cannot learn in 12 iterations
             {"lr": 0.3, "hidden": 8}]
    tuner = ToyTuner("search", "valid_acc", n_trials=5, n_workers=2, storage=":memory:",
                     pruner=optuna.pruners.ThresholdPruner(lower=0.5, n_warmup_steps=6),
                     out_dir=str(runs))
    study = tuner.run(trial_param_list=given)

    trials = study.trials
    assert len(trials) == 5
    for t, params in zip(trials, given):
        assert t.params == {"lr": params["lr"], "hidden": params["hidden"]}
    good, bad = trials[0], trials[1]
    assert good.state == COMPLETE and good.value > 0.9
    assert sorted(good.intermediate_values) == [1, 3, 5, 7, 9, 11]
    assert bad.state == PRUNED
    assert sorted(bad.intermediate_values) == [1, 3, 5, 7]  # stopped at the first step past warm-up
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # from "valid_acc"

    import os
    assert {t.user_attrs["pid"] for t in trials}.isdisjoint({os.getpid()})  # ran in workers
    folders = sorted(p.name for p in runs.iterdir())
    assert len(folders) == 5 and all("_search_trial" in f for f in folders)
    bad_folder = next(runs.glob("*_search_trial1"))
    assert "end: pruned after 8 iterations" in (bad_folder / "log.txt").read_text()
    assert (bad_folder / "valid_metrics.png").exists()
    assert "best valid_acc" in capsys.readouterr().out


def test_fixed_trials_repeat_each_set_with_seeds_42_plus_repeat_and_no_pruning(tmp_path, capsys):
    sets = [{"lr": 0.5, "hidden": 8}, {"lr": 1e-4, "hidden": 4}]
    tuner = ToyTuner("fixed", "valid_acc", do_fixed_trial=True, n_fixed_trials=3, n_workers=2,
                     storage=":memory:", log=False,
                     pruner=optuna.pruners.ThresholdPruner(lower=2.0))  # would prune everything
    study = tuner.run(trial_param_list=sets)

    trials = study.trials
    assert len(trials) == 6
    assert all(t.state == COMPLETE for t in trials), "fixed trials are never pruned"
    assert all(len(t.intermediate_values) == 6 for t in trials)
    for i, t in enumerate(trials):
        params = sets[i // 3]
        assert t.params == {**params, REPEAT_PARAM: i % 3}
        assert t.user_attrs["seed"] == 42 + i % 3
    # the same seed gives the same random numbers, whichever worker and parameter set
    weights = [t.user_attrs["first_weight"] for t in trials]
    assert weights[:3] == weights[3:] and len(set(weights[:3])) == 3

    rows = tuner.summary(study)
    assert [r["params"] for r in rows] == sets
    for row, group in zip(rows, (trials[:3], trials[3:])):
        values = [t.value for t in group]
        assert row["n"] == 3 and row["seeds"] == [42, 43, 44]
        assert row["mean"] == pytest.approx(sum(values) / 3)
        mean = sum(values) / 3
        assert row["std"] == pytest.approx((sum((v - mean) ** 2 for v in values) / 2) ** 0.5)
    assert rows[0]["mean"] > rows[1]["mean"]
    out = capsys.readouterr().out
    assert "mean ± std" in out and "(n=3, seeds [42, 43, 44])" in out


def test_gpus_give_each_worker_its_own_cuda_visible_devices(tmp_path):
    tuner = ToyTuner("gpus", "valid_loss", n_trials=6, gpus=["3", "5"], storage=":memory:",
                     log=False, verbose=False)
    tuner.sleep = 0.5  # slow trials down so that both workers get some
    study = tuner.run()
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # from "valid_loss"
    by_pid: dict[int, set] = {}
    for t in study.trials:
        by_pid.setdefault(t.user_attrs["pid"], set()).add(t.user_attrs["cuda_visible_devices"])
    assert len(by_pid) == 2, "one worker per GPU"
    assert sorted(v for s in by_pid.values() for v in s) == ["3", "5"]


def test_fixed_trials_need_parameter_sets_and_direction_follows_the_metric():
    with pytest.raises(UsageError, match="do_fixed_trial=True needs the parameter sets"):
        ToyTuner("x", do_fixed_trial=True, storage=":memory:").run()
    assert direction_for("valid_loss") == "minimize" and direction_for("valid_mae") == "minimize"
    assert direction_for("valid_acc") == "maximize" and direction_for("valid_f1") == "maximize"


def test_a_tuner_forks_its_workers_from_itself_when_each_runs_one_thread(monkeypatch):
    """With torch run in this process: workers forked from it when each runs one thread (the
    CPUs shared out among them), from the fork server when each runs more (a forked torch
    process hangs then); either way torch in a worker runs the threads it was given."""
    import os

    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # set by the user: left alone
    assert torch.ones(4).sum().item() == 4  # what a tuner's process has done
    cpus = len(os.sched_getaffinity(0))
    for options, forked, threads in (({"n_workers": cpus}, True, 1),
                                     ({"n_workers": 1, "threads_per_worker": 2}, False, 2)):
        study = ToyTuner("t", "valid_acc", n_trials=2, storage=":memory:", log=False,
                         **options).run()
        assert [t.state for t in study.trials] == [COMPLETE, COMPLETE], options
        assert ({t.user_attrs["ppid"] for t in study.trials} == {os.getpid()}) is forked, options
        assert {t.user_attrs["threads"] for t in study.trials} == {threads}, options
