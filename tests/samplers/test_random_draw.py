"""The hub's draw for Optuna's RandomSampler keeps one search-space transform per parameter
instead of one per call: it must give exactly RandomSampler's values, from the same state."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import tunefleet
from tunefleet.samplers import random_draw

SPACE = {"f": FloatDistribution(-3, 5), "log": FloatDistribution(1e-5, 1, log=True),
         "step": FloatDistribution(0, 1, step=0.1), "i": IntDistribution(-4, 9),
         "ilog": IntDistribution(1, 1000, log=True), "istep": IntDistribution(0, 18, step=3),
         "c": CategoricalDistribution(["a", "b", None, 3.5]),
         "b": CategoricalDistribution([True, False])}


def test_the_draw_gives_random_samplers_values_from_the_same_state():
    ours, theirs = optuna.samplers.RandomSampler(seed=7), optuna.samplers.RandomSampler(seed=7)
    draw = random_draw(ours)
    study = optuna.create_study()
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING)
    for _ in range(50):
        for name, dist in SPACE.items():
            assert draw(name, dist) == theirs.sample_independent(study, trial, name, dist)
    # A parameter whose distribution changes gets a transform of its own.
    wider = FloatDistribution(-30, 50)
    assert draw("f", wider) == theirs.sample_independent(study, trial, "f", wider)


def test_only_optunas_own_random_sampler_gets_it():
    class Mine(optuna.samplers.RandomSampler):
        pass

    assert random_draw(optuna.samplers.RandomSampler()) is not None
    assert random_draw(Mine()) is None and random_draw(optuna.samplers.TPESampler()) is None


def test_a_seeded_random_study_on_one_worker_draws_what_study_optimize_draws():
    """One worker: the hub asks, draws and tells in Optuna's order, so the values are those
    of plain ``study.optimize`` with the same seeded sampler (from the second trial on, the
    coordinator draws them ahead with the draw above)."""
    def objective(trial: optuna.Trial) -> float:
        for name, dist in SPACE.items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, FloatDistribution):
                trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
        return 0.0

    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    plain.optimize(objective, n_trials=12)
    hub = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    tunefleet.optimize(hub, objective, n_trials=12, n_workers=1)
    assert [t.params for t in hub.trials] == [t.params for t in plain.trials]
