"""Objectives for ``tests/hub/test_bad_workers.py``: workers that go bad (issue 20, part 5).
Each records the pid of the worker that ran it, so that a test can tell workers apart."""

from __future__ import annotations

import os

import optuna

#: What ``leaky`` keeps per trial, in bytes (MB as ``--max-worker-memory`` counts them).
LEAK = 100_000_000

_kept: list[bytes] = []  # a module-level cache that is never emptied: the leak
_trials_here = 0  # trials this worker process has run


def resident_memory() -> int:
    """This process's resident memory (RSS) in bytes, as the worker measures it."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def leaky(trial: optuna.Trial) -> float:
    """Keeps ``LEAK`` bytes (written, so resident) for ever, and records its RSS after."""
    x = trial.suggest_float("x", -1.0, 1.0)
    _kept.append(b"\x01" * LEAK)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("rss", resident_memory())
    return x * x


def memory_error_third(trial: optuna.Trial) -> float:
    """Raises ``MemoryError`` on the third trial of each worker process."""
    global _trials_here
    _trials_here += 1
    x = trial.suggest_float("x", -1.0, 1.0)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("nth", _trials_here)
    if _trials_here == 3:
        raise MemoryError()
    return x * x


def always_fails(trial: optuna.Trial) -> float:
    """Raises on every trial."""
    trial.suggest_float("x", -1.0, 1.0)
    trial.set_user_attr("pid", os.getpid())
    raise ValueError("this objective always fails")
