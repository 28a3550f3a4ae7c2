"""``tunefleet report`` (self-contained HTML) and ``tunefleet status`` (terminal summary)."""

from __future__ import annotations

import json
import time

import click

from tunefleet._studies import load_study
from tunefleet.report import SLOW_FACTOR

_storage = click.option("--storage", default=None,
                        help="Storage URL (default sqlite:///tunefleet.db).")
_study = click.option("--study", "study_name", default=None,
                      help="Study name (may be left out when the storage holds one study).")


@click.command()
@_storage
@_study
@click.option("-o", "--output", default="report.html", show_default=True,
              help="HTML file to write.")
@click.option("--objective", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which objective the per-objective plots show (multi-objective studies).")
def report(storage: str | None, study_name: str | None, output: str, objective: int) -> None:
    """Write one self-contained HTML report of a study (opens offline)."""
    from tunefleet.report import write_report

    info = write_report(load_study(storage, study_name), output, objective=objective)
    click.echo(f"wrote {info.path}: {info.n_trials} trials, {info.charts} charts, "
               f"{info.notes} notes, {info.size / 1e6:.1f} MB in {info.seconds:.1f} s")


@click.command()
@_storage
@_study
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--slow-factor", type=click.FloatRange(min=1.0), default=SLOW_FACTOR,
              show_default=True,
              help="A running trial is 'longer than expected' past this many times the median "
                   "duration of completed trials.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per refresh.")
def status(storage: str | None, study_name: str | None, watch: bool, interval: float,
           slow_factor: float, as_json: bool) -> None:
    """Summarise a study: trials by state, best so far, rate, running trials per worker."""
    from tunefleet.report import format_status, status_figures

    study = load_study(storage, study_name)
    clear = watch and not as_json and click.get_text_stream("stdout").isatty()
    try:
        while True:
            figures = status_figures(study, slow_factor=slow_factor)
            if as_json:
                click.echo(json.dumps(figures.as_dict(), default=str))
            else:
                if clear:
                    click.clear()
                elif watch:
                    click.echo(f"--- {time.strftime('%H:%M:%S')}")
                click.echo(format_status(figures))
            if not watch:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return
