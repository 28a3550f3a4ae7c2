"""How many trials a stopped study ends with: tunefleet's hub against Optuna's ``n_jobs``.

    python benchmarks/stop_like_optuna.py                  # 10 runs of each, both stops
    python benchmarks/stop_like_optuna.py --runs 3 --only max-trials
    python benchmarks/stop_like_optuna.py --storage journal

4 workers, ``n_trials=100``, an objective that sleeps 75 ms (so workers overlap as in real
use), two ways of stopping:

- ``MaxTrialsCallback(10)`` (counting COMPLETE trials, Optuna's default);
- ``study.stop()`` called from the objective of trial 4.

Each run is on a fresh study in a storage of its own in a temporary folder: tunefleet's hub
(``tunefleet.optimize(..., n_workers=4)``) and Optuna's ``study.optimize(..., n_jobs=4)``
take turns, run by run, so both see the same load. For each it prints the sorted trial counts
(every trial in the storage, in any state: ``len(study.trials)``) and their min / median / max.
No pass/fail (tests/hub/test_stop.py checks the bounds): a benchmark.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback

import tunefleet

optuna.logging.set_verbosity(optuna.logging.ERROR)
WORKERS = 4
N_TRIALS = 100
SLEEP = 0.075


def sleepy(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    time.sleep(SLEEP)
    return x * x


def stops_at_4(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    time.sleep(SLEEP)
    if trial.number == 4:
        trial.study.stop()
    return x * x


SCENARIOS = {
    # name: (objective, callbacks for one run, label)
    "max-trials": (sleepy, lambda: [MaxTrialsCallback(10)], "MaxTrialsCallback(10)"),
    "stop": (stops_at_4, list, "study.stop() in the objective of trial 4"),
}


def storage(kind: str, folder: Path, name: str):
    if kind == "sqlite":
        return f"sqlite:///{folder / name}.db"
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(folder / f"{name}.log")
    return optuna.storages.JournalStorage(JournalFileBackend(path,
                                                             lock_obj=JournalFileOpenLock(path)))


def one(kind: str, who: str, objective, callbacks) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=storage(kind, Path(tmp), who))
        start = time.perf_counter()
        if who == "tunefleet":
            tunefleet.optimize(study, objective, n_trials=N_TRIALS, n_workers=WORKERS,
                               callbacks=callbacks())
        else:
            study.optimize(objective, n_trials=N_TRIALS, n_jobs=WORKERS, callbacks=callbacks())
        seconds = time.perf_counter() - start
        return len(study.trials), seconds


def scenario(name: str, runs: int, kind: str) -> None:
    objective, callbacks, label = SCENARIOS[name]
    counts: dict[str, list[int]] = {"tunefleet": [], "optuna": []}
    seconds: dict[str, float] = {"tunefleet": 0.0, "optuna": 0.0}
    for i in range(runs):
        for who in counts:
            n, s = one(kind, who, objective, callbacks)
            counts[who].append(n)
            seconds[who] += s
        print(f"  run {i + 1}/{runs}: tunefleet {counts['tunefleet'][-1]}, "
              f"optuna {counts['optuna'][-1]}", flush=True)
    print(f"\n{label}, {WORKERS} workers, {runs} runs each, {kind}, objective {SLEEP * 1000:.0f} ms")
    print("| | trial counts (sorted) | min | median | max | s/run |")
    print("|---|---|---:|---:|---:|---:|")
    for who, title in (("tunefleet", f"tunefleet hub, {WORKERS} workers"),
                       ("optuna", f"Optuna `n_jobs={WORKERS}`")):
        c = sorted(counts[who])
        print(f"| {title} | {', '.join(map(str, c))} | {c[0]} | {statistics.median(c):g} | "
              f"{c[-1]} | {seconds[who] / runs:.2f} |")
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="runs of each (default 10)")
    ap.add_argument("--storage", choices=("sqlite", "journal"), default="sqlite",
                    help="the kind of storage each run gets a fresh one of (default sqlite)")
    ap.add_argument("--only", choices=tuple(SCENARIOS), help="one way of stopping only")
    args = ap.parse_args()
    start = time.perf_counter()
    for name in ([args.only] if args.only else SCENARIOS):
        print(f"{SCENARIOS[name][2]}:", flush=True)
        scenario(name, args.runs, args.storage)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
