"""Objectives the storage-mode and Slurm tests run in real worker processes."""

import os
import time

import optuna


def slow(trial: optuna.Trial) -> float:
    """Sleeps TF_SLEEP seconds (default 0.2) so that trials overlap and a worker can be killed
    in the middle of one."""
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_int("y", 0, 3)
    hold = os.environ.get("TF_HOLD")  # trials from the 5th on wait while this file exists
    deadline = time.monotonic() + 120
    while hold and trial.number >= 4 and os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(os.environ.get("TF_SLEEP", "0.2")))
    return x * x + y


def slow_when_two_joined(trial: optuna.Trial) -> float:
    """``slow`` once two worker processes (same folder) have each begun a trial: both take
    trials however slowly one of them starts on a loaded machine."""
    from tests.remote.objectives import _wait_until_joined

    _wait_until_joined(2)
    return slow(trial)


def flaky(trial: optuna.Trial) -> float:
    """Raises on every third trial number."""
    x = trial.suggest_float("x", -10, 10)
    if trial.number % 3 == 0:
        raise RuntimeError(f"boom on trial {trial.number}")
    return x * x


def pruned_sometimes(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    if trial.number % 4 == 1:
        raise optuna.TrialPruned()
    return x * x


def bad_values(trial: optuna.Trial) -> object:
    """Returns what ``study.optimize`` marks FAIL on trials 1-5 (None, text, NaN, two values
    for one objective, an object that is no number and cannot be pickled), a number else."""
    import threading

    x = trial.suggest_float("x", -10, 10)
    bad = {1: None, 2: "text", 3: float("nan"), 4: [1.0, 2.0], 5: threading.Lock()}
    return bad.get(trial.number, x * x)


def reporting(trial: optuna.Trial) -> float:
    """Reports an intermediate value every step (a dead worker that comes back hits its failed
    trial here). Trial number TF_STOP_AT, first run only, stops its own process with SIGSTOP
    after its first report: a worker silent past the grace period, stopped at a known point.
    Each step first touches TF_MARKS/<pid> (a test waits for it before cutting the network).
    From step 1 on, while the file TF_GATE exists, the step holds (120 s at most) and says so in
    TF_MARKS/<pid>.held ("number step"): a test cuts a worker off in a trial that cannot end
    before the cut, however loaded the machine."""
    import signal

    x = trial.suggest_float("x", -10, 10)
    steps = int(os.environ.get("TF_STEPS", "5"))
    marks = os.environ.get("TF_MARKS")
    for step in range(steps):
        trial.report(x * x + steps - step, step)
        if str(trial.number) == os.environ.get("TF_STOP_AT") and step == 0:
            try:  # exactly one process stops, once
                os.close(os.open(os.environ["TF_STOP_MARK"], os.O_CREAT | os.O_EXCL))
                os.kill(os.getpid(), signal.SIGSTOP)
            except FileExistsError:
                pass
        if marks:  # whole or not at all: a test reads it while the next step writes it
            mark = os.path.join(marks, str(os.getpid()))
            with open(f"{mark}.tmp", "w") as f:
                f.write(f"{trial.number} {step}\n")
            os.replace(f"{mark}.tmp", mark)
            gate = os.environ.get("TF_GATE")
            if gate and step >= 1 and os.path.exists(gate):
                with open(f"{mark}.tmp", "w") as f:
                    f.write(f"{trial.number} {step}\n")
                os.replace(f"{mark}.tmp", f"{mark}.held")
                deadline = time.monotonic() + 120
                while os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.02)
        time.sleep(float(os.environ.get("TF_SLEEP", "0.1")))
    return x * x
