"""The report with plotly alone (``tunefleet[report]``: importances by PED-ANOVA, no
scikit-learn or pandas), and the rates of a study that has ended."""

from __future__ import annotations

import re

import pytest

from tests.cli.conftest import without  # noqa: F401  (fixture: a Python without some modules)
from tests.report.studies import fill, new_study
from tunefleet.report._status import format_status, status_figures

NOW = 1_800_000_000.0


def test_report_with_plotly_alone_ranks_importances_by_ped_anova(cli, without, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    fill(new_study(storage=url, name="light"), 60, workers=2, seed=4)
    r = cli("report", "--storage", url, "--output", "r.html", cwd=tmp_path,
            env=without("sklearn", "pandas", "scipy"))
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text()
    kinds = dict(re.findall(r'data-section="(\w+)" data-kind="(\w+)"', page))
    assert kinds["importances"] == "chart", kinds
    assert "(PED-ANOVA)" in page and "(fANOVA)" not in page
    # every other chart is drawn too
    for key in ("history", "parallel", "slice", "contour", "timeline"):
        assert kinds[key] == "chart", (key, kinds)


def test_with_scikit_learn_the_report_keeps_fanova():
    """The test extra installs scikit-learn: then importances are Optuna's default, fANOVA."""
    from tunefleet.report._sections import Context

    study = new_study()
    fill(study, 80, workers=2, seed=4)
    ctx = Context(study, study.get_trials(deepcopy=False))
    assert ctx.importance_method == "fANOVA"
    found = ctx.importances()
    assert found is not None and max(found, key=found.get) == "x"


def test_rates_of_an_ended_study_stay_put():
    study = new_study()
    fill(study, 30, workers=3, duration=60.0, end=NOW - 3600)
    trials = study.get_trials(deepcopy=False)
    first = min(t.system_attrs["tunefleet:started"] for t in trials)
    last = max(t.system_attrs["tunefleet:finished"] for t in trials)
    an_hour = status_figures(study, now=NOW)
    a_day = status_figures(study, now=NOW + 86400)
    assert an_hour.per_minute_overall == pytest.approx(30 / ((last - first) / 60))
    assert a_day.per_minute_overall == an_hour.per_minute_overall
    assert a_day.per_minute == an_hour.per_minute > 0  # the last 10 minutes of its activity
    assert format_status(a_day) == format_status(an_hour)
