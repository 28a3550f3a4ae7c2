"""The end of a big run (issue 20.6): how long ``tunefleet run`` takes to exit after its last
trial, and its peak resident memory, on N trivial trials (a few ms each) over SQLite.

    .venv/bin/python benchmarks/end_of_run.py                  # 20,000 trials, 4 workers
    .venv/bin/python benchmarks/end_of_run.py --n-trials 5000
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/end_of_run.py  # before

It prints the seconds from the last trial's end (as the storage dates it) to the process's
exit, the peak RSS of the coordinator process (sampled every 50 ms), the trials per second of
the whole run, and the summary line's counts (which must be the storage's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVE = ROOT / "tests" / "hub" / "durable_objectives.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/end.db"
        cmd = [sys.executable, "-m", "tunefleet", "run", f"{OBJECTIVE}:fast", "--n-trials",
               str(args.n_trials), "--workers", str(args.workers), "--storage", url,
               "--sampler", "random", "--no-progress", "--json"]
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ))
        me = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, me.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        ended = time.time()
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"the run failed ({proc.returncode}):\n{err[-3000:]}")
        summary = json.loads(out.strip().splitlines()[-1])
        study = optuna.load_study(study_name="tunefleet", storage=url)
        trials = study.get_trials(deepcopy=False)
        last = max(t.datetime_complete.timestamp() for t in trials if t.datetime_complete)
        assert summary["states"]["complete"] == sum(t.state.name == "COMPLETE" for t in trials)
    print(f"| {args.n_trials} trials, {args.workers} workers, SQLite | exit {ended - last:.2f} s "
          f"after the last trial | peak RSS {peak / 2**20:.0f} MB | "
          f"{len(trials) / (last - started):.0f} trials/s (durable, from launch) |")


if __name__ == "__main__":
    main()
