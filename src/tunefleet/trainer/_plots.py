"""Plots of metrics over iterations, one panel per metric, saved as PNG and PDF.

Uses ``matplotlib.figure.Figure`` directly rather than pyplot, so that drawing in a worker
needs no display and never changes the backend of the user's own session.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence


def plot_metrics(series: Mapping[str, Sequence[tuple[int, float]]], title: str,
                 stem: str) -> list[str]:
    """Draw each series (``name -> [(iteration, value)]``) and write ``stem.png``/``stem.pdf``.
    Returns the paths written (none when there is nothing to draw)."""
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        return []
    from matplotlib.figure import Figure

    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, pts) in zip(axes, series.items()):
        steps, values = zip(*pts)
        ax.plot(steps, values, marker="." if len(pts) < 50 else None, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()  # once, not per saved format
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    paths = [f"{stem}.png", f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=110)
    return paths
