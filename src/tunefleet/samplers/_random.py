"""Optuna's RandomSampler's draw of one parameter without rebuilding its search-space transform
on every call: the same numbers from the same random state, at two thirds of the cost. The hub's
coordinator draws every parameter of every trial; the transform's construction (NumPy arrays for
a one-parameter space) was a tenth of its time on trivial Random trials."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution

from tunefleet._optuna import SearchSpaceTransform, untransform_numerical


class RandomDraw:
    """``sampler.sample_independent(study, trial, name, dist)`` for Optuna's RandomSampler,
    which reads neither the study nor the trial; one transform kept per parameter."""

    def __init__(self, sampler: optuna.samplers.RandomSampler) -> None:
        self._sampler = sampler
        self._transforms: dict[str, tuple[BaseDistribution, Any, tuple[float, float] | None]] = {}

    def __call__(self, name: str, dist: BaseDistribution) -> Any:
        kept = self._transforms.get(name)
        if kept is None or (kept[0] is not dist and kept[0] != dist):
            trans = SearchSpaceTransform({name: dist})
            box = (None if isinstance(dist, CategoricalDistribution)
                   else (float(trans.bounds[0, 0]), float(trans.bounds[0, 1])))
            kept = self._transforms[name] = (dist, trans, box)
        _, trans, box = kept
        # As RandomSampler.sample_independent, from the sampler's state of now (a seeded
        # run reseeds it per trial and parameter).
        rng = self._sampler._rng.rng
        if box is not None:
            # One number: the same draw as from the one-element arrays (low + range * the
            # next double), and the transform's own way back for it, without the arrays.
            return untransform_numerical(rng.uniform(box[0], box[1]), dist, True)
        values = rng.uniform(trans.bounds[:, 0], trans.bounds[:, 1])
        return trans.untransform(values)[name]


def random_draw(sampler: optuna.samplers.BaseSampler) -> RandomDraw | None:
    """A :class:`RandomDraw` for exactly Optuna's RandomSampler (a subclass may draw otherwise);
    None for any other sampler."""
    return RandomDraw(sampler) if type(sampler) is optuna.samplers.RandomSampler else None
