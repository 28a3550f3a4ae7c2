"""See a study: the HTML report (``tunefleet report``) and the terminal summary (``tunefleet status``).

Only the light status figures are imported here, so that the hub's progress bar can use them
without pulling in plotly; the HTML writer is imported when a report is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunefleet.report._status import SLOW_FACTOR, StatusFigures, format_status, status_figures

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["SLOW_FACTOR", "StatusFigures", "format_status", "status_figures", "write_report"]


def write_report(study: "optuna.Study", path: str, **options: Any) -> "Any":
    """Write the self-contained HTML report of STUDY to PATH (see ``report.html.write_report``)."""
    from tunefleet.report._html import write_report as _write

    return _write(study, path, **options)
