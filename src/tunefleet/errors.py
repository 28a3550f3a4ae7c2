"""Errors that tunefleet reports to a person as one line, not a traceback."""

from __future__ import annotations


class TunefleetError(Exception):
    """Base class of tunefleet's own errors."""


class UsageError(TunefleetError):
    """Bad input from the user (target, storage URL, option). The CLI prints it and exits 2."""


class WorkerStartError(TunefleetError):
    """Workers could not start (the objective could not be loaded or unpickled there)."""


class CoordinatorGone(TunefleetError):
    """A worker lost its coordinator: the study is over for this worker."""
