"""The quadratic hello world: minimize x**2 + y with x in [-100, 100] and y in {-1, 0, 1}.

    tunefleet run examples/quadratic.py:objective --n-trials 200 --workers 4
    tunefleet run examples/quadratic.py:Quadratic --n-trials 200 --workers 4
    python examples/quadratic.py --n-trials 200 --workers 4

The peer-to-peer hello world (flags -u, -r, -s, -d) is examples/p2p/quadratic.py.
"""

import optuna


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y


class Quadratic:
    """The same objective as a class: ``offset`` shifts the minimum of x."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -100, 100)
        y = trial.suggest_int("y", -1, 1)
        return (x - self.offset) ** 2 + y


def main(argv: list[str] | None = None) -> None:
    """``python examples/quadratic.py [--n-trials N] [--workers N]``: hub mode, one study.
    Any other flag (the P2P hello world's -u/-r/-s/-d...) is refused: run silently as a hub,
    it would look like a swarm that ignored its settings."""
    import argparse
    import sys

    import tunefleet

    parser = argparse.ArgumentParser(
        prog="examples/quadratic.py", allow_abbrev=False,
        description="The quadratic hello world in hub mode (one study, local workers).",
        epilog="The peer-to-peer version (-u, -r, -s, -d ...) is examples/p2p/quadratic.py.")
    parser.add_argument("--n-trials", type=int, default=200, help="default: 200")
    parser.add_argument("--workers", type=int, default=4, help="default: 4")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"examples/quadratic.py: error: {' '.join(unknown)}: not options of this hub "
              "example (it takes --n-trials and --workers); the peer-to-peer one takes them: "
              f"python examples/p2p/quadratic.py {' '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    study = optuna.create_study(direction="minimize")
    tunefleet.optimize(study, Quadratic(offset=3.0), n_trials=args.n_trials,
                       n_workers=args.workers)
    print(study.best_value, study.best_params)


if __name__ == "__main__":
    main()
