"""Objectives the joblib tests run in joblib workers (shipped by value: they cannot import
the tests package)."""

import os
import time

import optuna


def where(trial: optuna.Trial) -> float:
    """Records the process it ran in; sleeps a little so that both workers take trials."""
    x = trial.suggest_float("x", -5, 5)
    trial.set_user_attr("pid", os.getpid())
    time.sleep(0.3)
    return x * x


def dies_once(marker: str):
    """An objective whose process dies once (as on an out-of-memory kill), at the first trial
    that finds no MARKER file; every other trial completes."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        if trial.number >= 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(9)
        time.sleep(0.1)
        return x * x

    return objective
