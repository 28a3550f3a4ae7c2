"""tunefleet: run one Optuna study on a fleet of workers."""

from tunefleet._api import optimize
from tunefleet.errors import Interrupted, TunefleetError, UsageError
from tunefleet.hub._worker import worker_data

__all__ = ["optimize", "worker_data", "Interrupted", "TunefleetError", "UsageError"]
__version__ = "0.1.0"
