"""Objectives the CLI tests run in real worker processes."""

import os

import optuna


def mixed(trial: optuna.Trial) -> float:
    """A float and a categorical parameter, as in a first script."""
    x = trial.suggest_float("x", -5, 5)
    opt = trial.suggest_categorical("opt", ["adam", "sgd"])
    return x * x + (opt == "sgd")


def discrete(trial: optuna.Trial) -> float:
    """A finite space (3 x 2 points) that BruteForceSampler can enumerate."""
    x = trial.suggest_int("x", -1, 1)
    opt = trial.suggest_categorical("opt", ["adam", "sgd"])
    return x * x + (opt == "sgd")


def records_gpu(trial: optuna.Trial) -> float:
    """Records the CUDA_VISIBLE_DEVICES its worker was given."""
    trial.set_user_attr("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"))
    return trial.suggest_float("x", 0, 1)
