"""Objectives the swarm tests run in peer processes."""

import time

import optuna


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y


def slow(trial: optuna.Trial) -> float:
    """The quadratic, a tenth of a second per trial: a peer that is still busy."""
    time.sleep(0.1)
    return quadratic(trial)


def worse(trial: optuna.Trial) -> float:
    """Never beats a quadratic trial: whatever best such a peer ends with was received."""
    return quadratic(trial) + 1_000_000.0


class Shifted:
    """An objective object, as in the seed document."""

    def __init__(self, offset: float = 3.0) -> None:
        self.offset = offset

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -100, 100)
        y = trial.suggest_int("y", -1, 1)
        return (x - self.offset) ** 2 + y


def slow_worse(trial: optuna.Trial) -> float:
    """A busy peer whose own trials never beat a quadratic one."""
    time.sleep(0.1)
    return worse(trial)
