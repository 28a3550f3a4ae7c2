"""Objectives for the durable-hub tests, loaded by ``tunefleet run tests/hub/durable_objectives.py:NAME``."""

from __future__ import annotations

import os
import random
import time

import optuna


def fast(trial: optuna.Trial) -> float:
    """A few milliseconds, so that hundreds of trials end each second across the workers."""
    x = trial.suggest_float("x", -10, 10)
    n = trial.suggest_int("n", 0, 3)
    time.sleep(random.uniform(0.001, 0.004))
    return x * x + n


def slow(trial: optuna.Trial) -> float:
    """Long enough that a signal always finds trials running."""
    x = trial.suggest_float("x", -10, 10)
    time.sleep(0.3)
    return x * x


def endless(trial: optuna.Trial) -> float:
    """Never ends by itself within a test: only the coordinator can close it."""
    trial.suggest_float("x", -10, 10)
    time.sleep(3600)
    return 0.0


def rich(trial: optuna.Trial) -> float:
    """Every kind of record a trial can hold: params of each distribution, reports, attributes,
    a pruned and a failed outcome."""
    x = trial.suggest_float("x", -10, 10)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 8, step=1)
    kind = trial.suggest_categorical("kind", ["a", "b", None])
    trial.suggest_float("q", 0, 1, step=0.25)
    trial.set_user_attr("label", f"{kind}-{n}")
    trial.set_user_attr("nested", {"lr": lr, "list": [1, 2]})
    for step in range(3):
        trial.report(x * x + step, step)
    if n == 8:
        raise optuna.TrialPruned()
    if n == 7 and kind is None:
        raise ValueError("failed on purpose")
    return x * x + n + lr


def gated(trial: optuna.Trial) -> float:
    """Runs until the test creates the file $TF_GATE: a run that owns the study outlasts
    another one however slow the machine is."""
    x = trial.suggest_float("x", -1, 1)
    while not os.path.exists(os.environ["TF_GATE"]):
        time.sleep(0.05)
    return x * x


def steady(trial: optuna.Trial) -> float:
    """A second each: a database restarted mid-run always finds trials running."""
    x = trial.suggest_float("x", -10, 10)
    time.sleep(1.0)
    trial.report(x, 0)
    return x * x
