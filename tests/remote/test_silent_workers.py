"""Silent TCP workers never block (issue 19.4): ``tunefleet serve`` drops the connection of a
worker stopped past ``--worker-timeout`` and does not wait for it at the end; the workers that
are left run the retry; a ``tunefleet worker --processes N`` command does not wait for ever
for one of its processes that is stopped once the study is done."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import psutil
import pytest

from tests.helpers import wait_until
from tunefleet import _attrs as attrs

OBJECTIVES = Path(__file__).resolve().parents[1] / "hub" / "process_objectives.py"
TIMEOUT = 5

pytestmark = pytest.mark.timeout(300)


def states(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    if not (tmp_path / "hub.db").exists():
        return []
    try:
        return optuna.load_study(study_name="tunefleet",
                                 storage=f"sqlite:///{tmp_path}/hub.db").get_trials()
    except Exception:  # the study is not made yet
        return []


def ends(proc: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} still runs {timeout} s later") from None
    assert proc.returncode == 0, (getattr(proc, "stderr_head", "") + err)[-3000:]
    return out, err


def check_study(tmp_path: Path, ended: float) -> None:
    trials = states(tmp_path)
    names = [t.state.name for t in trials]
    assert names.count("COMPLETE") == 30
    assert "RUNNING" not in names and "WAITING" not in names
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "was silent for" in failed[0].system_attrs[attrs.FAIL_REASON]
    last = max(t.datetime_complete.timestamp() for t in trials)
    assert ended - last <= TIMEOUT + 5, f"ended {ended - last:.1f} s after the last trial"


@pytest.fixture
def gate(tmp_path, monkeypatch) -> Path:
    """Every trial of ``slow`` holds in its sleep while the returned file exists, so a test
    stops a worker inside a trial before the study can end (the marks are in ``sleeping/``)."""
    gate = tmp_path / "gate"
    gate.touch()
    (tmp_path / "sleeping").mkdir()
    monkeypatch.setenv("TF_GATE", str(gate))
    monkeypatch.setenv("TF_SLEEPING_DIR", str(tmp_path / "sleeping"))
    return gate


def in_trials(tmp_path: Path, n: int) -> set[int]:
    """Wait until N worker processes are held in a trial; their pids."""
    def held() -> set[int] | None:
        pids = {int(p.name) for p in (tmp_path / "sleeping").iterdir()}
        return pids if len(pids) == n else None

    return wait_until(held, 120, f"{n} worker processes in a trial")


def test_a_stopped_tcp_worker_does_not_hold_serve(procs, tmp_path, gate):
    serve = procs.serve(f"{OBJECTIVES}:slow", 0, "--n-trials", "30",
                        "--worker-timeout", str(TIMEOUT))
    port = procs.port_of(serve)
    workers = [procs.worker(port, "hub.key", "--reconnect-timeout", "0") for _ in range(3)]
    victim = workers[0]
    assert victim.pid in in_trials(tmp_path, 3)
    victim.send_signal(signal.SIGSTOP)
    gate.unlink()
    ends(serve, 120, "serve")
    check_study(tmp_path, time.time())
    for w in workers[1:]:
        ends(w, 30, "a worker that was not stopped")
    assert victim.poll() is None  # still stopped: nothing waited for it
    victim.send_signal(signal.SIGCONT)  # woken up, it finds its connection closed
    ends(victim, 30, "the stopped worker, continued")


def test_a_worker_command_does_not_wait_for_its_stopped_process(procs, tmp_path, gate):
    serve = procs.serve(f"{OBJECTIVES}:slow", 0, "--n-trials", "30",
                        "--worker-timeout", str(TIMEOUT))
    port = procs.port_of(serve)
    command = procs.worker(port, "hub.key", "--processes", "3", "--reconnect-timeout", "0")
    held = in_trials(tmp_path, 3)
    kids = {p.pid for p in psutil.Process(command.pid).children()}
    assert held == kids, (held, kids)  # the three forked workers, each held in a trial
    victim = min(kids)
    os.kill(victim, signal.SIGSTOP)
    gate.unlink()
    ends(serve, 120, "serve")
    check_study(tmp_path, time.time())
    ends(command, 30, "the worker command")
    assert not psutil.pid_exists(victim)
