"""Objectives that start processes of their own, as objectives under plain Optuna do; the
tests of ``test_child_processes.py`` and ``test_hung_workers.py`` run them through the CLI
(``tests.hub.process_objectives:NAME``), so that spawned processes can import them."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna


def square(v: float) -> float:
    return v * v


def slow(trial: optuna.Trial) -> float:
    """0.3 s per trial (TF_SLOW_S seconds if set). With TF_SLEEPING_DIR, the file
    ``<dir>/<pid>`` exists while it sleeps,
    so that a test stops a worker in its sleep and never in the middle of a storage write
    (a SQLite writer stopped mid-transaction holds the file's lock, and every writer waits).
    With TF_GATE, the sleep also lasts while that file exists (120 s at most): a test holds
    the study's trials until it has stopped a worker in one, however loaded the machine."""
    x = trial.suggest_float("x", 0, 1)
    folder = os.environ.get("TF_SLEEPING_DIR")
    mark = Path(folder) / str(os.getpid()) if folder else None
    if mark is not None:
        mark.touch()
    gate = os.environ.get("TF_GATE")
    deadline = time.monotonic() + 120
    while gate and os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(float(os.environ.get("TF_SLOW_S", "0.3")))
    if mark is not None:
        mark.unlink()
    return x


def slow_when_three_joined(trial: optuna.Trial) -> float:
    """``slow`` once three worker processes have each begun a trial: a test that needs three
    workers at work sees them however slowly some start."""
    from tests.remote.objectives import _wait_until_joined

    _wait_until_joined(3)
    return slow(trial)


def _pool(method: str, trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    with multiprocessing.get_context(method).Pool(2) as pool:  # __exit__: Pool.terminate()
        return sum(pool.map(square, [x, x / 2]))


def pool_fork(trial: optuna.Trial) -> float:
    return _pool("fork", trial)


def pool_spawn(trial: optuna.Trial) -> float:
    return _pool("spawn", trial)


def executor(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    with ProcessPoolExecutor(2) as ex:
        return sum(ex.map(square, [x, x / 2]))


def joblib_parallel(trial: optuna.Trial) -> float:
    from joblib import Parallel, delayed

    x = trial.suggest_float("x", -1, 1)
    return sum(Parallel(n_jobs=2)(delayed(square)(v) for v in (x, x / 2)))


def leaves_sleep(trial: optuna.Trial) -> float:
    """Leaves a ``sleep 600`` running, and an orphan of a shell that exited."""
    x = trial.suggest_float("x", -1, 1)
    subprocess.Popen(["sleep", "600"])
    subprocess.run(["sh", "-c", "sleep 600 &"])
    return x * x


_KEPT: ProcessPoolExecutor | None = None


def kept_executor(trial: optuna.Trial) -> float:
    """Keeps one executor for all its trials (not shut down): it must survive from one trial
    to the next (a killed one raises BrokenProcessPool), and end with the worker."""
    global _KEPT
    if _KEPT is None:
        _KEPT = ProcessPoolExecutor(2)
    x = trial.suggest_float("x", -1, 1)
    return sum(_KEPT.map(square, [x, x / 2]))
