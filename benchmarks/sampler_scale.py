"""TPE ask cost against the number of trials already in the study: Optuna's sampler and
tunefleet's side by side (issue 14).

Each size N gets two in-memory studies holding the same N random finished trials (added with
``study.add_trials``, 2 float parameters); each sampler then runs a few ask / suggest x2 / tell
rounds with a trivial objective, and the median round is reported. tunefleet's first round at a
size also ingests the N trials it has not seen (a one-off cost per study), so it is reported on
its own and left out of the median.

    python benchmarks/sampler_scale.py            # 1000, 5000, 10,000, 50,000 trials
    python benchmarks/sampler_scale.py --quick    # 1000 and 5000, fewer rounds
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tunefleet.samplers import TPESampler

DISTS = {"x": FloatDistribution(-5.0, 5.0), "y": FloatDistribution(-5.0, 5.0)}


def objective(x: float, y: float) -> float:
    return x * x + y * y


def random_trials(n: int, rng: np.random.Generator) -> list[optuna.trial.FrozenTrial]:
    """N finished trials with random parameters, as a study that already ran N trials."""
    xy = rng.uniform(-5.0, 5.0, size=(n, 2))
    return [create_trial(state=TrialState.COMPLETE, params={"x": float(x), "y": float(y)},
                         distributions=DISTS, value=objective(x, y)) for x, y in xy]


def ask_rounds(study: optuna.Study, rounds: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) per ask / suggest / tell round."""
    out = []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        trial = study.ask()
        value = objective(trial.suggest_float("x", -5, 5), trial.suggest_float("y", -5, 5))
        study.tell(trial, value)
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def median_ms(rounds: list[tuple[float, float]], which: int) -> float:
    return statistics.median(r[which] for r in rounds) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1000 and 5000 trials, 3 rounds")
    parser.add_argument("--sizes", type=int, nargs="*", help="trial counts (overrides defaults)")
    parser.add_argument("--rounds", type=int, help="timed rounds per sampler and size")
    args = parser.parse_args()
    sizes = args.sizes or ([1000, 5000] if args.quick else [1000, 5000, 10_000, 50_000])
    rounds = args.rounds or (3 if args.quick else 9)

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    studies = {
        "optuna": optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0)),
        "tunefleet": optuna.create_study(sampler=TPESampler(seed=0)),
    }
    print(f"TPE ask cost, 2 float params, median of {rounds} rounds, in-memory storage; "
          "CPU = this process's CPU time (what a machine not shared with others would take)")
    print(f"{'trials':>8} {'optuna ms':>10} {'tunefleet ms':>13} {'speedup':>8} "
          f"{'optuna CPU ms':>14} {'tunefleet CPU ms':>17} {'CPU speedup':>12} "
          f"{'tunefleet 1st ask ms':>21}")
    for n in sizes:
        have = len(studies["optuna"].trials)
        if n > have:
            new = random_trials(n - have, rng)
            for study in studies.values():  # the same random trials in both studies
                study.add_trials(new)
        first = ask_rounds(studies["tunefleet"], 1)[0][0]
        fast = ask_rounds(studies["tunefleet"], rounds)
        slow = ask_rounds(studies["optuna"], rounds)
        ask_rounds(studies["optuna"], 1)  # keep both studies at the same size
        fw, fc, sw, sc = (median_ms(fast, 0), median_ms(fast, 1), median_ms(slow, 0),
                          median_ms(slow, 1))
        print(f"{n:>8} {sw:>10.1f} {fw:>13.2f} {sw / fw:>7.1f}x {sc:>14.1f} {fc:>17.2f} "
              f"{sc / fc:>11.1f}x {first * 1e3:>21.1f}", flush=True)


if __name__ == "__main__":
    main()
