"""Hung workers never block (issue 19.4): a local worker silent for ``worker_timeout`` (here
stopped with SIGSTOP) is killed with everything below it and its place taken; the run ends
within ``worker_timeout`` plus a few seconds of its last trial, with the budget exact and
nothing RUNNING, and the stopped process is gone."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest

from tests.helpers import wait_until
from tunefleet import _attrs as attrs

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVES = Path(__file__).resolve().parent / "process_objectives.py"
TIMEOUT = 5

pytestmark = pytest.mark.timeout(300)


def complete(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # not made yet
        return 0


def test_a_stopped_worker_is_killed_and_the_run_ends(tmp_path):
    db = tmp_path / "s.db"
    cmd = [sys.executable, "-m", "tunefleet", "run", f"{OBJECTIVES}:slow_when_three_joined",
           "--n-trials", "30", "--workers", "3", "--worker-timeout", str(TIMEOUT),
           "--storage", f"sqlite:///{db}", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    run = psutil.Process(proc.pid)

    def three_workers_at_work() -> list[psutil.Process] | None:
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before three workers "
                                 f"were at work:\n{proc.stderr.read()[-3000:]}")
        workers = run.children()
        return workers if len(workers) == 3 and complete(db) >= 2 else None

    victim = wait_until(three_workers_at_work, 120, "3 workers and 2 complete trials")[0]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.kill(victim.pid, signal.SIGCONT)
        proc.kill()
        raise AssertionError("the run is still running 120 s after a worker was stopped")
    ended = time.time()
    assert proc.returncode == 0, err
    study = optuna.load_study(study_name="tunefleet", storage=f"sqlite:///{db}")
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 30
    assert "RUNNING" not in states and "WAITING" not in states
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1  # the stopped worker's trial, retried
    assert "was silent for" in failed[0].system_attrs[attrs.FAIL_REASON]
    last = max(t.datetime_complete.timestamp() for t in trials)
    assert ended - last <= TIMEOUT + 5, f"ended {ended - last:.1f} s after the last trial"
    assert not psutil.pid_exists(victim.pid)  # killed and reaped
