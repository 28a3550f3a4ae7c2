"""tunefleet.optimize against Optuna's public API: what runs under study.optimize runs here."""

from __future__ import annotations

import logging
import os
import socket
import time

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet import _attrs as attrs


def quadratic(trial):
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y


def busy(objective, seconds=0.02):
    """OBJECTIVE taking a little time, so that on a loaded machine the first worker up cannot
    finish every trial before the others have started."""
    def timed(trial):
        time.sleep(seconds)
        return objective(trial)
    return timed


def states(study):
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler(seed=1),
                                     optuna.samplers.TPESampler(seed=1)])
def test_quadratic_runs_every_trial_on_several_workers(sampler):
    study = optuna.create_study(sampler=sampler)
    returned = tunefleet.optimize(study, busy(quadratic), n_trials=60, n_workers=3)
    assert returned is study
    assert states(study) == {"COMPLETE": 60}
    assert [t.number for t in study.trials] == list(range(60))
    for t in study.trials:
        assert t.value == pytest.approx(t.params["x"] ** 2 + t.params["y"])
        assert set(t.distributions) == {"x", "y"}
    workers = {t.system_attrs[attrs.WORKER] for t in study.trials}
    assert len(workers) >= 2, workers
    assert study.best_value < 100


def test_objects_closures_and_lambdas():
    class Shifted:
        def __init__(self, offset):
            self.offset = offset

        def __call__(self, trial):
            return (trial.suggest_float("x", -10, 10) - self.offset) ** 2

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    tunefleet.optimize(study, Shifted(3.0), n_trials=20, n_workers=2)
    assert all(t.value == pytest.approx((t.params["x"] - 3.0) ** 2) for t in study.trials)

    scale = 7.0
    study = optuna.create_study()
    tunefleet.optimize(study, lambda t: scale * t.suggest_float("x", 0, 1), n_trials=10,
                       n_workers=2)
    assert all(t.value == pytest.approx(7.0 * t.params["x"]) for t in study.trials)


def conditional(trial):
    kind = trial.suggest_categorical("kind", ["linear", "square"])
    if kind == "linear":
        a = trial.suggest_float("a", -1, 1)
        return a
    b = trial.suggest_int("b", 0, 10, step=2)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    return b * lr


def test_define_by_run_conditional_search_space():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=5))
    tunefleet.optimize(study, conditional, n_trials=40, n_workers=2)
    assert states(study) == {"COMPLETE": 40}
    for t in study.trials:
        if t.params["kind"] == "linear":
            assert set(t.params) == {"kind", "a"}
            assert t.value == pytest.approx(t.params["a"])
        else:
            assert set(t.params) == {"kind", "b", "lr"}
            assert t.params["b"] % 2 == 0
            assert t.value == pytest.approx(t.params["b"] * t.params["lr"])
    assert {t.params["kind"] for t in study.trials} == {"linear", "square"}


def two_objectives(trial):
    x = trial.suggest_float("x", 0, 2)
    return x**2, (x - 2) ** 2


def test_multi_objective():
    study = optuna.create_study(directions=["minimize", "minimize"])
    tunefleet.optimize(study, two_objectives, n_trials=30, n_workers=2)
    assert states(study) == {"COMPLETE": 30}
    assert all(len(t.values) == 2 for t in study.trials)
    assert study.best_trials


def test_callbacks_run_in_the_coordinator_in_order_and_can_stop():
    seen = []

    def first(study, trial):
        seen.append(("first", trial.number, os.getpid()))

    def second(study, trial):
        seen.append(("second", trial.number, os.getpid()))
        if len(seen) >= 20:
            study.stop()

    study = optuna.create_study()
    tunefleet.optimize(study, quadratic, n_trials=100, n_workers=2, callbacks=[first, second])
    assert {pid for *_, pid in seen} == {os.getpid()}
    assert [name for name, *_ in seen[:4]] == ["first", "second", "first", "second"]
    # stop() ends the run: trials already running finish, no new one starts
    assert 10 <= len(study.trials) <= 12
    assert states(study) == {"COMPLETE": len(study.trials)}


def slow(trial):
    time.sleep(0.2)
    return trial.suggest_float("x", 0, 1)


