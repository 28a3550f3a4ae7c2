"""Trials per second of shared-storage mode: tunefleet workers, plain Optuna workers, and hub mode
on the same storage.

    .venv/bin/python benchmarks/storage_mode.py            # full: 4 and 16 workers, 200 trials
    .venv/bin/python benchmarks/storage_mode.py --quick    # 4 workers, 60 trials (~4 minutes)
    .venv/bin/python benchmarks/storage_mode.py --storages sqlite,journal --workers 4

For each storage (SQLite, journal file, PostgreSQL, MariaDB), worker count and objective
(trivial, 50 ms sleep) it runs a fresh study three ways:

- plain: what users run today, N processes each calling ``study.optimize`` with
  ``MaxTrialsCallback(total)`` on the storage (no heartbeat; the total may overshoot);
- tunefleet: N ``tunefleet worker`` processes (exact budget, heartbeats, retries);
- hub: ``tunefleet.optimize(study, objective, n_workers=N)`` in one process on the same storage
  (only the coordinator writes; SQLite in WAL mode as ``tunefleet run`` opens it).

The rate is the steady state: completed trials per second between the 10th and the 90th
percentile of the trials' finish times (so process start-up and the last stragglers are left
out). Efficiency = rate x 50 ms / workers, for the 50 ms objective (1.0 = no overhead). PostgreSQL and MariaDB are started by
tests/services.py with their default durability (fsync on).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Each call notes when it ended in a file of its own process: a clock finer than MySQL's
# whole-second DATETIME, and the same for every storage and mode.
OBJECTIVES = """
import os, time
def _ended():
    with open(os.path.join(os.environ["BENCH_ENDS"], str(os.getpid())), "a") as f:
        f.write(f"{time.time()}\\n")
def trivial(trial):
    v = trial.suggest_float("x", -10, 10) ** 2
    _ended()
    return v
def sleepy(trial):
    x = trial.suggest_float("x", -10, 10)
    time.sleep(0.05)
    _ended()
    return x ** 2
"""

PLAIN = r"""
import os, sys, optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
optuna.logging.set_verbosity(optuna.logging.ERROR)
import bench_objectives as o
from tunefleet.storage_mode._db import open_worker_storage
study = optuna.load_study(study_name="b", storage=open_worker_storage(sys.argv[1]),
                          sampler=optuna.samplers.RandomSampler())
study.optimize(getattr(o, sys.argv[2]),
               callbacks=[MaxTrialsCallback(int(sys.argv[3]), states=(TrialState.COMPLETE,))])
"""

HUB = r"""
import sys, optuna, tunefleet
optuna.logging.set_verbosity(optuna.logging.ERROR)
import bench_objectives as o
from tunefleet._studies import open_storage
url = sys.argv[1]
study = optuna.load_study(study_name="b", sampler=optuna.samplers.RandomSampler(),
                          storage=open_storage(url, sqlite_wal=url.startswith("sqlite")))
tunefleet.optimize(study, getattr(o, sys.argv[2]), n_trials=int(sys.argv[3]),
                   n_workers=int(sys.argv[4]))
"""

IMPLS = ("plain", "tunefleet", "hub")


def run_once(url: str, impl: str, workers: int, objective: str, total: int,
             bench_dir: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    from tunefleet.storage_mode._db import init_study
    from tunefleet._studies import StudySpec, open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    init_study(url, "b", StudySpec(sampler="random"), explicit=True)
    ends_dir = tempfile.mkdtemp(prefix="ends-", dir=bench_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([bench_dir, str(ROOT / "src")]),
           "BENCH_ENDS": ends_dir}
    fn = "trivial" if objective == "trivial" else "sleepy"
    if impl == "plain":
        cmds = [[sys.executable, "-c", PLAIN, url, fn, str(total)]] * workers
    elif impl == "hub":
        cmds = [[sys.executable, "-c", HUB, url, fn, str(total), str(workers)]]
    else:
        cmds = [[sys.executable, "-m", "tunefleet", "worker", f"{bench_dir}/bench_objectives.py:{fn}",
                 "--storage", url, "--study", "b", "--n-trials", str(total), "-q"]] * workers
    procs = [subprocess.Popen(c, env=env, cwd=bench_dir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for c in cmds]
    try:
        for p in procs:
            _, err = p.communicate(timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"{impl} worker failed: {err.decode()[-800:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    trials = optuna.load_study(study_name="b", storage=open_storage(url)).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    ends = sorted(float(line) for f in Path(ends_dir).iterdir()
                  for line in f.read_text().split())
    # Steady state: between the 10th and the 90th percentile of end times, so that the
    # staggered start of the processes and the last stragglers do not decide the figure.
    lo, hi = len(ends) // 10, len(ends) - 1 - len(ends) // 10
    rate = (hi - lo) / max(ends[hi] - ends[lo], 1e-6)
    return {"complete": len(done), "trials_per_s": round(rate, 1),
            "efficiency": round(rate * 0.05 / workers, 2) if objective == "50ms" else None}


def fresh_url(storage: str, servers: dict, bench_dir: str, n: int) -> str:
    if storage == "sqlite":
        return f"sqlite:///{bench_dir}/s{n}.db"
    if storage == "journal":
        return f"journal://{bench_dir}/j{n}.log"
    return servers[storage].new_database(f"b{n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storages", default="sqlite,journal,postgresql,mysql")
    parser.add_argument("--workers", default=None, help="comma-separated (default 4,16)")
    parser.add_argument("--trials", type=int, default=None, help="per run (default 200)")
    parser.add_argument("--objectives", default="trivial,50ms")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--quick", action="store_true", help="4 workers, 60 trials")
    parser.add_argument("--json", dest="json_out", default=None, help="also write rows here")
    args = parser.parse_args()
    workers_list = [int(w) for w in (args.workers or ("4" if args.quick else "4,16")).split(",")]
    total = args.trials or (60 if args.quick else 200)
    impls = args.impls.split(",")
    from tests.services import MariaDB, Postgres

    servers: dict = {}
    bench_dir = tempfile.mkdtemp(prefix="tunefleet-bench-")
    Path(bench_dir, "bench_objectives.py").write_text(OBJECTIVES)
    rows = []
    n = 0
    try:
        for storage in args.storages.split(","):
            if storage == "postgresql":
                servers[storage] = Postgres(fsync=True).start()
            if storage == "mysql":
                servers[storage] = MariaDB().start()
            for workers in workers_list:
                for objective in args.objectives.split(","):
                    row = {"storage": storage, "workers": workers, "objective": objective}
                    for impl in impls:
                        n += 1
                        url = fresh_url(storage, servers, bench_dir, n)
                        r = run_once(url, impl, workers, objective, total, bench_dir)
                        row[impl] = r
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for s in servers.values():
            s.stop()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    head = f"{'storage':10} {'workers':>7} {'objective':>9} " + " ".join(
        f"{i + '/s':>11}" for i in impls) + "  " + " ".join(f"{'eff ' + i:>13}" for i in impls)
    print(f"trials per run: {total}")
    print(head)
    for row in rows:
        rates = " ".join(f"{row[i]['trials_per_s']:11}" for i in impls)
        effs = " ".join(f"{str(row[i]['efficiency'] or '-'):>13}" for i in impls)
        print(f"{row['storage']:10} {row['workers']:7} {row['objective']:>9} {rates}  {effs}")


if __name__ == "__main__":
    main()
