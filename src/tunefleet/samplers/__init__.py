"""Samplers for large fleets: drop-ins for Optuna's whose ask cost does not grow with per-trial
Python work (see docs/samplers.md)."""

import optuna

from tunefleet._optuna import FAST_TPE

if FAST_TPE:
    from tunefleet.samplers._tpe import TPESampler
else:  # Optuna 4.x: its TPE internals differ from the 5.x ones tunefleet's TPE builds on

    class TPESampler(optuna.samplers.TPESampler):  # type: ignore[no-redef]
        """Optuna's own TPE (this Optuna's TPE internals are not those tunefleet's faster TPE
        reuses; with Optuna 5.x this is the faster one): same arguments, same proposals."""

__all__ = ["TPESampler"]
