"""Tracking of trials in W&B and MLflow, with runs opened where the training happens.

``WandbTracker`` and ``MlflowTracker`` import their library only when a run is opened, so that
``import tunefleet.tracking`` costs nothing. Use them through ``Tuner(trackers=[...])``, or
decorate any objective with ``@track(...)`` in any mode and call ``log(metrics, step)`` in it.
"""

from tunefleet.tracking._base import Tracker, TrackerRun, TrackingWarning, log, track, trial_run
from tunefleet.tracking._mlflow import MlflowTracker
from tunefleet.tracking._wandb import WandbTracker

__all__ = ["Tracker", "TrackerRun", "TrackingWarning", "log", "track", "trial_run",
           "MlflowTracker", "WandbTracker"]
