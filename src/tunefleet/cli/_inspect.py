"""``tunefleet best`` and ``tunefleet studies``: read results back from any storage."""

from __future__ import annotations

import json

import click

from tunefleet.cli._options import best_summary, echo_summary
from tunefleet._studies import load_study, open_storage


@click.command()
@click.option("--storage", default=None, help="Storage URL (default sqlite:///tunefleet.db).")
@click.option("--study", "study_name", default=None, help="Study name.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def best(storage: str | None, study_name: str | None, as_json: bool) -> None:
    """Print the best value and parameters of a study."""
    echo_summary(best_summary(load_study(storage, study_name)), as_json)


@click.command()
@click.option("--storage", default=None, help="Storage URL (default sqlite:///tunefleet.db).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
def studies(storage: str | None, as_json: bool) -> None:
    """List the studies in a storage."""
    rows = []
    store = open_storage(storage, create=False)  # a typo must not leave an empty database
    for s in store.get_all_studies():
        best = None
        if len(s.directions) == 1:
            try:
                best = store.get_best_trial(s._study_id).value
            except ValueError:  # no completed trial
                pass
        rows.append({"study": s.study_name, "directions": [d.name.lower() for d in s.directions],
                     "best_value": best})
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no study")
    for r in rows:
        click.echo(f"{r['study']}\t{' '.join(r['directions'])}\tbest {r['best_value']}")
