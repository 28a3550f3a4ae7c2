"""The quadratic hello world: minimize x**2 + y with x in [-100, 100] and y in {-1, 0, 1}.

    tunefleet run examples/quadratic.py:objective --n-trials 200 --workers 4
    tunefleet run examples/quadratic.py:Quadratic --n-trials 200 --workers 4
"""

import optuna


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y


class Quadratic:
    """The same objective as a class: ``offset`` shifts the minimum of x."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -100, 100)
        y = trial.suggest_int("y", -1, 1)
        return (x - self.offset) ** 2 + y


if __name__ == "__main__":
    import tunefleet

    study = optuna.create_study(direction="minimize")
    tunefleet.optimize(study, Quadratic(offset=3.0), n_trials=200, n_workers=4)
    print(study.best_value, study.best_params)
