"""Seeded studies that resume as if never stopped (hub mode, storage mode).

A study made with ``--seed`` draws each trial's values with the sampler's random state seeded
from (the study's seed, the trial number, the parameter name) only, not from how many draws came
before: a run continued later draws what one uninterrupted run with that seed would have drawn
(Random with any number of workers; TPE, CMA-ES and NSGA-II with one worker, whose draws also
depend on the trials before), and a seeded Random study gives the same trials however many
workers share it. The seed is the one recorded in the study (its spec), so the sampler state
needed to go on is kept with the study.
"""

from __future__ import annotations

import zlib
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from tunefleet._optuna import LazyRandomState


def random_states(sampler: optuna.samplers.BaseSampler) -> list[Any]:
    """The numpy random states a sampler (and the samplers inside it) draws from."""
    import numpy as np

    out: list[Any] = []
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            out.append(value.rng)
        elif isinstance(value, np.random.RandomState):
            out.append(value)
        elif isinstance(value, optuna.samplers.BaseSampler) and value is not sampler:
            out.extend(random_states(value))
    return out


def trial_key(seed: int, number: int, name: str | None = None) -> int:
    """The seed of the draws of trial NUMBER: its relative values (NAME None), or parameter
    NAME's independent value."""
    return zlib.crc32(f"{seed}/{number}/{name or ''}".encode())


class Reseeder:
    """Reseeds a sampler's random states per (seed, trial number, parameter); a no-op (false)
    for a sampler without random state."""

    def __init__(self, sampler: optuna.samplers.BaseSampler, seed: int) -> None:
        self.seed = seed
        self.rngs = random_states(sampler)

    def __bool__(self) -> bool:
        return bool(self.rngs)

    def __call__(self, number: int, name: str | None = None) -> None:
        key = trial_key(self.seed, number, name)
        for rng in self.rngs:
            rng.seed(key)


class SeededTrial(optuna.Trial):
    """An ``optuna.Trial`` whose sampler draws its relative values from (seed, number) and each
    independent value from (seed, number, parameter), as the hub's coordinator draws them.
    Reseed for (number) before making one: the sampler's ``before_trial`` runs in it (the grid
    sampler picks a point there once the grid is used up)."""

    def __init__(self, study: optuna.Study, trial_id: int, reseed: Reseeder) -> None:
        self._reseed = reseed
        super().__init__(study, trial_id)

    @property
    def relative_params(self) -> dict[str, Any]:
        if self._relative_params is None:
            self._reseed(self.number)
        return super().relative_params

    def _suggest(self, name: str, distribution: BaseDistribution) -> Any:
        self.relative_params  # drawn first, from the trial's own seed
        self._reseed(self.number, name)
        return super()._suggest(name, distribution)