def test_timeout_stops_starting_trials_and_running_ones_finish():
    # Long enough for workers started as fresh interpreters (after torch or loky was imported
    # by an earlier test) to take trials before it ends.
    study = optuna.create_study()
    started = time.monotonic()
    tunefleet.optimize(study, slow, timeout=6.0, n_workers=2)
    elapsed = time.monotonic() - started
    assert elapsed >= 6.0  # no upper bound: a loaded machine may take long to stop workers
    assert 1 <= len(study.trials) <= 2 * 6.0 / 0.2 + 2  # none started after the timeout
    assert states(study) == {"COMPLETE": len(study.trials)}  # running ones finished


def test_enqueued_trials_run_first_with_their_parameters():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.5, "y": 0})
    study.enqueue_trial({"x": -2.0, "y": 1}, user_attrs={"source": "enqueued"})
    tunefleet.optimize(study, quadratic, n_trials=10, n_workers=2)
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].params == {"x": 1.5, "y": 0}
    assert by_number[1].params == {"x": -2.0, "y": 1}
    assert by_number[1].user_attrs == {"source": "enqueued"}
    assert by_number[1].value == pytest.approx(5.0)
    assert len(study.trials) == 10


def reporting(trial):
    x = trial.suggest_float("x", 0, 10)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("number_seen", trial.number)
    for step in range(6):
        trial.report(x * (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    assert trial.params == {"x": x}
    assert trial.user_attrs["number_seen"] == trial.number
    return x


def test_report_prune_and_user_attrs_reach_the_study():
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    tunefleet.optimize(study, reporting, n_trials=40, n_workers=2)
    counts = states(study)
    assert counts.get("PRUNED", 0) > 0 and counts.get("COMPLETE", 0) > 0
    assert set(counts) <= {"PRUNED", "COMPLETE"}
    for t in study.trials:
        assert t.user_attrs["number_seen"] == t.number
        assert t.user_attrs["pid"] != os.getpid()
        if t.state == TrialState.COMPLETE:
            assert t.intermediate_values == {s: t.params["x"] * (s + 1) for s in range(6)}
        else:
            assert 1 <= max(t.intermediate_values) < 5


def reads_study(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number >= 3:
        best = trial.study.best_value
        trial.set_user_attr("best_seen", best)
        assert trial.study.direction == optuna.study.StudyDirection.MINIMIZE
    return x


def test_trial_study_answers_from_the_coordinator():
    study = optuna.create_study()
    tunefleet.optimize(study, reads_study, n_trials=8, n_workers=1)
    later = [t for t in study.trials if t.number >= 3]
    values = [t.value for t in study.trials]
    assert all(min(values) <= t.user_attrs["best_seen"] for t in later)
    assert all(isinstance(t.user_attrs["best_seen"], float) for t in later)


def records_gpu(trial):
    trial.set_user_attr("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"))
    return trial.suggest_float("x", 0, 1)


def test_gpus_are_handed_out_one_per_worker():
    study = optuna.create_study()
    tunefleet.optimize(study, busy(records_gpu, 0.1), n_trials=20, gpus=[0, 1])
    per_worker: dict[str, set] = {}
    for t in study.trials:
        per_worker.setdefault(t.system_attrs[attrs.WORKER], set()).add(t.user_attrs["cuda"])
    assert len(per_worker) == 2  # n_workers defaults to one per GPU
    assert sorted(v for s in per_worker.values() for v in s) == ["0", "1"]


def make_data():
    return {"pid": os.getpid(), "made": time.time()}


def uses_worker_data(trial):
    data = tunefleet.worker_data()
    trial.set_user_attr("data_pid", data["pid"])
    trial.set_user_attr("data_made", data["made"])
    trial.set_user_attr("pid", os.getpid())
    return trial.suggest_float("x", 0, 1)


def test_setup_runs_once_per_worker():
    study = optuna.create_study()
    tunefleet.optimize(study, busy(uses_worker_data, 0.1), n_trials=20, n_workers=2,
                       setup=make_data)
    made = {(t.user_attrs["pid"], t.user_attrs["data_made"]) for t in study.trials}
    assert all(t.user_attrs["data_pid"] == t.user_attrs["pid"] for t in study.trials)
    assert len(made) == len({pid for pid, _ in made}) == 2  # one set-up per worker


class CustomSampler(optuna.samplers.RandomSampler):
    """A sampler tunefleet does not know: every parameter is asked for at suggest time."""


def test_unknown_sampler_is_asked_per_parameter():
    study = optuna.create_study(sampler=CustomSampler(seed=2))
    tunefleet.optimize(study, conditional, n_trials=15, n_workers=2)
    assert states(study) == {"COMPLETE": 15}


def test_sqlite_storage_gets_every_trial(tmp_path):
    url = f"sqlite:///{tmp_path}/hub.db"
    study = optuna.create_study(storage=url, study_name="s")
    tunefleet.optimize(study, quadratic, n_trials=25, n_workers=4)
    again = optuna.load_study(study_name="s", storage=url)
    assert states(again) == {"COMPLETE": 25}
    assert again.best_value == study.best_value


def test_each_trial_records_its_worker_host_and_times_for_the_report():
    study = optuna.create_study()
    before = time.time()
    tunefleet.optimize(study, lambda t: t.suggest_float("x", 0, 1), n_trials=6, n_workers=2)
    from tunefleet.report._trials import finished_at, host_of, started_at

    for t in study.trials:
        assert host_of(t) == socket.gethostname()
        assert t.system_attrs[attrs.WORKER].startswith(f"{host_of(t)}/")
        assert before <= started_at(t) <= finished_at(t) <= time.time()
    assert study._storage.get_study_system_attrs(study._study_id)[attrs.MODE] == "hub"


@pytest.mark.parametrize("directions", [["minimize"], ["minimize", "maximize"]])
def test_the_end_of_a_run_is_known_without_reading_the_storage_back(tmp_path, directions):
    """``last_run_end``: the counts and the best (or the Pareto front) the command line prints
    at the end come from the coordinator's memory, and they are the storage's, trials of an
    earlier plain Optuna run included."""
    from tunefleet.hub import last_run_end

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, directions=directions,
                                sampler=optuna.samplers.RandomSampler(seed=3))
    objective = quadratic if len(directions) == 1 else two_objectives
    study.optimize(objective, n_trials=4)
    study.enqueue_trial({"x": 2.0, "y": 0.0} if len(directions) == 1 else {"x": 1.0})
    assert last_run_end(study) is None  # plain Optuna ran it
    tunefleet.optimize(study, objective, n_trials=20, n_workers=2)
    end = last_run_end(study)
    stored = optuna.load_study(study_name=study.study_name, storage=storage)
    assert end.states == {s: len(stored.get_trials(states=(s,))) for s in TrialState}
    assert sum(end.states.values()) == 24  # the enqueued trial ran as one of the 20
    if len(directions) == 1:
        assert [t.number for t in end.best] == [stored.best_trial.number]
    else:
        assert sorted(t.number for t in end.best) == sorted(t.number for t in stored.best_trials)


def test_an_objective_error_stops_the_study_after_the_running_trials_end(tmp_path, caplog):
    """As with Study.optimize(n_jobs=2): the error is raised once the trials the other workers
    run have ended, and they count. Trial 0 ends only after the storage holds trial 1's FAIL,
    that is after the coordinator took the error in (it used to fail trial 0 at once)."""
    url = f"sqlite:///{tmp_path}/s.db"

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 1:
            raise ValueError("trial 1 fails")
        deadline = time.monotonic() + 120
        while trial.number == 0 and time.monotonic() < deadline:
            trials = optuna.load_study(study_name="s", storage=url).trials
            if len(trials) > 1 and trials[1].state == TrialState.FAIL:
                break
            time.sleep(0.05)
        return 1.0

    study = optuna.create_study(study_name="s", storage=url)
    caplog.set_level(logging.INFO, logger="optuna")  # Optuna's default; a test may lower it
    with pytest.raises(ValueError, match="trial 1 fails"):
        tunefleet.optimize(study, objective, n_trials=10, n_workers=2)
    stored = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in stored] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "Trial 1 raised: stopping once 1 running trial(s) end" in caplog.text
