"""The data behind each section of the report, and the edge cases that must give a note instead
of a chart (never an exception)."""

from __future__ import annotations

import math
import re

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet.errors import UsageError
from tunefleet.report import _sections as S
from tunefleet.report import _timeline as tl
from tunefleet.report._html import render
from tests.report.studies import fill, new_study

NOW = 1_800_000_000.0
CHART_KEYS = ["history", "importances", "parallel", "slice", "contour", "timeline",
              "utilisation"]


def _sections(study: optuna.Study, **kw) -> dict[str, S.Section]:
    out = {s.key: s for s in S.build_sections(study, **kw)}
    for sec in out.values():  # a builder that raised is a bug, not an edge case
        assert not (sec.note or "").startswith("This section could not be drawn"), sec
    return out


def _points(fig) -> int:
    return sum(len(t.x) for t in fig.data if getattr(t, "x", None) is not None)


@pytest.fixture(scope="module")
def single() -> optuna.Study:
    study = new_study()
    fill(study, 60, workers=3, fail_every=9, prune_every=7, running=2, seed=1, end=NOW)
    return study


@pytest.fixture(scope="module")
def single_sections(single) -> dict[str, S.Section]:
    return _sections(single, now=NOW + 5)


def test_sections_in_order_and_each_chart_drawn(single_sections):
    assert list(single_sections) == ["best", *CHART_KEYS]  # no Pareto front: one objective
    for key in CHART_KEYS:
        assert single_sections[key].figure is not None, key


def test_best_trial_is_the_studys_best(single, single_sections):
    rows = dict((str(k), v) for k, v in single_sections["best"].table.rows)
    best = single.best_trial
    assert rows["trial"] == best.number and rows["objective value"] == best.value
    for name, value in best.params.items():
        assert rows[f"param {name}"] == value
    assert rows["worker"] == best.system_attrs["tunefleet:worker"]


def test_history_has_every_completed_trial_with_its_real_number(single, single_sections):
    fig = single_sections["history"].figure
    done = [t for t in single.trials if t.state == TrialState.COMPLETE]
    values = dict(zip(fig.data[0].x, fig.data[0].y))
    assert values == {t.number: t.value for t in done}
    best_line = list(fig.data[1].y)  # running minimum over trial numbers
    assert min(best_line) == pytest.approx(single.best_value)


def test_importances_rank_the_parameter_that_drives_the_objective(single_sections):
    fig = single_sections["importances"].figure
    importance = dict(zip(fig.data[0].y, fig.data[0].x))
    assert set(importance) == {"x", "lr", "layers", "opt"}
    assert sum(importance.values()) == pytest.approx(1.0, abs=1e-6)
    assert max(importance, key=importance.get) == "x"  # the objective is mostly x ** 2


def test_parallel_coordinates_has_objective_and_every_parameter(single_sections):
    fig = single_sections["parallel"].figure
    texts = {a.text for a in fig.layout.annotations} | {
        getattr(ax, "title", None) and ax.title.text for ax in _xaxes(fig)}
    labels = " ".join(str(t) for t in texts if t) + " " + fig.to_json()
    for name in ("objective value", "x", "lr", "layers", "opt"):
        assert name in labels


def _xaxes(fig):
    return [fig.layout[k] for k in fig.layout if k.startswith("xaxis")]


def test_slice_has_one_panel_per_parameter(single, single_sections):
    fig = single_sections["slice"].figure
    n_done = sum(t.state == TrialState.COMPLETE for t in single.trials)
    assert len(fig.data) == 4
    assert all(len(t.x) == n_done for t in fig.data)
    titles = {ax.title.text for ax in _xaxes(fig)}
    assert titles == {"x", "lr", "layers", "opt"}


def test_contour_of_the_three_most_important_parameters(single_sections):
    sec = single_sections["contour"]
    assert any(t.type == "contour" for t in sec.figure.data)
    assert "3 most important of 4 parameters" in sec.note


def test_timeline_one_bar_per_started_trial_per_worker(single, single_sections):
    fig = single_sections["timeline"].figure
    by_state = {t.name: t for t in fig.data}
    expected = {s: sum(t.state.name.lower() == s for t in single.trials)
                for s in ("complete", "pruned", "fail", "running")}
    assert {k: len(v.y) for k, v in by_state.items()} == expected
    workers = {w for t in fig.data for w in t.y}
    assert workers == {t.system_attrs["tunefleet:worker"] for t in single.trials}
    # durations (ms) match what the trials recorded
    durations = sorted(d for t in fig.data if t.name != "running" for d in t.x)
    recorded = sorted(1000 * (t.system_attrs["tunefleet:finished"]
                              - t.system_attrs["tunefleet:started"])
                      for t in single.trials if t.state.is_finished())
    assert durations == pytest.approx(recorded)


def test_utilisation_chart_and_table_match_the_timeline(single, single_sections):
    sec = single_sections["utilisation"]
    uses = tl.utilisation(tl.bars(single.trials, NOW + 5), tl.hosts_by_worker(single.trials))
    shares = dict(zip(sec.figure.data[0].y, sec.figure.data[0].x))
    assert set(shares) == {u.worker for u in uses}
    assert all(0 < v <= 100 for v in shares.values())
    table = {row[0]: row for row in sec.table.rows}
    for u in uses:
        assert table[u.worker][1] == u.worker.split("/")[0] == u.host
        assert table[u.worker][2] == u.n_trials
        assert shares[u.worker] == pytest.approx(100 * u.share)


