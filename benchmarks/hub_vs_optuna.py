"""Hub mode against Optuna's own ways of using several workers, side by side in one run.

    python benchmarks/hub_vs_optuna.py            # the full run (several minutes on 2 cores)
    python benchmarks/hub_vs_optuna.py --quick    # fewer trials
    python benchmarks/hub_vs_optuna.py --postgres postgresql://user@host:port/db   # else one
                                                  # is started with tests/services.py if it can

Throughput: trivial objective (the quadratic), 4 workers, trials per second counted until the
call returns, i.e. until the storage holds every trial (*durable*): tunefleet's hub on SQLite,
PostgreSQL and a journal file, beside the hub on Optuna's InMemoryStorage (*in memory*: nothing
survives the process) and Optuna's setups: threads (``n_jobs=4``, in memory), 4 processes on one
SQLite file, on one journal file and on PostgreSQL, and one process alone (in memory).
Efficiency: an objective that sleeps 50 ms, 16 workers: ideal time / wall time.
Long run: 20,000 trials on SQLite: seconds from the last trial's end to the call's return, and
the coordinator's memory per trial against Optuna's own in-memory study of the same size.
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

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]


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


def storage_for(url: str | None, wal: bool = False):
    """Open a storage as ``tunefleet run`` does (SQLite in WAL mode for the hub, whose
    coordinator is the only writer; plain Optuna processes get Optuna's defaults)."""
    if url is None:
        return None
    if url.endswith(".log"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        return optuna.storages.JournalStorage(JournalFileBackend(url,
                                                                 lock_obj=JournalFileOpenLock(url)))
    if wal:
        from tunefleet._studies import open_storage

        return open_storage(url, sqlite_wal=True)
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
    """Seconds until ``tunefleet.optimize`` returns: the storage then holds every trial."""
    import tunefleet

    study = optuna.create_study(sampler=sampler(sampler_name), storage=storage_for(storage, True),
                                study_name=f"bench-{time.time_ns()}")
    start = time.perf_counter()
    tunefleet.optimize(study, objective, n_trials=n_trials, n_workers=n_workers)
    wall = time.perf_counter() - start
    if storage is not None:  # read back from a fresh connection: all there
        held = optuna.load_study(study_name=study.study_name, storage=storage_for(storage))
        assert len(held.trials) == n_trials, (len(held.trials), n_trials)
    return wall, study


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


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def long_run(kind: str, url: str | None, n: int) -> None:
    """In a fresh process: run ``n`` trials and print JSON: exit lag and bytes per trial."""
    import gc

    import tunefleet

    # Warm up first, on the same kind of storage, so that what is paid once (SQLAlchemy and its
    # dialect imported, the writer thread's allocator arena, the workers' start-up) is not
    # counted as the study's memory.
    warm_url = None if url is None else url.replace("long", "warm")
    warm = optuna.create_study(sampler=sampler("random"), storage=storage_for(warm_url, True))
    if kind == "hub":
        tunefleet.optimize(warm, quadratic, n_trials=200, n_workers=4)
    else:
        warm.optimize(quadratic, n_trials=200)
    del warm
    gc.collect()
    before = rss()
    at_last: list[int] = []

    def last_callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(study.get_trials(deepcopy=False)) >= n:  # the whole study held in memory
            at_last.append(rss())

    study = optuna.create_study(sampler=sampler("random"), storage=storage_for(url, True),
                                study_name=f"long-{time.time_ns()}")
    if kind == "hub":
        tunefleet.optimize(study, quadratic, n_trials=n, n_workers=4, callbacks=[last_callback])
    else:
        study.optimize(quadratic, n_trials=n, callbacks=[last_callback])
    returned = time.time()
    gc.collect()
    last = max(t.datetime_complete for t in study.get_trials(deepcopy=False)).timestamp()
    print(json.dumps({"exit_after_last_trial_s": returned - last,
                      "bytes_per_trial": (max(at_last) - before) / n}))


def in_subprocess(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_postgres():
    """A throw-away PostgreSQL server from tests/services.py (Debian's postgresql package)."""
    sys.path.insert(0, str(ROOT))
    from tests.services import Postgres

    return Postgres().start()


def ratio_pairs(m: int, tmp: str, k: int) -> None:
    """The durable hub on SQLite against the hub in memory, TPE: one run of each differs from
    the next by more than the 10 % asked (the same in-memory run gives 170-245 trials/s on this
    machine), so run ``k`` triplets (memory, SQLite, memory) and compare each SQLite run with
    the mean of the two memory runs around it."""
    ratios = []
    for i in range(k):
        before = hub(m, 4, "tpe")[0]
        durable = hub(m, 4, "tpe", storage=f"sqlite:///{tmp}/ratio-{i}.db")[0]
        after = hub(m, 4, "tpe")[0]
        ratios.append((before + after) / 2 / durable)
    ratios.sort()
    print(f"  -> the same in {k} triplets (memory, SQLite, memory): median "
          f"{ratios[len(ratios) // 2]:.2f}, from {ratios[0]:.2f} to {ratios[-1]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--postgres", default=None, help="a PostgreSQL URL to use (else one is started)")
    ap.add_argument("--worker", nargs=5)
    ap.add_argument("--long", nargs=3)
    args = ap.parse_args()
    if args.worker:
        url, name, n, s, obj = args.worker
        worker_main(url, name, int(n), s, obj)
        return
    if args.long:
        kind, url, n = args.long
        long_run(kind, None if url == "-" else url, int(n))
        return
    server = None
    pg_base = args.postgres
    if pg_base is None:
        try:
            server = start_postgres()
        except Exception as exc:  # noqa: BLE001 - the rest of the benchmark still runs
            print(f"(no PostgreSQL: {exc})")
    databases = iter(range(1000))

    def pg() -> str | None:
        if server is not None:
            return server.new_database(f"bench{next(databases)}")
        return pg_base

    n = 500 if args.quick else 2000
    tmp = tempfile.mkdtemp()
    print(f"trivial objective, {n} trials, 4 workers, trials/s counted until the call returns "
          f"({os.cpu_count()} CPUs, optuna {optuna.__version__})")
    for s in ("random", "tpe"):
        m = n if s == "random" else n // 2
        rows = {}
        rows["tunefleet hub, SQLite file (durable)"] = m / hub(m, 4, s, storage=f"sqlite:///{tmp}/hub-{s}.db")[0]
        rows["tunefleet hub, journal file (durable)"] = m / hub(m, 4, s, storage=f"{tmp}/hub-{s}.log")[0]
        if pg() is not None:
            rows["tunefleet hub, PostgreSQL (durable)"] = m / hub(m, 4, s, storage=pg())[0]
        rows["tunefleet hub, in memory (not durable)"] = m / hub(m, 4, s)[0]
        rows["optuna 4 processes, journal file"] = m / optuna_processes(f"{tmp}/plain-{s}.log", m, 4, s)[0]
        rows["optuna 4 processes, SQLite"] = m / optuna_processes(f"sqlite:///{tmp}/plain-{s}.db", m, 4, s)[0]
        if pg() is not None:
            rows["optuna 4 processes, PostgreSQL"] = m / optuna_processes(pg(), m, 4, s)[0]
        rows["optuna threads n_jobs=4 (in memory)"] = m / threads(m, 4, s)
        rows["optuna 1 process alone (in memory)"] = m / threads(m, 1, s)
        base = rows["tunefleet hub, SQLite file (durable)"]
        print(f"\n{s} sampler, {m} trials")
        for label, rate in rows.items():
            print(f"  {label:42s} {rate:8.1f}  (hub on SQLite is {base / rate:.2f}x)")
        journal = rows["optuna 4 processes, journal file"]
        print(f"  -> durable hub on SQLite / 4 Optuna processes on a journal file: "
              f"{base / journal:.2f}x")
        if "optuna 4 processes, PostgreSQL" in rows:
            print(f"  -> durable hub on PostgreSQL / 4 Optuna processes on PostgreSQL: "
                  f"{rows['tunefleet hub, PostgreSQL (durable)'] / rows['optuna 4 processes, PostgreSQL']:.1f}x")
        print(f"  -> durable hub on SQLite / hub in memory: "
              f"{base / rows['tunefleet hub, in memory (not durable)']:.2f}")
        if s == "tpe":
            ratio_pairs(m, tmp, 2 if args.quick else 7)

    n_long = 5000 if args.quick else 20000
    print(f"\nlong run, Random, {n_long} trials, 4 workers, on SQLite")
    hub_long = in_subprocess("--long", "hub", f"sqlite:///{tmp}/long.db", str(n_long))
    plain = in_subprocess("--long", "optuna", "-", str(n_long))
    print(f"  call returned {hub_long['exit_after_last_trial_s']:.2f} s after the last trial ended")
    print(f"  coordinator memory (RSS growth at the last trial): "
          f"{hub_long['bytes_per_trial']:.0f} bytes/trial; Optuna's own in-memory "
          f"study.optimize: {plain['bytes_per_trial']:.0f} bytes/trial")

    n_sleep = 160 if args.quick else 320
    print(f"\nobjective sleeping 50 ms, 16 workers, {n_sleep} trials: efficiency "
          "(from the first trial / counting start-up)")
    wall, study = hub(n_sleep, 16, "random", objective=sleepy, storage=f"sqlite:///{tmp}/sl.db")
    print("  tunefleet hub, SQLite (durable)    %.2f / %.2f" % efficiency(study, wall, 16, 0.05))
    wall, study = optuna_processes(f"{tmp}/sleepy.log", n_sleep, 16, "random", "sleepy")
    print("  optuna 16 processes, journal file  %.2f / %.2f" % efficiency(study, wall, 16, 0.05))
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
