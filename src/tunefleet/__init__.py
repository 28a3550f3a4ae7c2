"""tunefleet: run one Optuna study on a fleet of workers."""

from tunefleet.api import optimize
from tunefleet.errors import Interrupted, TunefleetError, UsageError
from tunefleet.hub.worker import worker_data

__all__ = ["optimize", "worker_data", "Interrupted", "TunefleetError", "UsageError"]
__version__ = "0.1.0"
