"""Liveness of hub workers: a worker that stops answering (SIGSTOP: a hung GPU job, a host cut
off) has its trial failed and retried after ``worker_timeout``, and is killed (issue 19.4:
tests/hub/test_hung_workers.py); a late result of a TCP worker is refused (the lab test)."""

from __future__ import annotations

import logging
import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet import _attrs as attrs

pytestmark = pytest.mark.timeout(300)


def stops_once(trial: optuna.Trial) -> float:
    """Trial 0 stops its own worker (SIGSTOP) and, once continued, returns a value no
    genuine trial returns: if it ever lands in the study, a late result was written."""
    x = trial.suggest_float("x", -1, 1)
    if trial.number == 0:
        folder = os.environ["TUNEFLEET_TEST_DIR"]
        with open(os.path.join(folder, "stopped.pid"), "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)
        return 1000.0 + x
    time.sleep(0.2)
    return x * x


def test_a_stopped_worker_loses_its_trial_and_is_killed(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TUNEFLEET_TEST_DIR", str(tmp_path))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}",
                                sampler=optuna.samplers.RandomSampler(seed=1))
    gone: list[bool] = []

    def check_the_stopped_worker(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # Trial 0 was failed for silence: its worker was killed at once (and reaped).
        if trial.number == 0 and not gone:
            pid = int((tmp_path / "stopped.pid").read_text())
            try:
                os.kill(pid, 0)
                gone.append(False)
            except ProcessLookupError:
                gone.append(True)

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            tunefleet.optimize(study, stops_once, n_trials=60, n_workers=3, worker_timeout=3,
                               callbacks=[check_the_stopped_worker])
    finally:
        optuna.logging.disable_propagation()
    trials = study.trials
    first = trials[0]
    assert first.state == TrialState.FAIL and first.values is None
    assert "was silent for" in first.system_attrs[attrs.FAIL_REASON]
    retries = [t for t in trials if t.system_attrs.get(attrs.RETRY_OF) == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == first.params
    assert all(t.value < 1000 for t in trials if t.state == TrialState.COMPLETE)
    assert gone == [True], "trial 0's worker was not killed"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 60
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not any("late result from worker" in r.getMessage() for r in caplog.records)


def test_worker_timeout_below_three_beats_is_refused():
    study = optuna.create_study()
    with pytest.raises(ValueError, match="worker_timeout must be at least 3"):
        tunefleet.optimize(study, stops_once, n_trials=1, worker_timeout=1)
