"""Many real worker processes on one storage: the exact budget, heartbeats, retries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tunefleet import _attrs as attrs
from tunefleet.report._trials import finished_at
from tunefleet._studies import open_storage

HERE = Path(__file__).parent
SLOW = f"{HERE / 'objectives.py'}:slow"


def start_workers(n: int, url: str, study: str, total: int, target: str = SLOW,
                  extra: tuple[str, ...] = (), sleep: str = "0.2",
                  env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    env = {**os.environ, "TF_SLEEP": sleep, **(env or {})}
    cmd = [sys.executable, "-m", "tunefleet", "worker", target, "--storage", url, "--study", study,
           "--n-trials", str(total), "--heartbeat-interval", "1", "--grace-period", "3", "-q",
           *extra]
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(n)]


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials()


def kill_one_mid_trial(procs: list[subprocess.Popen], url: str, study: str,
                       timeout: float) -> tuple[int, optuna.trial.FrozenTrial]:
    """SIGKILL a worker while it runs a trial that already has its parameters (checked again
    after the kill: a trial that ended just before it does not count)."""
    by_id = {f"{socket.gethostname()}/{p.pid}": p for p in procs}

    def killed_mid_trial() -> tuple[int, optuna.trial.FrozenTrial] | None:
        trials = trials_of(url, study)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        for t in trials:
            proc = by_id.get(t.system_attrs.get(attrs.WORKER))
            if done >= 4 and t.state == TrialState.RUNNING and "y" in t.params and proc:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                del by_id[t.system_attrs[attrs.WORKER]]
                after = next(u for u in trials_of(url, study) if u.number == t.number)
                if after.state == TrialState.RUNNING:
                    return proc.pid, t
                break
        return None

    return wait_until(killed_mid_trial, timeout, "a worker seen running a trial", interval=0.05)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("workers did not finish in time")
        assert p.returncode == 0, f"worker {p.pid} exited {p.returncode}: {err[-2000:]}"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("storage_url, n_workers", [("sqlite", 8), ("journal", 8),
                                                   ("postgresql", 4), ("mysql", 4)],
                         indirect=["storage_url"], ids=["sqlite", "journal", "postgresql",
                                                        "mariadb"])
def test_fleet_exact_budget_survives_a_killed_worker(storage_url, n_workers, cli, tmp_path):
    total = 40
    assert cli("init", "--storage", storage_url, "--study", "fleet",
               "--sampler", "random").returncode == 0
    # Trials from the 5th on are held until a worker was killed in one: a poll of the
    # storage, slow on a loaded machine, cannot miss them all.
    hold = tmp_path / "hold"
    hold.touch()
    procs = start_workers(n_workers, storage_url, "fleet", total, sleep="0.5",
                          env={"TF_HOLD": str(hold)})
    try:
        killed_pid, victim = kill_one_mid_trial(procs, storage_url, "fleet", 120)
    finally:
        hold.unlink()
    alive = [p for p in procs if p.returncode is None]
    wait_all(alive, timeout=180)

    trials = trials_of(storage_url, "fleet")
    states = [t.state for t in trials]
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == total, [  # exact, over all workers
        (t.number, t.state.name, t.system_attrs.get(attrs.WORKER), t.system_attrs.get(attrs.RETRY_OF))
        for t in trials]
    assert TrialState.RUNNING not in states
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    # The killed worker's trial was failed by the others and its parameters run again.
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL
    assert "stopped sending heartbeats" in dead.system_attrs[attrs.FAIL_REASON]
    retries = [t for t in trials if t.system_attrs.get(attrs.RETRY_OF) == victim.number]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert retries[0].system_attrs[attrs.RETRY_COUNT] == 1
    # What the report draws the per-worker timeline from.
    workers = set()
    for t in done:
        sa = t.system_attrs
        assert sa[attrs.HOST] == socket.gethostname()
        assert sa[attrs.STARTED] <= finished_at(t)  # datetime_complete, from the same clock
        workers.add(sa[attrs.WORKER])
    assert len(workers) >= 2
    assert f"{socket.gethostname()}/{killed_pid}" not in {
        t.system_attrs[attrs.WORKER] for t in done if t.number > victim.number}
    # `tunefleet best` reads every storage back.
    best = cli("best", "--storage", storage_url, "--study", "fleet")
    assert best.returncode == 0 and f"{total} complete" in best.stdout, best.stderr
    assert f"best value {min(t.value for t in done)}" in best.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_budget_counts_the_study_not_the_worker(storage_url, cli):
    """A second round with a larger total tops the study up to it; pruned trials count."""
    target = f"{HERE / 'objectives.py'}:pruned_sometimes"
    wait_all(start_workers(3, storage_url, "s", 10, target=target), timeout=90)
    wait_all(start_workers(2, storage_url, "s", 16, target=target), timeout=90)
    trials = trials_of(storage_url, "s")
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 16
    assert any(t.state == TrialState.PRUNED for t in trials)
    # A worker that joins a full study leaves at once and runs nothing.
    r = cli("worker", target, "--storage", storage_url, "--study", "s", "--n-trials", "16")
    assert r.returncode == 0 and "0 complete" in r.stdout and "16/16" in r.stdout
    assert len(trials_of(storage_url, "s")) == len(trials)
