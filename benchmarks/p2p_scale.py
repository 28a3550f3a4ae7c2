"""A big swarm started at once on one machine: does every peer join, and agree on the best?

    python benchmarks/p2p_scale.py                # 128 peers (about 2-4 min on 2 cores)
    python benchmarks/p2p_scale.py --quick        # 32 peers
    python benchmarks/p2p_scale.py --peers 64 --rounds 5 --heartbeat 1

All peers (``tunefleet peer``, loopback only, free ports) are started together, the joiners
before their seed is even listening, so they must keep asking it (back-off, --join-timeout).
Each runs the quadratic with TPE and starts its rounds once the whole swarm is known
(--wait-peers N). Reported: how many peers joined and ended with exit code 0, how many
different global bests they printed (1 is right), the time until the whole swarm was known,
and what the termination costs: the last exchange of bests (from "every peer finished" to
"every peer agrees", per peer) and from the last peer's rounds done to the last peer done
(its summary made, before the interpreter exits).
The whole run is bounded by --limit seconds; peers still running then are killed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = f"{os.path.join(ROOT, 'examples', 'p2p', 'quadratic.py')}:objective"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(peers: int, rounds: int, trials: int, heartbeat: float, peer_timeout: float,
        limit: float, logs: str | None = None, key: bool = False) -> dict:
    seed_port = free_port()
    common = ["-r", str(rounds), "-t", str(trials), "--wait-peers", str(peers),
              "--heartbeat", str(heartbeat), "--peer-timeout", str(peer_timeout),
              "--join-timeout", str(limit * 0.8), "--json", *([] if logs else ["-q"])]
    launched = time.time()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        if key:  # every connection through the key handshake, every message signed
            key_path = os.path.join(tmp, "swarm.key")
            with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
                fh.write(os.urandom(16).hex())
            common += ["--key-file", key_path]
        tmp = logs or tmp
        for i in range(peers):
            addr = f"tcp://127.0.0.1:{seed_port}" if i == 0 else "tcp://127.0.0.1:0"
            cmd = [sys.executable, "-m", "tunefleet", "peer", TARGET, "-u", f"p{i}", "-b", addr,
                   *common]
            if i:
                cmd += ["-s", "p0", "-d", f"tcp://127.0.0.1:{seed_port}"]
            err = open(os.path.join(tmp, f"p{i}.err"), "w")
            procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                           text=True), err, os.path.join(tmp, f"p{i}.err")))
        deadline = launched + limit
        results, codes, errors, exits = [], [], [], []
        for p, err, path in procs:
            try:
                out, _ = p.communicate(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                for q, _, _ in procs:  # out of time: every peer still running goes
                    if q.poll() is None:
                        q.kill()
                out, _ = p.communicate()
            exits.append(time.time())
            err.close()
            codes.append(p.returncode)
            if p.returncode == 0:
                results.append(json.loads(out.strip().splitlines()[-1]))
            else:
                lines = open(path).read().strip().splitlines()
                errors.append(lines[-1] if lines else f"exit {p.returncode}")
    bests = {(r["best_value"], r["found_by"]) for r in results}
    finals = [r["final_exchange_s"] for r in results if "final_exchange_s" in r]
    return {
        "peers": peers, "ended_ok": len(results), "exit_codes": sorted(set(codes)),
        "errors": errors[:5], "distinct_bests": len(bests),
        "best": min(bests)[0] if bests else None,
        "all_known_s": max(r["started_at"] for r in results) - launched if results else None,
        "final_median_s": statistics.median(finals) if finals else None,
        "final_max_s": max(finals) if finals else None,
        "rounds_to_exit_s": (max(r["ended_at"] for r in results)
                             - max(r["rounds_done_at"] for r in results) if results else None),
        "wall_s": max(exits) - launched,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--heartbeat", type=float, default=0.5)
    ap.add_argument("--peer-timeout", type=float, default=10.0)
    ap.add_argument("--limit", type=float, default=600.0, help="seconds for the whole run")
    ap.add_argument("--quick", action="store_true", help="32 peers")
    ap.add_argument("--logs", help="keep each peer's progress lines in this folder")
    ap.add_argument("--key", action="store_true", help="a shared key (CurveZMQ and HMAC)")
    a = ap.parse_args()
    if a.quick:
        a.peers = 32
    print(f"{a.peers} peers at once{' with a key' if a.key else ''}, {a.rounds} rounds x {a.trials} trials, heartbeat "
          f"{a.heartbeat} s, peer timeout {a.peer_timeout} s, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if a.logs:
        os.makedirs(a.logs, exist_ok=True)
    r = run(a.peers, a.rounds, a.trials, a.heartbeat, a.peer_timeout, a.limit, a.logs, a.key)
    print(json.dumps(r, indent=1))
    ok = r["ended_ok"] == a.peers and r["distinct_bests"] == 1
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    print(f"{'ALL JOINED AND AGREE' if ok else 'FAILED'}: {r['ended_ok']}/{a.peers} ended with "
          f"exit 0, {r['distinct_bests']} distinct best(s); whole swarm known after "
          f"{f(r['all_known_s'])} s; last exchange median {f(r['final_median_s'])} s, max "
          f"{f(r['final_max_s'])} s; last rounds done to last done {f(r['rounds_to_exit_s'])} s;"
          f" wall {f(r['wall_s'])} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