def test_multi_objective_pareto_front_and_best_trials():
    study = new_study(("minimize", "maximize"))
    fill(study, 40, workers=2, seed=3)
    secs = _sections(study)
    assert "pareto" in secs and secs["pareto"].figure is not None
    front_numbers = {t.number for t in study.best_trials}
    assert {row[0] for row in secs["best"].table.rows} == front_numbers
    assert secs["best"].table.headers[:3] == ["trial", "objective 0", "objective 1"]
    drawn = _points(secs["pareto"].figure)
    assert drawn == sum(t.state == TrialState.COMPLETE for t in study.trials)
    # per-objective plots follow --objective
    secs1 = _sections(study, objective=1)
    hist = secs1["history"].figure.data[0]
    assert dict(zip(hist.x, hist.y)) == {t.number: t.values[1] for t in study.trials}


def test_three_objectives_draw_a_3d_front_four_give_a_note():
    three = new_study(("minimize",) * 3)
    fill(three, 20, seed=4)
    assert _sections(three)["pareto"].figure.data[0].type == "scatter3d"
    four = new_study(("minimize",) * 4)
    fill(four, 20, seed=4)
    sec = _sections(four)["pareto"]
    assert sec.figure is None and "2 or 3 objectives" in sec.note


def test_objective_out_of_range_is_a_usage_error(single):
    with pytest.raises(UsageError, match="objective 1 does not exist"):
        render(single, objective=1)


# --- edge cases: a readable report with notes, never a traceback ------------------------------
def _edge(kind: str) -> optuna.Study:
    if kind == "empty":
        return new_study()
    study = new_study(("minimize", "minimize") if kind == "multi" else ("minimize",))
    if kind == "only-failed":
        fill(study, 12, fail_every=1)
    elif kind == "one-param":
        fill(study, 20, params=("x",))
    elif kind == "categorical":
        fill(study, 30, params=("opt",))
    elif kind == "categorical-pair":
        fill(study, 30, params=("opt", "layers"))
    elif kind == "one-trial":
        fill(study, 1)
    elif kind == "only-running":
        fill(study, 0, running=3)
    elif kind == "multi":
        fill(study, 25, fail_every=4)
    return study


NOTES = {  # section -> words of the note expected where no chart can be drawn
    "empty": {k: "no completed trial" if k not in ("timeline", "utilisation")
              else "no trial has started" for k in CHART_KEYS},
    "only-failed": {k: "no completed trial" for k in CHART_KEYS[:5]},
    "one-param": {"contour": "one (x)"},
    "categorical": {"contour": "one (opt)"},
    "categorical-pair": {},
    "one-trial": {"contour": "two completed trials"},
    "only-running": {k: "no completed trial" for k in CHART_KEYS[:5]},
    "multi": {},
}


@pytest.mark.parametrize("kind", list(NOTES))
def test_edge_cases_give_notes_where_a_plot_cannot_be_drawn(kind):
    study = _edge(kind)
    secs = _sections(study)
    expected = NOTES[kind]
    for key in CHART_KEYS:
        sec = secs[key]
        if key in expected:
            assert sec.figure is None, (kind, key)
            assert expected[key] in sec.note.lower(), (kind, key, sec.note)
        else:
            assert sec.figure is not None, (kind, key, sec.note)
    page, _, n = render(study)
    assert n == len(study.trials)
    for key, words in expected.items():  # the note is on the page, in its section
        block = re.search(rf'<section id="sec-{key}".*?</section>', page, re.S).group(0)
        assert words in block.lower() and 'class="note"' in block


def test_trials_from_plain_optuna_are_shown_under_unknown_worker():
    study = new_study()
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=8)
    secs = _sections(study)
    assert set(secs["timeline"].figure.data[0].y) == {"unknown worker"}
    assert "plain Optuna" in secs["timeline"].note


def test_big_studies_are_drawn_from_a_subset_that_keeps_the_best(monkeypatch):
    monkeypatch.setattr(S, "PARALLEL_LIMIT", 40)
    monkeypatch.setattr(S, "SLICE_LIMIT", 40)
    monkeypatch.setattr(S, "CONTOUR_LIMIT", 40)
    monkeypatch.setattr(S, "IMPORTANCE_LIMIT", 40)
    study = new_study()
    fill(study, 200, seed=5)
    secs = _sections(study)
    for key in ("parallel", "slice", "contour", "importances"):
        assert "drawn from 40 of 200 completed trials" in secs[key].note.lower(), key
    slice_fig = secs["slice"].figure
    assert all(len(t.x) == 40 for t in slice_fig.data)
    # the subset holds the best trial, with its real number (slice colours are trial numbers)
    numbers = {int(n) for n in slice_fig.data[0].marker.color}
    assert study.best_trial.number in numbers
    assert numbers <= {t.number for t in study.trials}
    assert _points(secs["history"].figure) >= 200  # history shows every trial
    assert not math.isnan(study.best_value)
