"""Hub workers over TCP and on Dask, side by side (issue 5).

1. trials/s of TCP workers (`tunefleet worker --connect` processes) vs local pipe workers;
2. tunefleet on Dask vs optuna-distributed on the same 4-process Dask LocalCluster
   (Random and TPE, trivial objective);
3. a 200 ms objective on 64 TCP workers: efficiency counted from the first trial's start.

    python benchmarks/remote_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import optuna

import tunefleet

optuna.logging.set_verbosity(optuna.logging.ERROR)
KEY = b"benchmark-key"


def trivial(trial):
    return trial.suggest_float("x", -10, 10) ** 2


def sleepy(trial):
    x = trial.suggest_float("x", -10, 10)
    time.sleep(0.2)
    return x * x


def rate(study) -> float:
    """Trials per second from the first trial's start to the last one's end."""
    ts = [t for t in study.trials if t.datetime_complete]
    first = min(t.datetime_start for t in ts)
    last = max(t.datetime_complete for t in ts)
    return len(ts) / max((last - first).total_seconds(), 1e-9)


def tcp_workers(port: int, n: int) -> list[subprocess.Popen]:
    """One ``tunefleet worker --connect --processes N``: N workers forked from one interpreter,
    as one would start them on each host."""
    env = dict(os.environ, TUNEFLEET_KEY=KEY.decode())
    return [subprocess.Popen([sys.executable, "-m", "tunefleet", "worker", "--connect",
                              f"tcp://127.0.0.1:{port}", "--processes", str(n)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tcp(objective, n_trials: int, n_workers: int) -> optuna.Study:
    port = free_port()
    procs = tcp_workers(port, n_workers)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler())
    tunefleet.optimize(study, objective, n_trials=n_trials, backend="tcp",
                       listen=f"tcp://127.0.0.1:{port}", key=KEY)
    deadline = time.monotonic() + 5
    for p in procs:  # late starters are still trying to connect to a study that is over
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return study


def run_local(objective, n_trials: int, n_workers: int) -> optuna.Study:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler())
    tunefleet.optimize(study, objective, n_trials=n_trials, n_workers=n_workers)
    return study


def dask_side_by_side(client, n_trials: int) -> list[tuple[str, str, float]]:
    rows = []
    for name, make in (("random", optuna.samplers.RandomSampler), ("tpe", optuna.samplers.TPESampler)):
        study = optuna.create_study(sampler=make())
        start = time.perf_counter()
        tunefleet.optimize(study, trivial, n_trials=n_trials, backend="dask", client=client)
        rows.append(("tunefleet dask", name, n_trials / (time.perf_counter() - start)))
        try:
            import optuna_distributed

            study = optuna_distributed.from_study(optuna.create_study(sampler=make()),
                                                  client=client)
            start = time.perf_counter()
            study.optimize(trivial, n_trials=n_trials // 4)
            rows.append(("optuna-distributed", name,
                         (n_trials // 4) / (time.perf_counter() - start)))
        except Exception as exc:  # not installed, or not working with this Optuna
            rows.append((f"optuna-distributed unavailable: {type(exc).__name__}: {exc}"[:90],
                         name, float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    args = parser.parse_args()
    n = 300 if args.quick else 2000
    print(f"{'what':<40} {'sampler':<8} {'trials/s':>10}")

    local = rate(run_local(trivial, n, 4))
    tcp = rate(run_tcp(trivial, n, 4))
    print(f"{'local pipe workers (4)':<40} {'random':<8} {local:>10.1f}")
    print(f"{'TCP workers (4)':<40} {'random':<8} {tcp:>10.1f}")
    print(f"{'TCP / local':<40} {'':<8} {tcp / local:>10.2f}   (target >= 0.67)")

    import distributed

    with distributed.LocalCluster(n_workers=4, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        rows = dask_side_by_side(client, 200 if args.quick else 1000)
    for what, sampler, value in rows:
        print(f"{what:<40} {sampler:<8} {value:>10.1f}")
    for sampler in ("random", "tpe"):
        ours = [v for w, s, v in rows if s == sampler and w == "tunefleet dask"][0]
        theirs = [v for w, s, v in rows if s == sampler and w == "optuna-distributed"]
        if theirs:
            print(f"{'tunefleet dask / optuna-distributed':<40} {sampler:<8} "
                  f"{ours / theirs[0]:>10.1f}   (target >= 10)")

    workers, n_slow = 64, (640 if args.quick else 1920)
    study = run_tcp(sleepy, n_slow, workers)
    ideal = n_slow * 0.2 / workers
    ts = [t for t in study.trials if t.datetime_complete]
    span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
    print(f"{'200 ms objective, 64 TCP workers':<40} {'random':<8} {len(ts) / span:>10.1f}   "
          f"efficiency {ideal / span:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
