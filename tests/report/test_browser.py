"""End to end: the report opened in headless Debian Chromium, offline. Every section's chart has
rendered, the console has no error, nothing was fetched from a network, and a screenshot is
kept in test-artifacts/report/."""

from __future__ import annotations

import json
import shutil

import pytest

from tunefleet.report._html import write_report
from tests.report.studies import fill, new_study

# Per chart: plotly has drawn it (an SVG and its traces) and how many marks it holds.
CHARTS_JS = """JSON.stringify(Object.fromEntries(
  [...document.querySelectorAll('section[data-kind=chart]')].map(s => {
    const gd = s.querySelector('.js-plotly-plot');
    const drawn = !!(gd && gd._fullLayout && gd.querySelector('svg.main-svg'));
    const marks = gd ? gd.querySelectorAll('.point, .contourlevel, path.js-line').length : 0;
    return [s.dataset.section, {drawn, traces: gd && gd._fullData ? gd._fullData.length : 0,
                                marks}];
  })))"""
READY = ("document.readyState === 'complete' && [...document.querySelectorAll("
         "'section[data-kind=chart]')].every(s => { const gd = s.querySelector('.js-plotly-plot');"
         " return gd && gd._fullLayout && gd.querySelector('svg.main-svg'); })")


def _open(browser, path):
    browser.open(path.as_uri(), READY, timeout=120)
    charts = json.loads(browser.evaluate(CHARTS_JS))
    sections = json.loads(browser.evaluate(
        "JSON.stringify([...document.querySelectorAll('section')].map(s => [s.dataset.section,"
        " s.dataset.kind, (s.querySelector('.note') || {}).textContent || null]))"))
    return charts, sections


def _remote(urls):
    return [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]


@pytest.mark.parametrize("directions", [("minimize",), ("minimize", "maximize")],
                         ids=["single", "multi"])
def test_every_chart_renders_without_console_error(browser, artifacts, tmp_path, directions):
    study = new_study(directions)
    fill(study, 60, workers=4, fail_every=9, prune_every=7, running=2, seed=7)
    path = tmp_path / "report.html"
    info = write_report(study, str(path))
    charts, sections = _open(browser, path)
    name = f"report-{len(directions)}-objective"
    browser.screenshot(artifacts / f"{name}.png")
    shutil.copy(path, artifacts / f"{name}.html")

    expected = ["history", "importances", "parallel", "slice", "contour", "timeline",
                "utilisation"] + (["pareto"] if len(directions) > 1 else [])
    assert set(charts) == set(expected) and info.charts == len(expected)
    for key, chart in charts.items():
        assert chart["drawn"] and chart["traces"] > 0 and chart["marks"] > 0, (key, chart)
    n_complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    assert charts["timeline"]["marks"] == len(study.trials)  # one bar per started trial
    assert charts["utilisation"]["marks"] == 4  # one bar per worker
    assert charts["history"]["marks"] >= n_complete
    if "pareto" in charts:
        assert charts["pareto"]["marks"] == n_complete
    assert [s[0] for s in sections][0] == "best" and sections[0][1] == "table"
    assert browser.console_errors() == [], browser.console_messages()
    assert _remote(browser.requested_urls()) == []
    assert (artifacts / f"{name}.png").stat().st_size > 50_000


def test_empty_study_page_shows_notes_without_console_error(browser, artifacts, tmp_path):
    path = tmp_path / "empty.html"
    write_report(new_study(), str(path))
    browser.open(path.as_uri(), "document.readyState === 'complete'", timeout=120)
    sections = json.loads(browser.evaluate(
        "JSON.stringify([...document.querySelectorAll('section')].map(s => [s.dataset.section,"
        " s.dataset.kind, (s.querySelector('.note') || {}).textContent]))"))
    browser.screenshot(artifacts / "report-empty.png")
    assert [s[1] for s in sections[1:]] == ["note"] * 7
    assert all(s[2] and s[2].startswith("No ") for s in sections), sections
    assert browser.evaluate("document.querySelectorAll('.js-plotly-plot').length") == 0
    assert browser.console_errors() == [], browser.console_messages()
    assert _remote(browser.requested_urls()) == []
