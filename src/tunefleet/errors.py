"""Errors that tunefleet reports to a person as one line, not a traceback."""

from __future__ import annotations


class TunefleetError(Exception):
    """Base class of tunefleet's own errors."""


class UsageError(TunefleetError):
    """Bad input from the user (target, storage URL, option). The CLI prints it and exits 2."""


class OptionError(UsageError, ValueError):
    """An option of ``tunefleet.optimize`` out of its range (``n_trials=-1``...): a
    ``ValueError``, as Optuna raises for the same misuse of ``Study.optimize``."""


class NotInWorker(UsageError, RuntimeError):
    """A study method a worker's objective cannot call (``trial.study.ask()``): the
    coordinator owns the study. A ``RuntimeError``, as Optuna's misuse errors are."""


class WorkerStartError(TunefleetError):
    """Workers could not start (the objective could not be loaded or unpickled there)."""


class CoordinatorGone(TunefleetError):
    """A worker lost its coordinator: the study is over for this worker."""


class ObjectiveFailed(TunefleetError):
    """A storage-mode worker's objective raised and the worker was told not to catch it;
    ``original`` is what it raised."""

    def __init__(self, number: int, exc: BaseException) -> None:
        super().__init__(f"trial {number} failed: {type(exc).__name__}: {exc}")
        self.number = number
        self.original = exc


class MirrorError(TunefleetError, RuntimeError):
    """The hub's durable storage did not accept the mirror's writes: it no longer matches the
    study in memory. A ``RuntimeError`` too, as it was before it moved here."""


class CoordinatorUnreachable(TunefleetError, RuntimeError):
    """An engine's worker task could not reach its coordinator: the engine reports the task as
    failed, and the backend tells the coordinator that workers cannot start there."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT or SIGTERM after a clean shutdown: no trial was handed out
    after the signal, running trials had their grace period, and the storage holds every trial
    that was counted. A ``KeyboardInterrupt``, so code written for Optuna's Ctrl-C still works."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
