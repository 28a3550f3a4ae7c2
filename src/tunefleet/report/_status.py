"""The figures of ``tunefleet status``: trials by state, best so far, trials per minute, running
trials per worker and trials running longer than expected.

Kept free of plotly and cheap (one pass over the trials), so the hub's progress bar can call
``status_figures(study, trials=...)`` and print ``figures.short()`` after every trial.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet._attrs import RETRY_OF
from tunefleet.report._trials import FINISHED_STATES, finished_at, started_at, worker_of

RATE_WINDOW = 600.0  # seconds: "trials per minute" counts trials finished this recently
# (before now, or before the last finish when nothing runs)
MIN_FOR_EXPECTED = 3  # completed trials needed before a running trial can be "too long"
SLOW_FACTOR = 3.0  # a running trial is "slow" past this many times the median duration


@dataclasses.dataclass(frozen=True)
class RunningTrial:
    number: int
    worker: str
    elapsed: float


@dataclasses.dataclass
class StatusFigures:
    """A snapshot of a study, as plain data (``as_dict`` gives JSON-ready values)."""

    study: str
    directions: list[str]
    n_trials: int
    states: dict[str, int]
    best_value: float | None = None
    best_number: int | None = None
    best_params: dict[str, Any] | None = None
    n_pareto: int | None = None
    per_minute: float | None = None  # finished trials per minute over the recent window
    per_minute_overall: float | None = None
    expected_duration: float | None = None  # median duration of completed trials, seconds
    slow_factor: float = SLOW_FACTOR
    running: dict[str, list[RunningTrial]] = dataclasses.field(default_factory=dict)
    slow: list[RunningTrial] = dataclasses.field(default_factory=list)
    #: FAIL trials whose work a retry continued (their worker died, was preempted or fell
    #: silent): one trial, counted once, in two rows of the storage.
    continued: int = 0
    #: Steps reported again by a continuation (work redone since the last checkpoint).
    redone_steps: int = 0

    @property
    def n_running(self) -> int:
        return self.states.get("running", 0)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("best_value", "per_minute", "per_minute_overall", "expected_duration"):
            if isinstance(out[key], float) and not math.isfinite(out[key]):
                out[key] = None
        return out

    def short(self) -> str:
        """One line for a progress bar: done / failed / running, best, rate."""
        parts = [f"{self.states.get('complete', 0)} done"]
        if self.states.get("pruned"):
            parts.append(f"{self.states['pruned']} pruned")
        if self.states.get("fail", 0) > self.continued:
            parts.append(f"{self.states['fail'] - self.continued} failed")
        if self.continued:
            parts.append(f"{self.continued} resumed")
        parts.append(f"{self.n_running} running")
        if self.best_value is not None:
            parts.append(f"best {self.best_value:.6g}")
        elif self.n_pareto:
            parts.append(f"Pareto {self.n_pareto}")
        if self.per_minute is not None:
            parts.append(f"{self.per_minute:.3g}/min")
        if self.slow:
            parts.append(f"{len(self.slow)} slow")
        return " · ".join(parts)


def _fill_lineage(fig: StatusFigures, trials: Sequence[FrozenTrial]) -> None:
    """Trials continued by a retry, and the steps their continuations reported again."""
    by_number = {t.number: t for t in trials}
    for t in trials:
        before = t.system_attrs.get(RETRY_OF)
        failed = by_number.get(before) if isinstance(before, int) else None
        if failed is None or failed.state != TrialState.FAIL:
            continue
        fig.continued += 1
        fig.redone_steps += len(failed.intermediate_values.keys() & t.intermediate_values.keys())


def status_figures(study: optuna.Study, *, trials: Sequence[FrozenTrial] | None = None,
                   now: float | None = None, slow_factor: float = SLOW_FACTOR,
                   window: float = RATE_WINDOW) -> StatusFigures:
    """Figures of STUDY at NOW; pass TRIALS when you already hold them (saves a storage read)."""
    now = time.time() if now is None else now
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    directions = list(study.directions)
    states = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        states[t.state.name.lower()] += 1
    fig = StatusFigures(study=study.study_name, directions=[d.name.lower() for d in directions],
                        n_trials=len(trials), states=states, slow_factor=slow_factor)
    _fill_best(fig, trials, directions)
    _fill_lineage(fig, trials)
    _fill_rates(fig, trials, now, window)
    _fill_running(fig, trials, now, slow_factor)
    return fig


def _fill_best(fig: StatusFigures, trials: Sequence[FrozenTrial],
               directions: list[optuna.study.StudyDirection]) -> None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not done:
        return
    if len(directions) > 1:
        from tunefleet._optuna import pareto_front as _get_pareto_front_trials_by_trials

        fig.n_pareto = len(_get_pareto_front_trials_by_trials(done, directions))
        return
    sign = -1.0 if directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    finite = [t for t in done if not math.isnan(t.values[0])]
    if not finite:
        return
    best = min(finite, key=lambda t: sign * t.values[0])
    fig.best_value, fig.best_number, fig.best_params = best.values[0], best.number, best.params


def _fill_rates(fig: StatusFigures, trials: Sequence[FrozenTrial], now: float,
                window: float) -> None:
    starts = [s for s in (started_at(t) for t in trials) if s is not None]
    ends = [e for e in (finished_at(t) for t in trials if t.state in FINISHED_STATES)
            if e is not None]
    if not starts or not ends:
        return
    first = min(starts)
    # A study with nothing running has ended (or paused): its rates are those of its span,
    # first start to last finish, not ever smaller figures as the clock goes on.
    running = any(t.state == TrialState.RUNNING for t in trials)
    end = now if running else max(max(ends), first)
    age = max(end - first, 1e-9)
    fig.per_minute_overall = len(ends) / (age / 60.0)
    span = min(window, age)
    recent = sum(1 for e in ends if e >= end - span)
    fig.per_minute = recent / (span / 60.0)
    durations = [finished_at(t) - started_at(t) for t in trials  # type: ignore[operator]
                 if t.state == TrialState.COMPLETE
                 and started_at(t) is not None and finished_at(t) is not None]
    if len(durations) >= MIN_FOR_EXPECTED:
        fig.expected_duration = statistics.median(durations)


def _fill_running(fig: StatusFigures, trials: Sequence[FrozenTrial], now: float,
                  slow_factor: float) -> None:
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        start = started_at(t)
        elapsed = max(0.0, now - start) if start is not None else 0.0
        run = RunningTrial(t.number, worker_of(t), elapsed)
        fig.running.setdefault(run.worker, []).append(run)
        if fig.expected_duration is not None and elapsed > slow_factor * fig.expected_duration:
            fig.slow.append(run)
    fig.running = dict(sorted(fig.running.items()))
    fig.slow.sort(key=lambda r: -r.elapsed)


def seconds(value: float | None) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min: short and readable."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


def format_status(fig: StatusFigures, max_rows: int = 20) -> str:
    """The terminal summary of ``tunefleet status``."""
    states = ", ".join(f"{n} {k}" for k, n in fig.states.items() if n) or "no trial yet"
    lines = [f"study {fig.study} ({' '.join(fig.directions)}): {fig.n_trials} trials - {states}"]
    if fig.continued:
        lines.append(f"resumed: {fig.continued} failed trial(s) were continued by a retry (the "
                     f"same trial, counted once); {fig.redone_steps} step(s) were run again")
    if fig.best_value is not None:
        lines.append(f"best {fig.best_value:.6g} (trial {fig.best_number}) params {fig.best_params}")
    elif fig.n_pareto is not None:
        lines.append(f"Pareto front: {fig.n_pareto} trials")
    else:
        lines.append("best: no completed trial yet")
    if fig.per_minute is None:
        lines.append("rate: no finished trial yet")
    else:
        lines.append(f"rate {fig.per_minute:.3g} trials/min recently, "
                     f"{fig.per_minute_overall:.3g} overall; median trial "
                     f"{seconds(fig.expected_duration)}")
    if fig.running:
        lines.append(f"running: {fig.n_running} on {len(fig.running)} workers")
        for i, (worker, runs) in enumerate(fig.running.items()):
            if i == max_rows:
                lines.append(f"  ... and {len(fig.running) - max_rows} more workers")
                break
            shown = ", ".join(f"#{r.number} ({seconds(r.elapsed)})" for r in runs[:5])
            more = f", +{len(runs) - 5}" if len(runs) > 5 else ""
            lines.append(f"  {worker}: {shown}{more}")
    else:
        lines.append("running: none")
    if fig.slow:
        lines.append(f"running longer than expected (over {fig.slow_factor:g} x median "
                     f"{seconds(fig.expected_duration)}): {len(fig.slow)}")
        for r in fig.slow[:max_rows]:
            lines.append(f"  #{r.number} on {r.worker}: {seconds(r.elapsed)}")
    return "\n".join(lines)
