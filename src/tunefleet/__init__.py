"""tunefleet: run one Optuna study on a fleet of workers."""

from tunefleet import checkpoint
from tunefleet._api import optimize
from tunefleet.errors import (CoordinatorGone, Interrupted, MirrorError, NotInWorker,
                              ObjectiveFailed, OptionError, TunefleetError, UsageError,
                              WorkerStartError)
from tunefleet.hub import worker_data

__all__ = ["optimize", "worker_data", "checkpoint", "TunefleetError", "UsageError",
           "WorkerStartError", "CoordinatorGone", "MirrorError", "ObjectiveFailed",
           "OptionError", "NotInWorker", "Interrupted"]
__version__ = "0.1.0"
