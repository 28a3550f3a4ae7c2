"""The coordinator's bookkeeping: what it knows of each running trial and each worker, the
trials that ended but are not stored yet, and the limits of the run."""

from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from tunefleet._optuna import log_completed_trial
from tunefleet.transport import Link

_logger = optuna.logging.get_logger("optuna.tunefleet")


def say(message: str) -> None:
    """One line for the person at the terminal, below the progress bar if there is one."""
    from tqdm import tqdm

    tqdm.write(f"tunefleet: {message}", file=sys.stderr)


@dataclass
class _Running:
    trial: optuna.Trial
    link: Link
    presampled: dict[str, Any]
    lineage: int  # the first trial of its retries: the key of its checkpoints


@dataclass
class _WorkerState:
    trial_id: int | None = None
    hello: bool = False
    finished_trials: int = 0
    space_version: int = -1  # the version of the known search space this worker holds
    heard: float = field(default_factory=time.monotonic)  # when it last sent anything
    # The mirror's change number of each result it sent that the storage may not hold yet.
    unstored: collections.deque = field(default_factory=collections.deque)

    def stored(self, durable_seq: int | None) -> int:
        """How many of its results the storage (at ``durable_seq``; None: no durable storage)
        has come to hold since this was last asked: the worker forgets that many."""
        n = 0
        while self.unstored and (durable_seq is None or self.unstored[0] <= durable_seq):
            self.unstored.popleft()
            n += 1
        return n


@dataclass
class _Ended:
    """A trial that ended, waiting for the durable storage before it counts."""

    seq: int  # the mirror's change number that ended it
    trial: optuna.Trial
    state: TrialState
    values: Any
    callbacks: bool
    continued: bool = False  # a FAIL whose retry continues it: shown once, as "resumed"
    log: Callable[[], None] | None = None  # Optuna's line for it, said once it is stored


@dataclass
class Limits:
    """When to stop handing out trials, as ``Study.optimize`` means it."""

    n_trials: int | None
    timeout: float | None
    started: float = field(default_factory=time.monotonic)

    def time_left(self) -> bool:
        return self.timeout is None or time.monotonic() - self.started < self.timeout


def drain(mirror: Any, announce: Callable[[], None]) -> None:
    """At the end of a run: wait until the durable storage holds every change, saying so if it
    takes a while, and count (``announce``) what it holds meanwhile. Signals change nothing
    here: what was counted is stored. A failed write is raised later, by the mirror's close."""
    shown = False
    t0 = time.monotonic()
    while True:
        try:
            mirror.flush(timeout=0.5)
            break
        except TimeoutError:
            if not shown:
                say(f"saving {mirror.pending} change(s) to the storage...")
                shown = True
            announce()
        except Exception:
            break
    if shown:
        say(f"saved in {time.monotonic() - t0:.1f} s")


def log_ended(study: optuna.Study, state: TrialState, values: Any, number: int,
              params: dict[str, Any], error: Any, warning: str | None) -> None:
    """Optuna's line for a trial that ended (``error``: the worker's ``protocol.Error``;
    ``warning``: why Optuna refused the values), said once the storage holds the trial."""
    if state == TrialState.COMPLETE:
        log_completed_trial(study, values, number, params)
    elif state == TrialState.PRUNED:
        _logger.info(f"Trial {number} pruned. {error.text if error else ''}")
    elif error is not None:
        _logger.warning(f"Trial {number} failed with parameters: {params} because of the "
                        f"following error: {error.text}.\n{error.traceback or ''}".rstrip())
    else:
        _logger.warning(f"Trial {number} failed with parameters: {params} because of the "
                        f"following error: {warning}.")
