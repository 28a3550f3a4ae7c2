"""The P2P hello world: every peer minimizes x**2 + y and the swarm shares its best trials.

Two terminals on one machine, the seed first (it waits up to a minute for the second):

    python examples/p2p/quadratic.py -u seed -r 10
    python examples/p2p/quadratic.py -b tcp://*:5556 -a tcp://localhost:5556 \\
        -s seed -d tcp://localhost:5555 -r 10

``--help`` lists the options; ``tunefleet peer examples/p2p/quadratic.py:objective`` takes the
same ones. Each peer prints the swarm's best value, its parameters and which peer found it.
"""

import optuna

from tunefleet.p2p import Peer


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y


class Quadratic:
    """The same objective as an object: ``at_pow`` is the power of x."""

    def __init__(self, at_pow: int = 2) -> None:
        self.at_pow = at_pow

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -100, 100)
        y = trial.suggest_int("y", -1, 1)
        return abs(x) ** self.at_pow + y


if __name__ == "__main__":
    agent = Peer(parse=True, objective_function=objective)  # or objective_object=Quadratic(2)
    agent.optimize()  # -r rounds of -t trials, sharing bests after each round
    agent.terminate()  # ends with the swarm, and prints the global best
