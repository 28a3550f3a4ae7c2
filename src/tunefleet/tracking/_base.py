"""Tracker runs that can never fail a trial.

A tracker (W&B, MLflow) is plain configuration: it is created where the study is run, pickled
with the objective, and opens its run only in the process that trains, so the run's system
metrics, logs and files belong to the worker. Every call into a tracking library goes through
``_SafeRun``: an exception there becomes a ``TrackingWarning`` and that run goes quiet, because
a dashboard being down is no reason to lose a trial.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import optuna

STATES = ("COMPLETE", "PRUNED", "FAIL")


class TrackingWarning(UserWarning):
    """A tracking library failed; the trial goes on without it."""


class TrackerRun:
    """One trial's run in one tracking tool. Subclasses implement the three calls."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, value: float | None, state: str, params: Mapping[str, Any]) -> None:
        raise NotImplementedError


class Tracker:
    """Configuration of a tracking tool; ``open`` starts one trial's run where it is called."""

    name = "tracker"

    def prepare(self, study_name: str) -> None:
        """Called once by the process that owns the study, before any trial (optional)."""

    def end_study(self, study: optuna.Study) -> None:
        """Called once by that process after the last trial (optional)."""

    def open(self, study_name: str, trial_number: int, config: Mapping[str, Any]) -> TrackerRun:
        raise NotImplementedError


def warn(tool: str, what: str, exc: BaseException) -> None:
    """Turn a tracking failure into one warning line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    warnings.warn(f"tunefleet tracking: {tool} {what} failed ({type(exc).__name__}: {first}); "
                  "the trial goes on without it", TrackingWarning, stacklevel=3)


class _SafeRun:
    """Wraps a tracker so that none of its failures reaches the trial."""

    def __init__(self, tracker: Tracker, study_name: str, trial_number: int,
                 config: Mapping[str, Any]) -> None:
        self.tool = tracker.name
        self.run: TrackerRun | None = None
        try:
            self.run = tracker.open(study_name, trial_number, dict(config))
        except Exception as exc:
            warn(self.tool, f"opening the run of trial {trial_number}", exc)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step)
        except Exception as exc:
            warn(self.tool, "logging metrics", exc)
            self._give_up()

    def finish(self, value: float | None, state: str, params: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(value, state, params)
        except Exception as exc:
            warn(self.tool, "finishing the run", exc)
        self.run = None

    def _give_up(self) -> None:
        run, self.run = self.run, None
        with contextlib.suppress(Exception):
            run.finish(None, "FAIL", {})  # type: ignore[union-attr]


_ACTIVE: contextvars.ContextVar[tuple["TrialRun", ...]] = contextvars.ContextVar(
    "tunefleet_tracking_runs", default=())


class TrialRun:
    """The runs of one trial in every tracker; set ``value`` before the block ends."""

    def __init__(self, runs: list[_SafeRun]) -> None:
        self.runs = runs
        self.value: float | None = None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for run in self.runs:
            run.log(metrics, step)


@contextlib.contextmanager
def trial_run(trial: Any, trackers: Sequence[Tracker], study_name: str | None = None,
              config: Mapping[str, Any] | None = None) -> Iterator[TrialRun]:
    """Open one run per tracker for ``trial`` in this process, and close each with the trial's
    final value and state (COMPLETE, PRUNED or FAIL). ``tunefleet.tracking.log`` inside the
    block logs to these runs."""
    name = study_name or _study_name(trial)
    runs = [_SafeRun(t, name, trial.number, config or {}) for t in trackers]
    handle = TrialRun(runs)
    token = _ACTIVE.set(_ACTIVE.get() + (handle,))
    state = "COMPLETE"
    try:
        yield handle
    except optuna.TrialPruned:
        state = "PRUNED"
        raise
    except BaseException:
        state = "FAIL"
        raise
    finally:
        _ACTIVE.reset(token)
        params = {**(config or {}), **_params(trial)}
        for run in runs:
            run.finish(handle.value, state, params)


def log(metrics: Mapping[str, float], step: int) -> None:
    """Log metrics at ``step`` to the runs of the trial being run here (no-op outside one)."""
    for handle in _ACTIVE.get():
        handle.log(metrics, step)


def track(*trackers: Tracker, study_name: str | None = None,
          config: Mapping[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """Decorate ``objective(trial)`` so that each trial gets a run in every tracker, opened in
    whichever process runs the trial (hub worker, storage-mode worker, peer)."""

    def decorate(objective: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(objective)
        def tracked(trial: Any) -> Any:
            with trial_run(trial, trackers, study_name, config) as run:
                value = objective(trial)
                run.value = value if isinstance(value, (int, float)) else None
                return value

        return tracked

    return decorate


def _study_name(trial: Any) -> str:
    study = getattr(trial, "study", None)
    return getattr(study, "study_name", None) or "tunefleet"


def _params(trial: Any) -> dict[str, Any]:
    try:
        return dict(trial.params)
    except Exception:
        return {}
