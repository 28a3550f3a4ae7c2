"""Hub mode against Optuna's own ways of using several workers, side by side in one run.

    python benchmarks/hub_vs_optuna.py            # the full run (a few minutes on 2 cores)
    python benchmarks/hub_vs_optuna.py --quick    # fewer trials

Throughput: trivial objective (the quadratic), 4 workers, trials per second including start-up,
for RandomSampler and TPESampler: tunefleet's hub (in memory, and on a SQLite file), Optuna's
threads (``n_jobs=4``), 4 processes on one SQLite file, 4 processes on one journal file, and one
process alone. Efficiency: an objective that sleeps 50 ms, 16 workers, 320 trials: ideal time /
wall time, counted from the first trial and counting worker start-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quadratic(trial):
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y


def sleepy(trial):
    x = trial.suggest_float("x", -100, 100)
    time.sleep(0.05)
    return x**2


def sampler(name: str, seed: int = 0):
    return optuna.samplers.RandomSampler(seed=seed) if name == "random" else \
        optuna.samplers.TPESampler(seed=seed)


def storage_for(url: str):
    if url.endswith(".log"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    return url


def worker_main(url: str, study_name: str, n: int, sampler_name: str, objective: str) -> None:
    """One plain Optuna worker process, as users start them on a shared storage."""
    study = optuna.load_study(study_name=study_name, storage=storage_for(url),
                              sampler=sampler(sampler_name, seed=os.getpid()))
    study.optimize(quadratic if objective == "quadratic" else sleepy, n_trials=n)


def optuna_processes(url: str, n_trials: int, n_workers: int, sampler_name: str,
                     objective: str = "quadratic") -> tuple[float, optuna.Study]:
    name = f"bench-{time.time_ns()}"
    optuna.create_study(study_name=name, storage=storage_for(url))
    per = n_trials // n_workers
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, name, str(per),
                               sampler_name, objective]) for _ in range(n_workers)]
    for p in procs:
        p.wait()
    wall = time.perf_counter() - start
    return wall, optuna.load_study(study_name=name, storage=storage_for(url))


def hub(n_trials: int, n_workers: int, sampler_name: str, objective=quadratic,
        storage: str | None = None) -> tuple[float, optuna.Study]:
    import tunefleet

    study = optuna.create_study(sampler=sampler(sampler_name), storage=storage,
                                study_name=f"bench-{time.time_ns()}")
    start = time.perf_counter()
    tunefleet.optimize(study, objective, n_trials=n_trials, n_workers=n_workers)
    return time.perf_counter() - start, study


def threads(n_trials: int, n_jobs: int, sampler_name: str) -> float:
    study = optuna.create_study(sampler=sampler(sampler_name))
    start = time.perf_counter()
    study.optimize(quadratic, n_trials=n_trials, n_jobs=n_jobs)
    return time.perf_counter() - start


def efficiency(study: optuna.Study, wall: float, n_workers: int, seconds: float) -> tuple:
    trials = study.trials
    ideal = len(trials) * seconds / n_workers
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    return ideal / (last - first).total_seconds(), ideal / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=5)
    args = ap.parse_args()
    if args.worker:
        url, name, n, s, obj = args.worker
        worker_main(url, name, int(n), s, obj)
        return
    n = 400 if args.quick else 1000
    tmp = tempfile.mkdtemp()
    print(f"trivial objective, {n} trials, 4 workers, trials/s including start-up "
          f"({os.cpu_count()} CPUs, optuna {optuna.__version__})")
    for s in ("random", "tpe"):
        rows = {}
        wall, _ = hub(n, 4, s)
        rows["tunefleet hub (in memory)"] = n / wall
        wall, _ = hub(n, 4, s, storage=f"sqlite:///{tmp}/hub-{s}.db")
        rows["tunefleet hub (SQLite file)"] = n / wall
        rows["optuna threads n_jobs=4"] = n / threads(n, 4, s)
        wall, _ = optuna_processes(f"sqlite:///{tmp}/plain-{s}.db", n, 4, s)
        rows["optuna 4 processes, SQLite"] = n / wall
        wall, _ = optuna_processes(f"{tmp}/plain-{s}.log", n, 4, s)
        rows["optuna 4 processes, journal file"] = n / wall
        rows["optuna 1 process alone"] = n / threads(n, 1, s)
        hub_rate = rows["tunefleet hub (in memory)"]
        print(f"\n{s} sampler")
        for label, rate in rows.items():
            ratio = "" if label.startswith("tunefleet hub (in") else f"  hub is {hub_rate / rate:.2f}x"
            print(f"  {label:36s} {rate:8.1f}{ratio}")

    n_sleep = 160 if args.quick else 320
    print(f"\nobjective sleeping 50 ms, 16 workers, {n_sleep} trials: efficiency "
          "(from the first trial / counting start-up)")
    wall, study = hub(n_sleep, 16, "random", objective=sleepy)
    print("  tunefleet hub            %.2f / %.2f" % efficiency(study, wall, 16, 0.05))
    wall, study = optuna_processes(f"{tmp}/sleepy.log", n_sleep, 16, "random", "sleepy")
    print("  optuna 16 processes, journal file  %.2f / %.2f" % efficiency(study, wall, 16, 0.05))


if __name__ == "__main__":
    main()
