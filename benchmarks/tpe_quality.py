"""Optimisation quality of tunefleet's TPE against Optuna's (issue 14): best value after 200 and
1000 trials on standard functions, 20 seeds, mean and spread, as a markdown table.

Both samplers get the same seed for a run (a paired comparison). tunefleet's sampler is meant to
propose exactly what Optuna's does, so paired runs should end identically; the table says how many
pairs did (same parameters in every trial), next to the means and standard deviations. Runs of 200 trials
come first, then runs of 1000 seed by seed; results are appended to --out as they finish, and
a second call resumes, so an interrupted run still gives a table (with the seeds it covered).

    python benchmarks/tpe_quality.py                       # 3 functions, 20 seeds, 200 and 1000
    python benchmarks/tpe_quality.py --quick               # 2 seeds, 200 trials
    python benchmarks/tpe_quality.py --jobs 2 --out runs.jsonl --table-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def one_run(function: str, sampler: str, seed: int, n_trials: int) -> dict:
    """Best value after every trial of one seeded run, and the run's wall time."""
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    f, dim, low, high, _ = FUNCTIONS[function]

    def objective(trial: optuna.Trial) -> float:
        return f(np.array([trial.suggest_float(f"x{i}", low, high) for i in range(dim)]))

    study = optuna.create_study(sampler=SAMPLERS[sampler](seed=seed))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    wall = time.perf_counter() - t0
    return {"function": function, "sampler": sampler, "seed": seed, "n_trials": n_trials,
            "wall_s": wall, "best": np.minimum.accumulate([t.value for t in study.trials]).tolist(),
            "digests": {str(c): _digest(study.trials[:c]) for c in {200, n_trials} if c <= n_trials}}


def _digest(trials: list[optuna.trial.FrozenTrial]) -> str:
    """A fingerprint of the parameters proposed, to tell identical runs apart."""
    return hashlib.sha1(json.dumps([t.params for t in trials]).encode()).hexdigest()


def table(results: list[dict], checkpoints: list[int]) -> str:
    """Mean ± sd of the best value at each checkpoint, over the seeds both samplers ran."""
    rows = ["| function (optimum) | trials | seeds | Optuna TPE mean ± sd | tunefleet TPE mean ± sd "
            "| paired runs identical | s/run Optuna | s/run tunefleet |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for function in FUNCTIONS:
        for c in checkpoints:
            runs = {(r["sampler"], r["seed"]): r  # the shortest run that reaches c
                    for r in sorted(results, key=lambda r: -r["n_trials"])
                    if r["function"] == function and r["n_trials"] >= c}
            seeds = sorted(s for (sm, s) in runs if sm == "optuna" and ("tunefleet", s) in runs)
            if not seeds:
                continue
            cells = []
            for sampler in SAMPLERS:
                v = [runs[sampler, s]["best"][c - 1] for s in seeds]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                cells.append(f"{statistics.mean(v):.4g} ± {sd:.3g}")
            same = sum(runs["optuna", s]["digests"].get(str(c)) is not None and
                       runs["optuna", s]["digests"].get(str(c))
                       == runs["tunefleet", s]["digests"].get(str(c)) for s in seeds)
            walls = [statistics.mean(runs[sampler, s]["wall_s"] for s in seeds
                                     if runs[sampler, s]["n_trials"] == c) if any(
                runs[sampler, s]["n_trials"] == c for s in seeds) else float("nan")
                for sampler in SAMPLERS]
            rows.append(f"| {function} ({FUNCTIONS[function][4]:.5g}) | {c} | {len(seeds)} | "
                        f"{cells[0]} | {cells[1]} | {same}/{len(seeds)} | {walls[0]:.1f} | "
                        f"{walls[1]:.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 200 trials")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, nargs="*", default=[200, 1000],
                        help="run lengths (each also a checkpoint of the table)")
    parser.add_argument("--functions", nargs="*", default=list(FUNCTIONS), choices=FUNCTIONS)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--out", default="tpe_quality.jsonl",
                        help="results, one run a line; runs already there are not run again")
    parser.add_argument("--table-only", action="store_true", help="print the table and exit")
    args = parser.parse_args()
    seeds = list(range(2 if args.quick else args.seeds))
    lengths = [200] if args.quick else sorted(args.trials)

    results: list[dict] = []
    if os.path.exists(args.out):
        with open(args.out) as fh:
            results = [json.loads(line) for line in fh if line.strip()]
    done = {(r["function"], r["sampler"], r["seed"], r["n_trials"]) for r in results}
    # Short runs first, then seed by seed across functions: whatever finishes is a usable table.
    jobs = [(fn, sampler, seed, n) for n in lengths for seed in seeds for fn in args.functions
            for sampler in SAMPLERS if (fn, sampler, seed, n) not in done]
    t0 = time.perf_counter()
    if jobs and not args.table_only:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool, open(args.out, "a") as fh:
            for result in pool.map(one_run, *zip(*jobs)):
                results.append(result)
                fh.write(json.dumps(result) + "\n")
                fh.flush()
        print(f"{len(jobs)} runs in {time.perf_counter() - t0:.0f} s, {args.jobs} job(s)")
    print(table(results, lengths))


if __name__ == "__main__":
    main()
