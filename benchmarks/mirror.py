"""``study.optimize`` on a storage as it is, and on the hub's write-behind mirror of it.

    python benchmarks/mirror.py                 # TPE, 300 trials, quadratic objective
    python benchmarks/mirror.py --trials 1000 --sampler random

Trials per second of one ``study.optimize`` (one thread, as the hub's coordinator runs the study)
on: SQLite opened as ``tunefleet run`` opens it (WAL mode), the mirror of that SQLite file, a
journal file, the mirror of that journal file, and memory alone. The mirror's time counts
``close()``, i.e. until the durable storage holds every trial; the time ``optimize`` alone took
and the writes still queued at its end are printed beside it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import optuna

from tunefleet.hub._mirror import mirrored_study
from tunefleet._studies import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y


def make_sampler(name: str) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=0)
    return optuna.samplers.TPESampler(seed=0)


def one(url: str | None, mirror: bool, trials: int, sampler: str) -> str:
    storage = open_storage(url, sqlite_wal=True) if url else optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="bench", storage=storage,
                                sampler=make_sampler(sampler))
    start = time.perf_counter()
    extra = ""
    if mirror:
        study, mirrored = mirrored_study(study)
        assert mirrored is not None
        study.optimize(quadratic, n_trials=trials)
        optimized, queued = time.perf_counter() - start, mirrored.pending
        mirrored.close()
        extra = f"  (optimize alone {trials / optimized:7.1f}/s, {queued} writes queued)"
    else:
        study.optimize(quadratic, n_trials=trials)
    wall = time.perf_counter() - start
    if url:  # what the durable storage holds, read back afresh
        check = optuna.load_study(study_name="bench", storage=open_storage(url))
        assert len(check.trials) == trials, len(check.trials)
    return f"{trials / wall:8.1f} trials/s  {wall:6.2f} s{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    args = parser.parse_args()
    print(f"{args.sampler}, {args.trials} trials, one thread, quadratic objective")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("sqlite (WAL)", f"sqlite:///{tmp}/plain.db", False),
                 ("sqlite (WAL), mirrored", f"sqlite:///{tmp}/mirrored.db", True),
                 ("journal file", f"journal:///{tmp}/plain.log", False),
                 ("journal file, mirrored", f"journal:///{tmp}/mirrored.log", True),
                 ("in memory", None, False)]
        for label, url, mirror in cases:
            print(f"{label:24s} {one(url, mirror, args.trials, args.sampler)}", flush=True)
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))


if __name__ == "__main__":
    main()
