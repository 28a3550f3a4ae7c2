"""Objectives the storage-mode and Slurm tests run in real worker processes."""

import os
import time

import optuna


def slow(trial: optuna.Trial) -> float:
    """Sleeps TF_SLEEP seconds (default 0.2) so that trials overlap and a worker can be killed
    in the middle of one."""
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 3)
    time.sleep(float(os.environ.get("TF_SLEEP", "0.2")))
    return x * x + y


def flaky(trial: optuna.Trial) -> float:
    """Raises on every third trial number."""
    x = trial.suggest_float("x", -10, 10)
    if trial.number % 3 == 0:
        raise RuntimeError(f"boom on trial {trial.number}")
    return x * x


def pruned_sometimes(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    if trial.number % 4 == 1:
        raise optuna.TrialPruned()
    return x * x
