"""Samplers for large fleets: drop-ins for Optuna's whose ask cost does not grow with per-trial
Python work (see docs/samplers.md)."""

from tunefleet.samplers._tpe import TPESampler

__all__ = ["TPESampler"]
