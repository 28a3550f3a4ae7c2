"""Objectives the P2P lab test runs in its peer processes (``tunefleet peer FILE:gated``)."""

import os
import time
from pathlib import Path

import optuna

_own = 0  # trials this process ran


def gated(trial: optuna.Trial) -> float:
    """The quadratic. With TF_GATE set, the trial after the first TF_GATE_AFTER trials of this
    process waits until the file TF_GATE exists, having written TF_GATE.<pid> to say it waits:
    a peer that is alive (its network thread gossips) but still in its rounds, for as long as
    the test wants. That trial and the later ones score 1000 less than the quadratic: better
    than any trial run before the gate opened, anywhere."""
    global _own
    _own += 1
    gate = os.environ.get("TF_GATE")
    after = int(os.environ.get("TF_GATE_AFTER", "0"))
    if gate and _own == after + 1:
        Path(f"{gate}.{os.getpid()}").touch()
        while not os.path.exists(gate):
            time.sleep(0.05)
    x = trial.suggest_float("x", -100, 100)
    y = trial.suggest_int("y", -1, 1)
    return x**2 + y - (1000 if gate and _own > after else 0)
