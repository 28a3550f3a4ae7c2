"""The durable hub against the hub in memory and against the floor (issue 21.1).

    .venv/bin/python benchmarks/durable_vs_memory.py               # 3 rounds of 2000 trials
    .venv/bin/python benchmarks/durable_vs_memory.py --rounds 5 --trials 4000

Each round runs, each in a fresh interpreter and one after the other: ``tunefleet.optimize``
with 4 local workers on Optuna's InMemoryStorage (*in memory*: nothing survives the process),
the same on a fresh SQLite file (*durable*: counted until the storage holds every trial), and
the floor: Optuna's own loop in one process (``ask``, the two ``suggest`` calls, ``tell``)
with the Random sampler, in memory. Trivial objective, Random sampler; a warm-up run of 200
trials comes first in each hub process. Prints trials/s per round and the ratios durable /
in memory and durable / floor, with their medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def objective(trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -1, 1)
    return (x - 2) ** 2 + y


def hub(kind: str, n: int) -> float:
    import optuna

    import tunefleet

    def once(trials: int) -> float:
        storage = f"sqlite:///{tempfile.mkdtemp()}/s.db" if kind == "sqlite" else None
        study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler())
        started = time.perf_counter()
        tunefleet.optimize(study, objective, n_trials=trials, n_workers=4)
        return trials / (time.perf_counter() - started)

    once(200)  # warm-up: the imports and the first fork are not what is measured
    return once(n)


def floor(n: int) -> float:
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler())
    started = time.perf_counter()
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, objective(trial))
    return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # KIND N: one measurement
    args = ap.parse_args()
    if args.one:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        kind, n = args.one[0], int(args.one[1])
        print(floor(n) if kind == "floor" else hub(kind, n))
        return

    def measure(kind: str) -> float:
        out = subprocess.run([sys.executable, __file__, "--one", kind, str(args.trials)],
                             check=True, capture_output=True, text=True).stdout
        return float(out.split()[-1])

    ratios: dict[str, list[float]] = {"durable / in memory": [], "durable / floor": []}
    print(f"{args.trials} trivial Random trials, 4 workers; trials/s")
    print(f"{'round':>5} {'in memory':>10} {'durable SQLite':>15} {'floor':>8}")
    for r in range(args.rounds):
        memory, durable, low = measure("memory"), measure("sqlite"), measure("floor")
        ratios["durable / in memory"].append(durable / memory)
        ratios["durable / floor"].append(durable / low)
        print(f"{r + 1:>5} {memory:>10.0f} {durable:>15.0f} {low:>8.0f}")
    for name, values in ratios.items():
        print(f"{name}: median {statistics.median(values):.2f} "
              f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
