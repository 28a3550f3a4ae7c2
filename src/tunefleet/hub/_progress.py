"""The live progress bar of hub mode: the figures of ``tunefleet status``, updated as trials
end — trials by state, best so far, trials per second and per minute, busy workers, and
trials running much longer than usual."""

from __future__ import annotations

import collections
import math
import statistics
import time
from typing import Any, Iterable

import optuna
from optuna.trial import TrialState

from tunefleet.report import SLOW_FACTOR


class Progress:
    """A tqdm bar updated by the coordinator's loop; refreshes at most every ``min_interval``."""

    def __init__(self, enabled: bool, n_trials: int | None, timeout: float | None,
                 directions: list[Any], min_interval: float = 0.2) -> None:
        self._bar = None
        self._maximize = [d.name == "MAXIMIZE" for d in directions]
        self.best: float | None = None
        self.done = 0
        self.states: collections.Counter[str] = collections.Counter()
        self.busy = 0
        self.workers = 0
        self.slow = 0
        self._durations: collections.deque[float] = collections.deque(maxlen=256)
        self._t0 = time.monotonic()
        self._last = 0.0
        self._min_interval = min_interval
        self._verbosity: int | None = None
        if enabled:
            from tqdm.auto import tqdm

            # The bar says what Optuna's per-trial INFO lines would say; warnings still show.
            self._verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(max(self._verbosity, optuna.logging.WARNING))
            self._bar = tqdm(total=n_trials, unit="trial", dynamic_ncols=True, mininterval=0.0,
                             desc="trials")

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def trial_done(self, state: TrialState, values: Any, duration: float | None = None) -> None:
        self.done += 1
        self.states[state.name.lower()] += 1
        if duration is not None and state == TrialState.COMPLETE:
            self._durations.append(duration)
        if len(self._maximize) == 1 and state == TrialState.COMPLETE and values:
            v = values[0]
            if not math.isnan(v) and (self.best is None
                                      or (v > self.best if self._maximize[0] else v < self.best)):
                self.best = v
        self.refresh()

    def resumed(self) -> None:
        """A trial failed through no fault of its objective and a retry continues it: shown
        once, by its continuation, and counted here as resumed."""
        self.states["resumed"] += 1
        self.refresh()

    def running(self, ages: Iterable[float], workers: int) -> None:
        """The ages in seconds of the trials running now, and how many workers are connected."""
        ages = list(ages)
        self.busy, self.workers = len(ages), workers
        if self._bar is not None and len(self._durations) >= 5:
            limit = SLOW_FACTOR * statistics.median(self._durations)
            self.slow = sum(1 for a in ages if a > limit)
        self.refresh()

    def line(self) -> str:
        rate = self.done / max(time.monotonic() - self._t0, 1e-9)
        best = "-" if self.best is None else f"{self.best:.6g}"
        states = " ".join(f"{k}={n}" for k, n in sorted(self.states.items()) if k != "complete")
        slow = f" slow={self.slow}" if self.slow else ""
        return (f"best={best} {rate:.1f}/s {rate * 60:.0f}/min busy={self.busy}/{self.workers}"
                f"{slow} {states}").rstrip()

    def refresh(self, force: bool = False) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self._min_interval:
            return
        self._last = now
        self._bar.n = self.done
        self._bar.set_postfix_str(self.line(), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self.refresh(force=True)
            self._bar.close()
            self._bar = None
        if self._verbosity is not None:
            optuna.logging.set_verbosity(self._verbosity)
            self._verbosity = None
