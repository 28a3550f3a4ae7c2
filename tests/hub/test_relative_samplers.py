"""Relative samplers (CMA-ES, multivariate TPE) draw in the hub exactly what study.optimize
draws: no parameter is drawn ahead, independently, for a trial that never asks for it."""

from __future__ import annotations

import io
import logging
import warnings

import optuna
import pytest

import tunefleet

pytestmark = pytest.mark.timeout(300)


def conditional(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    if x > 0:
        return x * x + trial.suggest_float("y", -5, 5)
    return x * x


def independent_warnings(run) -> int:
    """How often Optuna warned that a parameter was sampled independently (Optuna 4.x's
    CMA-ES says it once, as "is used instead of `CmaEsSampler`", for a 1-d relative space)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = optuna.logging.get_logger("optuna")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()
    finally:
        logger.removeHandler(handler)
    text = buf.getvalue()
    return text.count("sampled independently") + text.count("is used instead of")


@pytest.mark.parametrize("make", [
    lambda: optuna.samplers.CmaEsSampler(seed=0),
    lambda: optuna.samplers.TPESampler(seed=0, multivariate=True,
                                       warn_independent_sampling=True),
], ids=["cmaes", "multivariate-tpe"])
def test_the_hub_draws_no_parameter_a_trial_does_not_ask_for(make):
    plain = optuna.create_study(sampler=make())
    hub = optuna.create_study(sampler=make())
    want = independent_warnings(lambda: plain.optimize(conditional, n_trials=40))
    got = independent_warnings(lambda: tunefleet.optimize(hub, conditional, n_trials=40,
                                                          n_workers=1))
    assert want > 0  # the objective does make the sampler fall back for "y"
    assert got == want
    assert [t.params for t in hub.trials] == [t.params for t in plain.trials]
