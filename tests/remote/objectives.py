"""Objectives and set-up functions that the remote tests ship to workers. ``conftest`` registers
this module to be pickled by value, so engine workers need not import the tests package."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import optuna

import tunefleet


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", -3, 3)
    return (x - 2) ** 2 + y * y


def slow_quadratic(trial: optuna.Trial) -> float:
    time.sleep(0.05)
    return quadratic(trial)


def dies_at(number: int, sleep: float = 0.0):
    """An objective whose worker process is SIGKILLed in the middle of trial ``number``."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        trial.set_user_attr("pid", os.getpid())
        if trial.number == number:
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        if sleep:
            time.sleep(sleep)
        return (x - 2) ** 2

    return objective


def make_setup(folder: str):
    """A set-up that leaves one file per call in ``folder`` and returns a fresh token."""

    def setup() -> dict:
        token = uuid.uuid4().hex
        with open(os.path.join(folder, token), "w") as f:
            f.write(str(os.getpid()))
        return {"token": token, "seen": tunefleet.worker_data()}

    return setup


def tagging(trial: optuna.Trial) -> float:
    """Records what ``worker_data()`` holds in each trial."""
    x = trial.suggest_float("x", -10, 10)
    data = tunefleet.worker_data()
    trial.set_user_attr("token", data["token"])
    trial.set_user_attr("seen", repr(data["seen"]))
    time.sleep(0.02)
    return (x - 2) ** 2


def hangs_at_5(trial: optuna.Trial) -> float:
    """Trial 5 writes its worker's pid to ``hung.pid`` (in the worker's folder) and hangs, so
    that a test can kill that worker in the middle of a trial it knows."""
    x = trial.suggest_float("x", -10, 10)
    if trial.number == 5:
        with open("hung.pid", "w") as f:
            f.write(f"{os.getpid()} {x!r}")
        time.sleep(120)
    time.sleep(0.05)
    return (x - 2) ** 2


def sleepy(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    time.sleep(0.3)
    return (x - 2) ** 2


def reports_steadily(trial: optuna.Trial) -> float:
    """20 reports, 0.1 s apart: the worker sends them on their own every 0.5 s."""
    x = trial.suggest_float("x", -10, 10)
    for step in range(20):
        trial.report(x + step, step)
        time.sleep(0.1)
    return (x - 2) ** 2


def sleepy_noted(trial: optuna.Trial) -> float:
    """``sleepy`` that notes in ./started/ (the worker's folder) each trial whose parameters it
    has: past that, the trial needs nothing more from its coordinator, and a worker that
    outlives the coordinator finishes it and hands it over. (A coordinator that dies while it
    draws the parameter the trial asked for cuts that trial: it is failed and retried.)"""
    x = trial.suggest_float("x", -10, 10)
    Path("started").mkdir(exist_ok=True)
    (Path("started") / str(trial.number)).touch()
    time.sleep(0.3)
    return (x - 2) ** 2



def _wait_until_joined(n: int) -> None:
    """Hold a worker process's trial until ``n`` worker processes (same folder) have each
    begun one: a test can then count on all of them taking trials, however slowly some
    start (a worker that came after the study ended would wait for its coordinator)."""
    joined = Path("joined")
    joined.mkdir(exist_ok=True)
    (joined / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(joined.iterdir())) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {n} workers took a trial in 120 s")
        time.sleep(0.05)


def quadratic_when_two_joined(trial: optuna.Trial) -> float:
    _wait_until_joined(2)
    return quadratic(trial)


def slow_quadratic_when_four_joined(trial: optuna.Trial) -> float:
    _wait_until_joined(4)
    return slow_quadratic(trial)


def tagging_when_two_joined(trial: optuna.Trial) -> float:
    _wait_until_joined(2)
    return tagging(trial)


def raises(trial: optuna.Trial) -> float:
    trial.suggest_float("x", -10, 10)
    raise ValueError("the objective's own error")


def _note(line: str) -> None:
    with open("notes.txt", "a") as f:  # one short write in append mode: lines never mix
        f.write(line + "\n")


def held_on_request(trial: optuna.Trial) -> float:
    """A 0.05 s trial that notes its start and end in ./notes.txt ("start|held|end NUMBER PID
    X"); while ./hold exists, a trial that starts waits (up to 300 s) for ./go before it ends,
    so that a test can hold every worker in a trial the storage holds as RUNNING."""
    x = trial.suggest_float("x", -10, 10)
    me = f"{trial.number} {os.getpid()} {x!r}"
    _note(f"start {me}")
    if Path("hold").exists():
        _note(f"held {me}")
        deadline = time.monotonic() + 300
        while not Path("go").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(0.05)
    _note(f"end {me}")
    return (x - 2) ** 2
