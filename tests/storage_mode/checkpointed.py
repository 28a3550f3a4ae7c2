"""An objective that checkpoints every step (``tunefleet.checkpoint``), for the storage-mode
and Slurm tests of trials that survive their workers.

Every step it runs is one line ``trial step`` appended to TF_STEP_LOG/<pid> (one write, so the
files always hold whole lines): the tests count the steps run against the ideal, and wait for
a worker seen mid-trial before they kill or stop it. With TF_BEGUN_LOG, TF_BEGUN_LOG/<pid>
holds the step begun last (``trial step``), written before its sleep. With TF_GATE, from step 3
on, each step saved holds while that file exists (120 s at most) until the worker is asked to
stop (SIGTERM), and says so in ``held.<pid>`` beside the gate ("trial step"): a test stops the
workers mid-trial, however loaded the machine."""

from __future__ import annotations

import os
import time

import optuna

import tunefleet


def stepping(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    steps = int(os.environ.get("TF_STEPS", "20"))
    ckpt = tunefleet.checkpoint.load(trial)
    start = int((ckpt / "step").read_text()) + 1 if ckpt else 0
    log = os.path.join(os.environ["TF_STEP_LOG"], str(os.getpid()))
    begun = os.environ.get("TF_BEGUN_LOG")  # "trial step" of the step now begun, if set
    for step in range(start, steps):
        if begun:
            with open(os.path.join(begun, str(os.getpid())), "w") as f:
                f.write(f"{trial.number} {step}")
        time.sleep(float(os.environ.get("TF_SLEEP", "0.1")))
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, f"{trial.number} {step}\n".encode())
        finally:
            os.close(fd)
        with tunefleet.checkpoint.save(trial) as d:
            (d / "step").write_text(str(step))
        gate = os.environ.get("TF_GATE")
        if gate and step >= 3 and os.path.exists(gate):
            _hold(gate, f"{trial.number} {step}")
    return x * x


def _hold(gate: str, where: str) -> None:
    held = os.path.join(os.path.dirname(gate), f"held.{os.getpid()}")
    with open(f"{held}.tmp", "w") as f:
        f.write(where)
    os.replace(f"{held}.tmp", held)
    deadline = time.monotonic() + 120
    while (os.path.exists(gate) and not tunefleet.checkpoint.stop_requested()
           and time.monotonic() < deadline):
        time.sleep(0.02)


def bucket():
    """The tests' ``--checkpoint-store``: an Optuna artifact store in the folder TF_BUCKET,
    standing in for a bucket that workers on hosts with no shared disk all reach."""
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(os.environ["TF_BUCKET"])
