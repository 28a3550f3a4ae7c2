"""The data of the per-worker timeline: one bar per started trial, utilisation per worker."""

from __future__ import annotations

import datetime

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tunefleet import _attrs as attrs
from tunefleet.report import _timeline as tl
from tunefleet.report._trials import UNKNOWN_WORKER, finished_at, started_at, worker_of
from tests.report.studies import worker_attrs

T0 = 1_700_000_000.0
DIST = {"x": FloatDistribution(0, 1)}


def _trial(number: int, worker: str, start: float, end: float | None,
           state: TrialState = TrialState.COMPLETE):
    t = create_trial(state=state, params={"x": 0.5}, distributions=DIST,
                     value=1.0 if state == TrialState.COMPLETE else None,
                     system_attrs=worker_attrs(worker, T0 + start,
                                               None if end is None else T0 + end))
    t.number = number
    return t


def test_bar_per_started_trial_running_ends_now_waiting_skipped():
    trials = [_trial(0, "a/1", 0, 10), _trial(1, "b/2", 5, None, TrialState.RUNNING),
              create_trial(state=TrialState.WAITING, params={}, distributions={})]
    bars = tl.bars(trials, now=T0 + 30)
    assert [(b.number, b.worker, b.state) for b in bars] == [(0, "a/1", "COMPLETE"),
                                                             (1, "b/2", "RUNNING")]
    assert bars[0].duration == pytest.approx(10)
    assert bars[1].duration == pytest.approx(25)  # still running at "now"
    assert bars[0].value == 1.0 and bars[1].value is None


def test_plain_optuna_trial_falls_back_to_datetimes_and_unknown_worker():
    start = datetime.datetime.fromtimestamp(T0)
    t = create_trial(state=TrialState.COMPLETE, value=2.0, params={}, distributions={})
    t.datetime_start, t.datetime_complete = start, start + datetime.timedelta(seconds=7)
    assert worker_of(t) == UNKNOWN_WORKER
    assert started_at(t) == pytest.approx(T0)
    assert finished_at(t) == pytest.approx(T0 + 7)
    (bar,) = tl.bars([t], now=T0 + 100)
    assert bar.worker == UNKNOWN_WORKER and bar.duration == pytest.approx(7)


def test_tunefleet_times_win_over_optuna_datetimes_and_bad_values_are_ignored():
    t = _trial(0, "w", 3, 4)
    t.datetime_start = datetime.datetime.fromtimestamp(T0)
    assert started_at(t) == pytest.approx(T0 + 3)
    t.system_attrs[attrs.STARTED] = "garbage"
    assert started_at(t) == pytest.approx(T0)  # falls back, no exception


def test_utilisation_merges_overlaps_and_uses_two_windows():
    trials = [_trial(0, "A", 0, 10), _trial(1, "A", 5, 15), _trial(2, "A", 20, 30),
              _trial(3, "B", 30, 40, TrialState.FAIL)]
    uses = tl.utilisation(tl.bars(trials, now=T0 + 50), tl.hosts_by_worker(trials))
    a, b = uses
    assert (a.worker, a.n_trials, b.worker, b.n_trials) == ("A", 3, "B", 1)
    assert a.busy == pytest.approx(25)  # [0, 15] merged + [20, 30]
    assert a.share == pytest.approx(25 / 40)  # the study's window is [0, 40]
    assert a.within_own == pytest.approx(25 / 30)  # A's own span is [0, 30]
    assert b.busy == pytest.approx(10) and b.share == pytest.approx(0.25)
    assert b.within_own == pytest.approx(1.0)
    assert a.host == "A" and b.host == "B"
    assert tl.fleet_utilisation(uses) == pytest.approx((25 / 40 + 0.25) / 2)


def test_no_started_trial_no_utilisation():
    assert tl.utilisation([]) == []
    assert tl.fleet_utilisation([]) is None
