"""Storage workers against bad objectives and silences: every value ``study.optimize`` marks
FAIL is FAIL here with the reason, a worker declared dead that comes back drops its result and
carries on, and no worker leaves a FAIL placeholder, a RUNNING or a WAITING trial behind."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.storage_mode.test_fleet import start_workers, trials_of, wait_all
from tunefleet import _attrs as attrs

HERE = Path(__file__).parent
DB_KINDS = dict(argnames="storage_url", argvalues=["sqlite", "postgresql"], indirect=True)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(**DB_KINDS)
def test_bad_return_values_fail_their_trial_with_the_reason(storage_url, cli):
    assert cli("init", "--storage", storage_url, "--study", "bad").returncode == 0
    r = cli("worker", f"{HERE / 'objectives.py'}:bad_values", "--storage", storage_url,
            "--study", "bad", "--n-trials", "10", env={"TF_SLEEP": "0"})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "10 complete, 0 pruned, 5 failed" in r.stdout
    trials = trials_of(storage_url, "bad")
    assert [t.number for t in trials] == list(range(15))  # the failures did not count
    reasons = {t.number: t.system_attrs.get(attrs.FAIL_REASON) for t in trials
               if t.state == TrialState.FAIL}
    assert reasons[1] == "The value None could not be cast to float."
    assert reasons[2] == "The value 'text' could not be cast to float"
    assert reasons[3] == "The value nan is not acceptable"
    assert reasons[4] == ("objective returned [1.0, 2.0]: The number of the values 2 did not "
                          "match the number of the objectives 1")
    assert reasons[5].startswith("The value <unlocked _thread.lock object at 0x")
    assert reasons[5].endswith("> could not be cast to float")
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 10


@pytest.mark.timeout(240)
@pytest.mark.parametrize("storage_url", ["sqlite", "postgresql", "journal", "mysql"],
                         indirect=True, ids=["sqlite", "postgresql", "journal", "mariadb"])
def test_workers_leave_no_placeholder_trial(storage_url, cli):
    """Workers racing for the last places of the budget used to leave one FAIL trial each."""
    assert cli("init", "--storage", storage_url, "--study", "end",
               "--sampler", "random").returncode == 0
    wait_all(start_workers(4, storage_url, "end", 20, sleep="0.05"), timeout=180)
    trials = trials_of(storage_url, "end")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 20


@pytest.mark.timeout(240)
@pytest.mark.parametrize(**DB_KINDS)
def test_a_worker_declared_dead_that_comes_back_carries_on(storage_url, cli, tmp_path):
    total = 16
    assert cli("init", "--storage", storage_url, "--study", "back",
               "--sampler", "random").returncode == 0
    extra = {"TF_STOP_AT": "3", "TF_STOP_MARK": str(tmp_path / "stopped")}
    procs = start_workers(3, storage_url, "back", total, target=f"{HERE / 'objectives.py'}"
                          ":reporting", sleep="0.1", env=extra)
    by_pid = {p.pid: p for p in procs}

    def stopped_worker():
        if (tmp_path / "stopped").exists():
            t3 = next((t for t in trials_of(storage_url, "back") if t.number == 3), None)
            if t3 is not None and t3.system_attrs.get(attrs.WORKER):
                return by_pid[int(t3.system_attrs[attrs.WORKER].rsplit("/", 1)[1])]
        return None

    # trial 3 stops its own worker after its first report
    victim = wait_until(stopped_worker, 120, "trial 3 to stop its worker")

    def failed_by_others() -> bool:
        t3 = next(t for t in trials_of(storage_url, "back") if t.number == 3)
        return t3.state == TrialState.FAIL

    # silent past the grace period: the others fail trial 3
    wait_until(failed_by_others, 180, "the others to fail trial 3", interval=0.2)
    victim.send_signal(signal.SIGCONT)
    out, err = victim.communicate(timeout=120)
    assert victim.returncode == 0, err
    assert "Traceback" not in err
    assert err.count("trial 3 was failed by another worker while this one was silent") == 1
    assert "1 dropped" in out
    wait_all([p for p in procs if p is not victim], timeout=120)
    trials = trials_of(storage_url, "back")
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == total
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    t3 = next(t for t in trials if t.number == 3)
    assert "stopped sending heartbeats" in t3.system_attrs[attrs.FAIL_REASON]
    assert t3.intermediate_values == {0: pytest.approx(t3.params["x"] ** 2 + 5)}  # nothing late
    retry = [t for t in trials if t.system_attrs.get(attrs.RETRY_OF) == 3]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == t3.params
    assert states.count(TrialState.FAIL) == 1  # trial 3 only: no placeholder
