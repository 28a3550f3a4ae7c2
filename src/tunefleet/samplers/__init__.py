"""Samplers for large fleets: drop-ins for Optuna's whose ask cost does not grow with per-trial
Python work (see docs/samplers.md); and the per-trial seeding that lets a seeded study resume
as if never stopped, shared by the hub, storage mode and P2P (``Reseeder``, ``SeededTrial``,
``random_states``)."""

import optuna

from tunefleet._optuna import FAST_TPE
from tunefleet.samplers._random import RandomDraw, random_draw
from tunefleet.samplers._seeded import Reseeder, SeededTrial, random_states

if FAST_TPE:
    from tunefleet.samplers._tpe import TPESampler
else:  # Optuna 4.x: its TPE internals differ from the 5.x ones tunefleet's TPE builds on

    class TPESampler(optuna.samplers.TPESampler):  # type: ignore[no-redef]
        """Optuna's own TPE (this Optuna's TPE internals are not those tunefleet's faster TPE
        reuses; with Optuna 5.x this is the faster one): same arguments, same proposals."""

__all__ = ["TPESampler", "RandomDraw", "random_draw", "Reseeder", "SeededTrial",
           "random_states"]
