"""No central bottleneck: aggregate trials per second of a swarm against shared storages.

    python benchmarks/p2p_throughput.py              # 16 processes each way (~4 min on 2 cores)
    python benchmarks/p2p_throughput.py --quick      # fewer trials (~1 min)
    python benchmarks/p2p_throughput.py --procs 8 --trials 200

A trivial objective (one float, returned as is) and RandomSampler everywhere, so what is
measured is the bookkeeping, not the sampler or the objective:

* p2p: 16 ``tunefleet peer`` processes in one swarm, each with an in-memory local study,
  ``--rounds`` rounds; the swarm shares its bests after every round.
* sqlite / journal: 16 processes running ``study.optimize`` on one study in one SQLite file
  (busy timeout 60 s) or one Optuna journal file.

Aggregate throughput = all trials / (last process done - first process started), counted from
the first trial (after imports, and after joining for the peers), so start-up is left out alike.
"wall s" is the whole run as a user sees it: from starting the processes until the last exits
(imports, joining and the swarm's distributed termination included).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def trivial(trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p2p(procs: int, rounds: int, trials: int) -> tuple[int, float, float]:
    t_wall = time.perf_counter()
    ports = [free_port() for _ in range(procs)]
    target = f"{os.path.join(HERE, 'p2p_throughput.py')}:trivial"
    running = []
    for i, port in enumerate(ports):
        cmd = [sys.executable, "-m", "tunefleet", "peer", target, "-u", f"p{i}",
               "-b", f"tcp://127.0.0.1:{port}", "-r", str(rounds), "-t", str(trials),
               "--sampler", "random", "--seed", "0", "--wait-peers", str(procs), "--json", "-q"]
        if i:
            cmd += ["-s", "p0", "-d", f"tcp://127.0.0.1:{ports[0]}"]
        running.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    results = []
    for p in running:
        out, _ = p.communicate(timeout=900)
        if p.returncode:
            raise SystemExit(f"a peer failed ({p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - t_wall
    n = sum(r["n_trials"] - r["n_received"] for r in results)
    span = max(r["rounds_done_at"] for r in results) - min(r["started_at"] for r in results)
    return n, span, wall


def _storage_worker(url: str, n: int, seed: int, barrier, queue) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # not one line per wait for the lock
    from tunefleet._studies import open_storage

    study = optuna.load_study(study_name="bench", storage=open_storage(url),
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    barrier.wait()
    t0 = time.time()
    study.optimize(trivial, n_trials=n)
    queue.put((t0, time.time(), n))


def shared_storage(url: str, procs: int, n: int) -> tuple[int, float, float]:
    import optuna

    from tunefleet._studies import open_storage

    t_wall = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="bench", storage=open_storage(url))
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_storage_worker, args=(url, n, i, barrier, queue))
               for i in range(procs)]
    for w in workers:
        w.start()
    done = [queue.get(timeout=1800) for _ in workers]
    for w in workers:
        w.join()
    wall = time.perf_counter() - t_wall
    return sum(d[2] for d in done), max(d[1] for d in done) - min(d[0] for d in done), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=100, help="per round, for the peers")
    ap.add_argument("--storage-trials", type=int, default=100,
                    help="per process, for the shared storages")
    ap.add_argument("--quick", action="store_true",
                    help="20 trials per round and 25 per storage process: about a minute")
    a = ap.parse_args()
    if a.quick:
        a.trials, a.storage_trials = 20, 25
    print(f"{a.procs} processes, trivial objective, RandomSampler, {os.cpu_count()} CPUs; "
          f"peers {a.rounds} rounds x {a.trials} trials, storage {a.storage_trials} trials each")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["journal file"] = shared_storage(f"journal:///{tmp}/bench.log", a.procs,
                                              a.storage_trials)
        rows["sqlite file"] = shared_storage(f"sqlite:///{tmp}/bench.db?timeout=60", a.procs,
                                             a.storage_trials)
    rows["p2p swarm"] = p2p(a.procs, a.rounds, a.trials)
    journal = rows["journal file"][0] / rows["journal file"][1]
    print(f"{'setup':14s} {'trials':>7s} {'seconds':>8s} {'trials/s':>9s} {'x journal':>9s} "
          f"{'wall s':>7s}")
    for name, (n, span, wall) in rows.items():
        rate = n / span
        print(f"{name:14s} {n:7d} {span:8.2f} {rate:9.1f} {rate / journal:9.1f} {wall:7.1f}")


if __name__ == "__main__":
    main()
