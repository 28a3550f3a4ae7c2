"""Optimisation quality of tunefleet's TPE against Optuna's (issue 14): best value after 200 and
1000 trials on standard functions, 20 seeds, mean and spread, as a markdown table.

Both samplers get the same seed for a run (a paired comparison). tunefleet's sampler is meant to
propose exactly what Optuna's does, so paired runs should end identically; the table says how many
pairs did, next to the means and standard deviations.

    python benchmarks/tpe_quality.py                       # 3 functions, 20 seeds, 1000 trials
    python benchmarks/tpe_quality.py --quick               # 2 seeds, 200 trials
    python benchmarks/tpe_quality.py --jobs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import optuna

from tunefleet.samplers import TPESampler

# Hartmann-6 constants (Surjanovic & Bingham, Virtual Library of Simulation Experiments).
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
                  [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_H6_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])


def rosenbrock(x: np.ndarray) -> float:
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def hartmann6(x: np.ndarray) -> float:
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


def styblinski_tang(x: np.ndarray) -> float:
    return float(0.5 * np.sum(x**4 - 16 * x**2 + 5 * x))


# name: (function, dimension, low, high, global minimum)
FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], float], int, float, float, float]] = {
    "Rosenbrock-4": (rosenbrock, 4, -5.0, 10.0, 0.0),
    "Hartmann-6": (hartmann6, 6, 0.0, 1.0, -3.32237),
    "Styblinski-Tang-4": (styblinski_tang, 4, -5.0, 5.0, -39.16617 * 4),
}
SAMPLERS = {"optuna": optuna.samplers.TPESampler, "tunefleet": TPESampler}


def one_run(function: str, sampler: str, seed: int, n_trials: int,
            checkpoints: tuple[int, ...]) -> dict:
    """Best value at each checkpoint of one seeded run, and the run's wall time."""
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    f, dim, low, high, _ = FUNCTIONS[function]

    def objective(trial: optuna.Trial) -> float:
        return f(np.array([trial.suggest_float(f"x{i}", low, high) for i in range(dim)]))

    study = optuna.create_study(sampler=SAMPLERS[sampler](seed=seed))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    wall = time.perf_counter() - t0
    values = np.minimum.accumulate([t.value for t in study.trials])
    return {"function": function, "sampler": sampler, "seed": seed, "wall_s": wall,
            "best": {str(c): float(values[c - 1]) for c in checkpoints},
            "params": [t.params for t in study.trials]}


def table(results: list[dict], seeds: list[int], checkpoints: tuple[int, ...]) -> str:
    rows = ["| function (optimum) | trials | Optuna TPE mean ± sd | tunefleet TPE mean ± sd "
            "| paired seeds identical | s/run Optuna | s/run tunefleet |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    by = {(r["function"], r["sampler"], r["seed"]): r for r in results}
    for function in FUNCTIONS:
        if not any(k[0] == function for k in by):
            continue
        for c in checkpoints:
            cells = []
            for sampler in SAMPLERS:
                v = [by[function, sampler, s]["best"][str(c)] for s in seeds]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{statistics.mean(v):.4g} ± {sd:.3g}")
            same = sum(by[function, "optuna", s]["params"][:c]
                       == by[function, "tunefleet", s]["params"][:c] for s in seeds)
            walls = [statistics.mean(by[function, sampler, s]["wall_s"] for s in seeds)
                     for sampler in SAMPLERS]
            wall_cells = [f"{w:.1f}" for w in walls] if c == checkpoints[-1] else ["", ""]
            rows.append(f"| {function} ({FUNCTIONS[function][4]:.5g}) | {c} | {cells[0]} | {cells[1]} | {same}/{len(seeds)} | "
                        f"{wall_cells[0]} | {wall_cells[1]} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 200 trials")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--functions", nargs="*", default=list(FUNCTIONS), choices=FUNCTIONS)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--json", help="also write every run's results here")
    args = parser.parse_args()
    seeds = list(range(2 if args.quick else args.seeds))
    n_trials = 200 if args.quick else args.trials
    checkpoints = tuple(c for c in (200, 1000) if c <= n_trials) or (n_trials,)

    jobs = [(fn, sampler, seed, n_trials, checkpoints)
            for fn in args.functions for seed in seeds for sampler in SAMPLERS]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one_run, *zip(*jobs)))
    print(f"{len(seeds)} seeds, {n_trials} trials per run, {len(jobs)} runs, "
          f"{time.perf_counter() - t0:.0f} s in all, {args.jobs} job(s)")
    print(table(results, seeds, checkpoints))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([{k: v for k, v in r.items() if k != "params"} for r in results], fh,
                      indent=1)


if __name__ == "__main__":
    main()
