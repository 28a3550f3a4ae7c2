"""Data behind the per-worker timeline: one bar per trial, and how busy each worker was.

Utilisation is the time a worker spent inside trials (overlaps merged) divided by a window:
``share`` uses the study's window (first start to last end of any worker), so a worker that
joined late or sat idle shows up; ``within_own`` uses the worker's own first start to last end,
so gaps between its trials (waiting for the sampler, start-up) show up.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from optuna.trial import FrozenTrial, TrialState

from tunefleet.report._trials import finished_at, host_of, started_at, worker_of


@dataclasses.dataclass(frozen=True)
class Bar:
    """One trial on the timeline; ``end`` is "now" for a running trial."""

    number: int
    worker: str
    start: float
    end: float
    state: str
    value: float | None

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclasses.dataclass(frozen=True)
class WorkerUse:
    worker: str
    host: str | None
    n_trials: int
    busy: float  # seconds inside trials, overlaps merged
    first_start: float
    last_end: float
    share: float  # busy / study window, 0..1
    within_own: float  # busy / (last_end - first_start), 0..1


def bars(trials: Sequence[FrozenTrial], now: float | None = None) -> list[Bar]:
    """A bar per trial that has started (WAITING trials have not)."""
    now = time.time() if now is None else now
    out = []
    for t in trials:
        if t.state == TrialState.WAITING:
            continue
        start = started_at(t)
        if start is None:
            continue
        end = finished_at(t)
        if end is None:
            end = now if t.state == TrialState.RUNNING else start
        value = t.values[0] if t.values else None
        out.append(Bar(t.number, worker_of(t), start, max(start, end), t.state.name, value))
    return out


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def utilisation(timeline: Sequence[Bar], hosts: dict[str, str | None] | None = None,
                ) -> list[WorkerUse]:
    """How busy each worker was, sorted by worker name."""
    if not timeline:
        return []
    window_start = min(b.start for b in timeline)
    window = max(b.end for b in timeline) - window_start
    per_worker: dict[str, list[Bar]] = {}
    for b in timeline:
        per_worker.setdefault(b.worker, []).append(b)
    out = []
    for worker in sorted(per_worker):
        mine = per_worker[worker]
        busy = _busy_seconds([(b.start, b.end) for b in mine])
        first, last = min(b.start for b in mine), max(b.end for b in mine)
        own = last - first
        out.append(WorkerUse(
            worker=worker, host=(hosts or {}).get(worker), n_trials=len(mine), busy=busy,
            first_start=first, last_end=last,
            share=busy / window if window > 0 else 1.0,
            within_own=busy / own if own > 0 else 1.0,
        ))
    return out


def hosts_by_worker(trials: Sequence[FrozenTrial]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for t in trials:
        host = host_of(t)
        if host is not None or worker_of(t) not in out:
            out[worker_of(t)] = host
    return out


def fleet_utilisation(uses: Sequence[WorkerUse]) -> float | None:
    """Share of the fleet's worker-time spent in trials over the study window (None if empty)."""
    if not uses:
        return None
    return sum(u.share for u in uses) / len(uses)
