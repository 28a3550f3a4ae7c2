"""What ``--deterministic`` costs: a seeded TPE hub run with and without it, 4 workers,
trials whose times vary (exponential, mean 0.1 s, drawn from the trial number so both runs
see the same times). Efficiency = the trials' summed run time / (workers x wall time).

    python benchmarks/deterministic.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import time

import optuna

import tunefleet

optuna.logging.set_verbosity(optuna.logging.ERROR)
MEAN = 0.1


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_float("y", -10, 10)
    time.sleep(random.Random(trial.number).expovariate(1 / MEAN))
    return (x - 2) ** 2 + (y + 1) ** 2


def one(n_trials: int, workers: int, deterministic: bool) -> tuple[float, float, float]:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(n_startup_trials=10))
    start = time.perf_counter()
    tunefleet.optimize(study, objective, n_trials=n_trials, n_workers=workers, seed=1,
                       deterministic=deterministic)
    wall = time.perf_counter() - start
    busy = sum(random.Random(t.number).expovariate(1 / MEAN) for t in study.trials)
    return wall, busy / (workers * wall), study.best_value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_trials = 80 if args.quick else 300
    workers = 4
    print(f"TPE, {workers} workers, {n_trials} trials, trial time ~ Exp(mean {MEAN} s)")
    print("| mode | wall | efficiency | best value |")
    print("|---|---|---|---|")
    for deterministic in (False, True):
        wall, eff, best = one(n_trials, workers, deterministic)
        name = "--deterministic" if deterministic else "default"
        print(f"| {name} | {wall:.1f} s | {eff:.0%} | {best:.4g} |")


if __name__ == "__main__":
    main()
