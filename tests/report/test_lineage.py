"""A trial continued by a retry counts once: ``tunefleet status`` says it was resumed and how
many steps were run again, instead of one more failure."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tunefleet import _attrs as attrs
from tunefleet.report import format_status, status_figures


def _study_with_a_continued_trial() -> optuna.Study:
    study = optuna.create_study()
    dist = {"x": FloatDistribution(0, 1)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5}, distributions=dist,
                                 intermediate_values={s: 1.0 for s in range(5)},
                                 system_attrs={attrs.FAIL_REASON: "worker was killed"}))
    study.add_trial(create_trial(value=0.1, params={"x": 0.5}, distributions=dist,
                                 intermediate_values={s: 0.5 for s in range(3, 10)},
                                 system_attrs={attrs.RETRY_OF: 0, "failed_trial": 0}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.7}, distributions=dist))
    study.add_trial(create_trial(value=0.2, params={"x": 0.9}, distributions=dist))
    return study


def test_status_counts_a_continued_trial_once_and_the_steps_run_again():
    fig = status_figures(_study_with_a_continued_trial())
    assert fig.states["fail"] == 2 and fig.continued == 1
    assert fig.redone_steps == 2  # steps 3 and 4 were reported by both
    short = fig.short()
    assert "1 failed" in short and "1 resumed" in short  # the objective failed once only
    text = format_status(fig)
    assert "1 failed trial(s) were continued by a retry" in text and "2 step(s)" in text
    assert fig.as_dict()["continued"] == 1


def test_a_retry_of_a_trial_that_did_not_fail_is_no_continuation():
    study = optuna.create_study()
    study.add_trial(create_trial(value=1.0))
    study.add_trial(create_trial(value=2.0, system_attrs={attrs.RETRY_OF: 0}))
    assert status_figures(study).continued == 0
