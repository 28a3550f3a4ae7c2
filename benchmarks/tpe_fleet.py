"""A sampler-bound fleet: TPE, an objective sleeping 100 ms, many workers, thousands of trials.

    python benchmarks/tpe_fleet.py                 # 32 workers x 3000 trials (a few minutes)
    python benchmarks/tpe_fleet.py --quick         # 16 workers x 1000 trials

Efficiency = ideal time (trials x 0.1 s / workers) / wall time, counted from the first trial's
start to the last one's end (and, second figure, counting start-up), for:
tunefleet's hub with tunefleet's TPE (values drawn ahead, off the message path), the hub with
Optuna's TPE, and N plain Optuna processes with Optuna's TPE on one journal file. Every study is
on a journal file, so all three are durable.
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


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    y = trial.suggest_float("y", -5, 5)
    time.sleep(0.1)
    return (x - 1) ** 2 + (y + 2) ** 2


def journal(path: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return optuna.storages.JournalStorage(JournalFileBackend(path,
                                                             lock_obj=JournalFileOpenLock(path)))


def efficiency(study: optuna.Study, wall: float, n_workers: int) -> tuple[float, float]:
    trials = [t for t in study.trials if t.datetime_complete is not None]
    ideal = len(trials) * 0.1 / n_workers
    span = (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()
    return ideal / span, ideal / wall


def hub(path: str, n_trials: int, n_workers: int, fast: bool) -> tuple[float, float, float]:
    import tunefleet
    from tunefleet.samplers import TPESampler

    sampler = TPESampler(seed=0) if fast else optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(storage=journal(path), sampler=sampler, study_name="fleet")
    start = time.perf_counter()
    tunefleet.optimize(study, objective, n_trials=n_trials, n_workers=n_workers)
    wall = time.perf_counter() - start
    return (*efficiency(study, wall, n_workers), study.best_value)


def worker(path: str, n: int) -> None:
    study = optuna.load_study(study_name="fleet", storage=journal(path),
                              sampler=optuna.samplers.TPESampler(seed=os.getpid()))
    study.optimize(objective, n_trials=n)


def processes(path: str, n_trials: int, n_workers: int) -> tuple[float, float, float]:
    optuna.create_study(storage=journal(path), study_name="fleet")
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", path,
                               str(n_trials // n_workers)]) for _ in range(n_workers)]
    for p in procs:
        p.wait()
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name="fleet", storage=journal(path))
    return (*efficiency(study, wall, n_workers), study.best_value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", nargs=2)
    ap.add_argument("--skip-optuna", action="store_true", help="only the hub rows")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    workers, trials = (16, 1000) if args.quick else (32, 3000)
    tmp = tempfile.mkdtemp()
    print(f"TPE, objective sleeping 100 ms, {workers} workers x {trials} trials, journal file; "
          f"efficiency from the first trial / counting start-up ({os.cpu_count()} CPUs)")
    rows = [("tunefleet hub, tunefleet TPE", lambda: hub(f"{tmp}/a.log", trials, workers, True)),
            ("tunefleet hub, Optuna TPE", lambda: hub(f"{tmp}/b.log", trials, workers, False))]
    if not args.skip_optuna:
        rows.append((f"{workers} Optuna processes, Optuna TPE",
                     lambda: processes(f"{tmp}/c.log", trials, workers)))
    for label, run in rows:
        first, overall, best = run()
        print(f"  {label:40s} {first:.2f} / {overall:.2f}   best {best:.4f}", flush=True)


if __name__ == "__main__":
    main()
