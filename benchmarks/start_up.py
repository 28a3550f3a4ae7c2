"""What a run costs before and around its trials (issue 21.2): the import of tunefleet and of
the command line, one trial on a fresh SQLite file against a fresh journal file, and 1000
trivial trials counted from the process launch against one plain in-memory Optuna process.

    .venv/bin/python benchmarks/start_up.py            # 5 rounds, interleaved
    .venv/bin/python benchmarks/start_up.py --rounds 3 --skip-1000

Every figure is the wall time of a fresh process, from its launch to its exit; the medians of
the rounds are printed, with the range. A fresh SQLite file starts from the tables' template
kept in ~/.cache/tunefleet once one was made on the machine (tunefleet._studies).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The objective of every case, written as obj.py into each case's fresh folder: trivial, so
#: that what is measured is everything but the objective.
OBJ = """
def f(trial):
    return trial.suggest_float("x", -10, 10) ** 2 + trial.suggest_int("y", -1, 1)
"""
PLAIN_1000 = """
import optuna
from optuna.samplers import RandomSampler
from obj import f
optuna.logging.set_verbosity(optuna.logging.WARNING)
optuna.create_study(sampler=RandomSampler()).optimize(f, n_trials=1000)
"""


def wall(cmd: list[str], cwd: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def run(storage: str, n: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "tunefleet", "run", "obj.py:f", "--n-trials", str(n),
            "--workers", str(workers), "--storage", storage, "--sampler", "random",
            "--no-progress"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-1000", action="store_true")
    args = parser.parse_args()
    cases = {
        "import tunefleet": lambda d: [sys.executable, "-c", "import tunefleet"],
        "tunefleet --help": lambda d: [sys.executable, "-m", "tunefleet", "--help"],
        "run 1 trial, fresh SQLite": lambda d: run(f"sqlite:///{d}/s.db", 1, 1),
        "run 1 trial, fresh journal": lambda d: run(f"journal:///{d}/s.log", 1, 1),
    }
    if not args.skip_1000:
        cases["run 1000, 4 workers, fresh SQLite"] = lambda d: run(f"sqlite:///{d}/s.db", 1000, 4)
        cases["plain Optuna, 1000 in memory"] = lambda d: [sys.executable, "-c", PLAIN_1000]
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, cmd in cases.items():  # interleaved: the machine's drift hits every case
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "obj.py").write_text(OBJ)
                times[name].append(wall(cmd(tmp), tmp))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'seconds from launch to exit':<36} {'median':>7} {'range':>13}")
    for name, t in times.items():
        print(f"{name:<36} {median[name]:7.2f} {min(t):6.2f}-{max(t):<6.2f}")
    print(f"fresh SQLite / fresh journal, 1 trial: "
          f"{median['run 1 trial, fresh SQLite'] / median['run 1 trial, fresh journal']:.2f}x")
    if not args.skip_1000:
        print(f"1000 trials from launch, tunefleet / plain Optuna (trials/s ratio): "
              f"{median['plain Optuna, 1000 in memory'] / median['run 1000, 4 workers, fresh SQLite']:.2f}x")


if __name__ == "__main__":
    main()
