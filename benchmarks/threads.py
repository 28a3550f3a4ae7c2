"""OpenMP/BLAS threads per worker: LightGBM and a small PyTorch model on bundled data (scikit-
learn's breast cancer and digits sets), plain ``study.optimize`` beside 4 tunefleet workers,
with and without the per-worker thread limit.

    python benchmarks/threads.py            # 24 trials per configuration
    python benchmarks/threads.py --quick    # 8 trials
    python benchmarks/threads.py --json out.json

Each configuration runs in a fresh interpreter, so that no pool of one leaks into the next:

* ``plain``: ``study.optimize`` in one process, one trial at a time, every pool as wide as the
  machine (what a user starts from);
* ``tunefleet, no limit``: 4 workers with ``threads_per_worker=0`` (the behaviour before the
  limit: each worker's pools as wide as the machine, N workers oversubscribe it N times);
* ``tunefleet, limit``: 4 workers with the default limit (CPUs / workers threads each).

Figures are wall seconds for the whole run; the machine's CPU count is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

OBJECTIVES = textwrap.dedent('''
    def lightgbm_objective(trial):
        import lightgbm as lgb
        from sklearn.datasets import load_breast_cancer
        x, y = load_breast_cancer(return_X_y=True)
        params = {"objective": "binary", "verbosity": -1,
                  "num_leaves": trial.suggest_int("num_leaves", 8, 64),
                  "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True)}
        booster = lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=150)
        return float(((booster.predict(x) > 0.5) != y).mean())

    def torch_objective(trial):
        import torch
        from sklearn.datasets import load_digits
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16, dtype=torch.float32)
        y = torch.tensor(y)
        hidden = trial.suggest_int("hidden", 64, 256)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(hidden, 10))
        opt = torch.optim.Adam(model.parameters(),
                               lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True))
        for _ in range(60):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return float(loss)
''')

RUN = textwrap.dedent('''
    import sys, time, optuna, tunefleet
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    {objectives}
    objective = {name}_objective
    mode, n_trials = sys.argv[1], int(sys.argv[2])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    started = time.perf_counter()
    if mode == "plain":
        study.optimize(objective, n_trials=n_trials)
    else:
        threads = 0 if mode == "nolimit" else None
        tunefleet.optimize(study, objective, n_trials=n_trials, n_workers=4,
                           threads_per_worker=threads)
    print(time.perf_counter() - started, sum(t.state.name == "COMPLETE" for t in study.trials))
''')

MODES = {"plain": "plain study.optimize", "nolimit": "tunefleet, 4 workers, no limit",
         "limit": "tunefleet, 4 workers, limit"}


def run(name: str, mode: str, n_trials: int) -> float:
    script = RUN.format(objectives=OBJECTIVES, name=name)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script, mode, str(n_trials)], env=env,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"{name} {mode} failed:\n{out.stderr[-3000:]}")
    seconds, complete = out.stdout.split()
    assert int(complete) == n_trials, out.stdout
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 trials per configuration")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    n_trials = args.trials or (8 if args.quick else 24)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{n_trials} trials per configuration, {cpus} CPUs, load {os.getloadavg()[0]:.1f}")
    results: dict[str, dict[str, float]] = {}
    for name in ("lightgbm", "torch"):
        results[name] = {}
        for mode, label in MODES.items():
            seconds = run(name, mode, n_trials)
            results[name][mode] = seconds
            print(f"{name:9} {label:32} {seconds:8.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n_trials": n_trials, "cpus": cpus, "seconds": results,
                       "when": time.strftime("%Y-%m-%d %H:%M")}, f, indent=1)


if __name__ == "__main__":
    main()
