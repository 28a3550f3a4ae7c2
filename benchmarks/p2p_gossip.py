"""Does gossip help? The same 8 peers, sharing their bests or each alone, on shifted Rosenbrock.

    python benchmarks/p2p_gossip.py                    # 8 peers x 10 rounds x 10 trials, 5 seeds
    python benchmarks/p2p_gossip.py --quick            # the same with 3 seeds (~1.5 min)
    python benchmarks/p2p_gossip.py --seeds 3 --function hartmann6 --share top-k

Every peer is a real ``tunefleet peer`` process on loopback (TPE, seeded by ``--seed`` mixed with
its UID, so peer pI draws the same points in both setups until gossip changes what it knows).
"Isolated" runs the same 8 peers as 8 one-peer swarms. The figure is the best value the fleet
reached (the swarm's global best against the best of the 8 loners), per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_H6_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
         [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
_H6_P = [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
         [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]
_H6_ALPHA = [1.0, 1.2, 3.0, 3.2]
H6_MIN = -3.32237


def hartmann6(trial) -> float:
    """Hartmann-6 on [0, 1]^6; the global minimum is -3.32237."""
    x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)]
    return -sum(a * math.exp(-sum(_H6_A[i][j] * (x[j] - _H6_P[i][j] * 1e-4) ** 2
                                  for j in range(6)))
                for i, a in enumerate(_H6_ALPHA))


def rosenbrock(trial) -> float:
    """Rosenbrock in 6 dimensions, shifted so that the minimum 0 sits at x = 1.7 (not on a
    round number a sampler might favour)."""
    z = [trial.suggest_float(f"x{i}", -5.0, 10.0) - 0.7 for i in range(6)]
    return sum(100 * (z[i + 1] - z[i] ** 2) ** 2 + (1 - z[i]) ** 2 for i in range(5))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_fleet(function: str, n: int, rounds: int, trials: int, seed: int, gossip: bool,
              share: str) -> list[dict]:
    """Start N peer processes (one swarm, or N loners) and return their JSON summaries."""
    ports = [free_port() for _ in range(n)]
    target = f"{os.path.join(HERE, 'p2p_gossip.py')}:{function}"
    procs = []
    for i, port in enumerate(ports):
        cmd = [sys.executable, "-m", "tunefleet", "peer", target, "-u", f"p{i}",
               "-b", f"tcp://127.0.0.1:{port}", "-r", str(rounds), "-t", str(trials),
               "--seed", str(seed), "--share", share, "--json", "-q"]
        if gossip:
            cmd += ["--wait-peers", str(n)]  # everyone starts together, as the loners do
            if i:
                cmd += ["-s", "p0", "-d", f"tcp://127.0.0.1:{ports[0]}"]
        else:
            cmd += ["--alone-wait", "0"]  # a loner ends with its rounds, waiting for nobody
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"a peer failed ({p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--function", choices=("rosenbrock", "hartmann6"), default="rosenbrock")
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--share", choices=("best", "top-k", "all"), default="best")
    ap.add_argument("--quick", action="store_true", help="3 seeds instead of 5")
    a = ap.parse_args()
    if a.quick:
        a.seeds = min(a.seeds, 3)
    print(f"{a.function}: {a.peers} peers x {a.rounds} rounds x {a.trials} trials, TPE, "
          f"--share {a.share}, {os.cpu_count()} CPUs")
    print("seed  isolated best  gossip best  isolated mean-per-peer  gossip wall s")
    rows = []
    for seed in range(a.seeds):
        alone = run_fleet(a.function, a.peers, a.rounds, a.trials, seed, False, a.share)
        t0 = time.perf_counter()
        swarm = run_fleet(a.function, a.peers, a.rounds, a.trials, seed, True, a.share)
        wall = time.perf_counter() - t0
        iso = min(r["best_value"] for r in alone)
        gos = min(r["best_value"] for r in swarm)
        assert len({r["best_value"] for r in swarm}) == 1, "peers ended with different bests"
        per_peer = statistics.mean(r["best_value"] for r in alone)
        rows.append((iso, gos, per_peer))
        print(f"{seed:4d}  {iso:13.5f}  {gos:11.5f}  {per_peer:22.5f}  {wall:13.1f}", flush=True)
    iso_m, gos_m, pp_m = (statistics.mean(c) for c in zip(*rows))
    iso_md, gos_md, pp_md = (statistics.median(c) for c in zip(*rows))
    wins = sum(g < i for i, g, _ in rows)
    wins_pp = sum(g < pp for _, g, pp in rows)
    print(f"mean  {iso_m:13.5f}  {gos_m:11.5f}  {pp_m:22.5f}")
    print(f"median{iso_md:13.5f}  {gos_md:11.5f}  {pp_md:22.5f}")
    print(f"swarm best better than the best loner on {wins}/{len(rows)} seeds, better than the "
          f"mean loner on {wins_pp}/{len(rows)}"
          + (f"; optimum {H6_MIN}" if a.function == "hartmann6" else "; optimum 0"))


if __name__ == "__main__":
    main()
