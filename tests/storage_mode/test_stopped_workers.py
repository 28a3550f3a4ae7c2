"""Storage mode, issue 19.4 and 19.5. Here "the run" is each ``tunefleet worker`` process (one
command, or one srun task) with what its objective starts: none of its waits is unbounded.
Waiting for the trials of others ends when they finish or when their worker is declared dead
(the grace period): a worker stopped with SIGSTOP does not hold the others, which fail its
trial, run the retry and exit with the budget exact and nothing RUNNING, while it is still
stopped; continued, it drops its late result and exits at once. The processes an objective
leaves running end with its trial, so the command's output pipes close when it exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.storage_mode.test_fleet import start_workers, trials_of, wait_all
from tunefleet import _attrs as attrs

OBJECTIVES = Path(__file__).resolve().parents[1] / "hub" / "process_objectives.py"

pytestmark = pytest.mark.timeout(300)


def test_a_stopped_worker_holds_neither_the_others_nor_a_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    total = 16
    init = subprocess.run([sys.executable, "-m", "tunefleet", "init", "--storage", url,
                           "--study", "s", "--sampler", "random"], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    sleeping = tmp_path / "sleeping"
    sleeping.mkdir()
    procs = start_workers(3, url, "s", total, target=f"{OBJECTIVES}:slow",
                          env={"TF_SLEEPING_DIR": str(sleeping), "TF_SLOW_S": "1.5"})
    by_id = {f"{socket.gethostname()}/{p.pid}": p for p in procs}

    def stop_one_mid_trial() -> subprocess.Popen | None:
        trials = trials_of(url, "s")
        if sum(t.state == TrialState.COMPLETE for t in trials) < 2:
            return None
        for t in trials:
            proc = by_id.get(t.system_attrs.get(attrs.WORKER))
            # Stopped in its objective's sleep, not in a write that holds SQLite's lock.
            if t.state == TrialState.RUNNING and proc is not None \
                    and (sleeping / str(proc.pid)).exists():
                proc.send_signal(signal.SIGSTOP)
                if (sleeping / str(proc.pid)).exists():
                    return proc
                proc.send_signal(signal.SIGCONT)  # its sleep had ended: another try
        return None

    victim = wait_until(stop_one_mid_trial, 120, "a worker in a trial")
    wait_all([p for p in procs if p is not victim], timeout=120)  # while it is still stopped
    assert victim.poll() is None
    trials = trials_of(url, "s")
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == total
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    victim.send_signal(signal.SIGCONT)
    out, err = victim.communicate(timeout=60)
    assert victim.returncode == 0, err
    assert [t.state for t in trials_of(url, "s")].count(TrialState.COMPLETE) == total


def test_what_the_objective_leaves_running_ends_with_the_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    mark = uuid.uuid4().hex
    env = {**os.environ, "TF_TEST_RUN": mark}
    cmd = [sys.executable, "-m", "tunefleet", "worker", f"{OBJECTIVES}:leaves_sleep",
           "--storage", url, "--study", "s", "--n-trials", "4", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=120)  # the pipes close: no process holds them
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the worker's output pipes stayed open") from None
    assert proc.returncode == 0, err
    assert [t.state for t in trials_of(url, "s")].count(TrialState.COMPLETE) == 4
    left = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and \
                    p.environ().get("TF_TEST_RUN") == mark:
                left.append((p.pid, p.cmdline()))
        except psutil.Error:
            continue
    assert not left


def test_a_worker_cut_off_inside_a_transaction_holds_no_lock_past_the_grace_period(postgres):
    """PostgreSQL: a worker cut off by the network inside a write to its trial (Optuna's
    writes lock the trial's row: SELECT ... FOR UPDATE) leaves its transaction open on the
    server, which keeps it, and the lock, until its TCP keepalive notices, hours later. The
    other workers, failing that trial, waited on the lock for as long. The server now ends such
    a session after the grace period."""
    import threading

    import optuna
    from sqlalchemy import text

    from tunefleet.storage_mode._db import open_worker_storage

    url = postgres.new_database("cut_off_in_a_transaction")
    # A grace period of 10 s, not less: the server ends any of this client's sessions idle
    # in a transaction for that long, the opening's own too (CI, loaded: "server closed the
    # connection unexpectedly" as the storage was opened with 3 s).
    storage = open_worker_storage(url, heartbeat_interval=1, grace_period=10)
    study = optuna.create_study(storage=storage, study_name="s")
    trial_id = storage.create_new_trial(study._study_id)
    storage.record_heartbeat(trial_id)
    held = storage.engine.connect()  # the cut-off worker's connection
    held.begin()
    held.execute(text("SELECT trial_id FROM trials WHERE trial_id = :t FOR UPDATE"),
                 {"t": trial_id})  # as in trial.report: then the network goes
    other = optuna.storages.RDBStorage(url)  # another worker failing the trial
    done = threading.Event()

    def fail_it() -> None:
        other.set_trial_state_values(trial_id, TrialState.FAIL)
        done.set()

    threading.Thread(target=fail_it, daemon=True).start()
    assert done.wait(60), "the other worker still waits on the cut-off worker's lock"
    assert other.get_trial(trial_id).state == TrialState.FAIL
    with pytest.raises(Exception):  # the server ended the cut-off session
        held.execute(text("SELECT 1"))
    held.invalidate()
