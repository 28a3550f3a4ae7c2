"""Trials per second of shared-storage mode: tunefleet workers against plain Optuna workers.

    .venv/bin/python benchmarks/storage_mode.py [--storages sqlite,journal,postgresql,mysql]

For each storage, worker count (4, 16) and objective (trivial, 50 ms sleep), it starts N worker
processes on a fresh study and measures the rate between the first trial's start and the last
trial's end (process start-up is left out). "plain" is what users run today: each process calls
``study.optimize`` with ``MaxTrialsCallback(total)`` on the same storage (no heartbeat, and the
total may overshoot). Efficiency = busy objective time / (workers x span). PostgreSQL and
MariaDB are started by tests/services.py, with their default durability settings.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAIN = r"""
import os, sys, time, optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
optuna.logging.set_verbosity(optuna.logging.ERROR)
sys.path.insert(0, os.environ["BENCH_DIR"])
from bench_objectives import trivial, sleepy
from tunefleet.storage_mode.db import open_worker_storage
storage = open_worker_storage(sys.argv[1])
study = optuna.load_study(study_name="b", storage=storage,
                          sampler=optuna.samplers.RandomSampler())
study.optimize(trivial if sys.argv[2] == "trivial" else sleepy,
               callbacks=[MaxTrialsCallback(int(sys.argv[3]), states=(TrialState.COMPLETE,))])
"""

OBJECTIVES = """
import time
def trivial(trial):
    return trial.suggest_float("x", -10, 10) ** 2
def sleepy(trial):
    x = trial.suggest_float("x", -10, 10)
    time.sleep(0.05)
    return x ** 2
"""


def run_once(url: str, impl: str, workers: int, objective: str, total: int, bench_dir: str):
    import optuna
    from optuna.trial import TrialState

    from tunefleet.storage_mode.db import open_worker_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name="b", storage=open_worker_storage(url))
    env = {**os.environ, "BENCH_DIR": bench_dir, "PYTHONPATH": bench_dir}
    if impl == "plain":
        cmd = [sys.executable, "-c", PLAIN, url, objective, str(total)]
    else:
        fn = "trivial" if objective == "trivial" else "sleepy"
        cmd = [sys.executable, "-m", "tunefleet", "worker", f"{bench_dir}/bench_objectives.py:{fn}",
               "--storage", url, "--study", "b", "--n-trials", str(total), "--sampler", "random",
               "-q"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(workers)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"{impl} worker failed: {err.decode()[-500:]}")
    trials = optuna.load_study(study_name="b", storage=open_worker_storage(url)).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    span = (end - start).total_seconds()
    busy = 0.05 * len(done) if objective == "50ms" else 0.0
    return {"complete": len(done), "trials_per_s": round(len(done) / span, 1),
            "efficiency": round(busy / (workers * span), 2) if busy else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storages", default="sqlite,journal,postgresql,mysql")
    parser.add_argument("--workers", default="4,16")
    parser.add_argument("--trivial-trials", type=int, default=200)
    parser.add_argument("--sleepy-trials", type=int, default=200)
    args = parser.parse_args()
    from tests.services import MariaDB, Postgres

    servers = {}
    bench_dir = tempfile.mkdtemp(prefix="tunefleet-bench-")
    Path(bench_dir, "bench_objectives.py").write_text(OBJECTIVES)
    rows = []
    counter = 0
    try:
        for storage in args.storages.split(","):
            if storage == "postgresql" and storage not in servers:
                servers[storage] = Postgres(fsync=True).start()
            if storage == "mysql" and storage not in servers:
                servers[storage] = MariaDB().start()
            for workers in [int(w) for w in args.workers.split(",")]:
                for objective in ("trivial", "50ms"):
                    for impl in ("plain", "tunefleet"):
                        counter += 1
                        if storage == "sqlite":
                            url = f"sqlite:///{bench_dir}/s{counter}.db"
                        elif storage == "journal":
                            url = f"journal://{bench_dir}/j{counter}.log"
                        else:
                            url = servers[storage].new_database(f"b{counter}")
                        total = args.trivial_trials if objective == "trivial" else args.sleepy_trials
                        r = run_once(url, impl, workers, objective, total, bench_dir)
                        row = {"storage": storage, "workers": workers, "objective": objective,
                               "impl": impl, **r}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        for s in servers.values():
            s.stop()
    print(f"{'storage':10} {'workers':>7} {'objective':>9} {'plain/s':>8} {'tunefleet/s':>11} "
          f"{'eff plain':>9} {'eff tf':>7}")
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        print(f"{a['storage']:10} {a['workers']:7} {a['objective']:>9} {a['trials_per_s']:8} "
              f"{b['trials_per_s']:11} {str(a['efficiency']):>9} {str(b['efficiency']):>7}")


if __name__ == "__main__":
    main()
