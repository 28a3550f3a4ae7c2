"""Workers of a parent that has imported PyTorch: how long until each starts its first trial,
and how its first trial compares with its later ones, with ``start_method="spawn"`` (a fresh
interpreter per worker, each importing torch) and ``"forkserver"`` (the default since issue 21:
one server imports torch once and forks every worker), beside plain ``study.optimize`` in one
process.

    python benchmarks/warm_workers.py              # 3 rounds, 16 trials each, 4 workers
    python benchmarks/warm_workers.py --rounds 1

The objective trains a small MLP on scikit-learn's digits for a few epochs (about 0.3 s of CPU
a trial). Each configuration runs in a fresh interpreter that imports torch first, as a user's
script does; the clock starts at ``optimize``. Medians over the rounds are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

RUN = textwrap.dedent('''
    import json, os, sys, time
    import torch
    import optuna
    from sklearn.datasets import load_digits

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X, Y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16
    Y = torch.tensor(Y)

    def objective(trial):
        start = time.time()
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        width = trial.suggest_int("width", 16, 64)
        model = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(),
                                    torch.nn.Linear(width, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(40):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X), Y)
            loss.backward()
            opt.step()
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("start", start)
        trial.set_user_attr("took", time.time() - start)
        return float(loss)

    how, n_trials, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    t0 = time.time()
    if how == "plain":
        study.optimize(objective, n_trials=n_trials)
    else:
        import tunefleet
        tunefleet.optimize(study, objective, n_trials=n_trials, n_workers=workers,
                           start_method=None if how == "default" else how)
    wall = time.time() - t0
    by_pid = {}
    for t in sorted(study.trials, key=lambda t: t.user_attrs["start"]):
        by_pid.setdefault(t.user_attrs["pid"], []).append(t.user_attrs)
    firsts = [runs[0]["start"] - t0 for runs in by_pid.values()]
    ratio = [runs[0]["took"] / statistics.median(r["took"] for r in runs[1:])
             for runs in by_pid.values() if len(runs) > 1]
    import statistics
    print(json.dumps({"wall": wall, "first_start_max": max(firsts),
                      "first_over_later_max": max(ratio) if ratio else None}))
''')


def one(how: str, n_trials: int, workers: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", "import statistics\n" + RUN, how,
                           str(n_trials), str(workers)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{how}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"plain": [], "spawn": [], "forkserver": [], "default": []}
    for _ in range(args.rounds):  # interleaved: a load change hits every configuration
        for how in results:
            results[how].append(one(how, args.trials, args.workers))
    print(f"{args.trials} trials, {args.workers} workers, medians of {args.rounds}:")
    plain = statistics.median(r["wall"] for r in results["plain"])
    for how, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        line = f"  {how:10s} wall {wall:6.2f} s ({wall / plain:.2f}x plain)"
        if how != "plain":
            first = statistics.median(r["first_start_max"] for r in runs)
            slow = statistics.median(r["first_over_later_max"] for r in runs)
            line += (f"; last worker's first trial starts {first:.2f} s after optimize; "
                     f"slowest first trial {slow:.2f}x its worker's later ones")
        print(line)


if __name__ == "__main__":
    main()
