"""Bad objectives never crash a worker or the coordinator: every value ``study.optimize`` would
not store is a FAIL with the reason, and nothing is left RUNNING or WAITING."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet import _attrs as attrs

pytestmark = pytest.mark.timeout(300)


class Unpicklable:
    """Neither a number nor picklable, and its text reads as a number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        return "42"


BAD = [None, "12", "not a number", float("nan"), [1.0, 2.0], Unpicklable()]


def objective(trial: optuna.Trial):
    trial.suggest_float("x", 0, 1)
    kind = trial.number % (len(BAD) + 2)
    if kind < len(BAD):
        return BAD[kind]
    if kind == len(BAD):
        trial.set_user_attr("lock", threading.Lock())  # refused at the call: TypeError
    return 1.0


def test_bad_values_and_attributes_fail_their_trials_and_nothing_dies(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'bad.db'}")
    n = 2 * (len(BAD) + 2)
    tunefleet.optimize(study, objective, n_trials=n, n_workers=2, catch=(TypeError,))
    trials = study.trials
    assert len(trials) == n  # no retry: no worker died
    by_kind = {k: [t for t in trials if t.number % (len(BAD) + 2) == k]
               for k in range(len(BAD) + 2)}
    for k in range(len(BAD)):
        for t in by_kind[k]:
            assert t.state == TrialState.FAIL, (BAD[k], t.state)
    for t in by_kind[len(BAD)]:  # the objective raised TypeError at set_user_attr
        assert t.state == TrialState.FAIL and "JSON" in t.system_attrs[attrs.FAIL_REASON]
    for t in by_kind[len(BAD) + 1]:
        assert t.state == TrialState.COMPLETE and t.value == 1.0
    unpicklable = by_kind[len(BAD) - 1]
    assert all("unpicklable Unpicklable" in t.system_attrs[attrs.FAIL_REASON]
               for t in unpicklable)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [t for t in trials if attrs.RETRY_OF in t.system_attrs]
