"""Write the report as one self-contained HTML file: plotly.js is inlined once, so the page
opens offline and loads nothing from the network."""

from __future__ import annotations

import dataclasses
import datetime
import html
import os
import time
from typing import Any

import optuna

from tunefleet import _attrs as attrs
from tunefleet.errors import UsageError
from tunefleet.report import _timeline as tl
from tunefleet.report._sections import Section, Table, build_sections
from tunefleet.report._status import format_status, status_figures

PLOT_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
nav a { margin-right: 1em; } .note { color: #555; font-style: italic; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
pre.summary { background: #f6f6f6; padding: .8em; white-space: pre-wrap; }
"""


@dataclasses.dataclass(frozen=True)
class ReportInfo:
    """What was written, for the CLI's one-line answer."""

    path: str
    n_trials: int
    charts: int
    notes: int
    seconds: float
    size: int


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ModuleNotFoundError:
        raise UsageError("the report needs plotly: pip install 'tunefleet[report]'") from None
    return get_plotlyjs()


def render(study: optuna.Study, *, objective: int = 0, now: float | None = None,
           ) -> tuple[str, list[Section], int]:
    """The HTML text of the report, its sections, and the number of trials it covers."""
    n_objectives = len(study.directions)
    if not 0 <= objective < n_objectives:
        raise UsageError(f"objective {objective} does not exist: the study has "
                         f"{n_objectives} objective(s), numbered from 0")
    plotly_js = _plotly_js()
    trials = study.get_trials(deepcopy=False)
    now = time.time() if now is None else now
    sections = build_sections(study, objective=objective, trials=trials, now=now)
    figures = status_figures(study, trials=trials, now=now)
    body = [_header(study, trials, figures, objective, now, sections)]
    body += [_section(s) for s in sections]
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>tunefleet report: {_e(study.study_name)}</title><style>{CSS}</style>"
        f"<script type=\"text/javascript\">{plotly_js}</script></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )
    return page, sections, len(trials)


def write_report(study: optuna.Study, path: str, *, objective: int = 0) -> ReportInfo:
    """Write the report of STUDY to PATH (the folder must exist)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {path}: folder {folder} does not exist")
    started = time.perf_counter()
    page, sections, n_trials = render(study, objective=objective)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    charts = sum(1 for s in sections if s.figure is not None)
    notes = sum(1 for s in sections if s.chart and s.figure is None)
    return ReportInfo(path, n_trials, charts, notes, time.perf_counter() - started,
                      len(page.encode("utf-8")))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _header(study: optuna.Study, trials: list, figures: Any, objective: int, now: float,
            sections: list[Section]) -> str:
    uses = tl.utilisation(tl.bars(trials, now))
    fleet = tl.fleet_utilisation(uses)
    mode = study._storage.get_study_system_attrs(study._study_id).get(attrs.MODE)
    facts = [f"directions: {' '.join(d.name.lower() for d in study.directions)}",
             f"workers seen: {len(uses)}"]
    if fleet is not None:
        facts.append(f"fleet utilisation: {100 * fleet:.0f}%")
    if mode:
        facts.append(f"mode: {mode}")
    facts.append("generated " + datetime.datetime.fromtimestamp(now).isoformat(timespec="seconds"))
    lines = [f"<header><h1>Study {_e(study.study_name)}</h1>",
             f"<p>{_e(' · '.join(facts))}</p>",
             f"<pre class=\"summary\" id=\"summary\">{_e(format_status(figures))}</pre>"]
    if len(study.directions) > 1:
        lines.append(f"<p class=\"note\">Per-objective plots show objective {objective}; "
                     "choose another with --objective.</p>")
    links = "".join(f"<a href=\"#sec-{_e(s.key)}\">{_e(s.title)}</a>" for s in sections)
    lines.append(f"<nav>{links}</nav></header>")
    return "\n".join(lines)


def _section(sec: Section) -> str:
    kind = "table" if not sec.chart else ("chart" if sec.figure is not None else "note")
    parts = [f"<section id=\"sec-{_e(sec.key)}\" data-section=\"{_e(sec.key)}\" "
             f"data-kind=\"{kind}\">", f"<h2>{_e(sec.title)}</h2>"]
    if sec.note:
        parts.append(f"<p class=\"note\">{_e(sec.note)}</p>")
    if sec.figure is not None:
        parts.append(sec.figure.to_html(full_html=False, include_plotlyjs=False,
                                        div_id=f"chart-{sec.key}", config=PLOT_CONFIG))
    if sec.table is not None:
        parts.append(_table(sec.table))
    parts.append("</section>")
    return "\n".join(parts)


def _table(table: Table) -> str:
    head = ""
    if any(table.headers):
        head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in table.headers) + "</tr>"
    rows = "".join("<tr>" + "".join(f"<td>{_e(_cell(c))}</td>" for c in row) + "</tr>"
                   for row in table.rows)
    return f"<table>{head}{rows}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
