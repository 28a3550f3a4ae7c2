"""The Parzen estimator's hot parts in numpy: the log density of candidates under a mixture
(``_fast_log_pdf``) and Optuna's estimator with its bandwidths computed from a sort order the
trial table keeps (``_ParzenEstimatorFastSigmas``; identical kernels)."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tunefleet._optuna import (  # Optuna's TPE internals (only where FAST_TPE: Optuna 5.x)
    TPE_EPS as EPS,
    BatchedCategoricalDistributions as _BatchedCategoricalDistributions,
    BatchedDiscreteTruncLogNormDistributions as _BatchedDiscreteTruncLogNormDistributions,
    BatchedDiscreteTruncNormDistributions as _BatchedDiscreteTruncNormDistributions,
    BatchedTruncLogNormDistributions as _BatchedTruncLogNormDistributions,
    BatchedTruncNormDistributions as _BatchedTruncNormDistributions,
    ParzenEstimator as _ParzenEstimator,
    tpe_truncnorm as _truncnorm,
    unique_inverse_2d as _unique_inverse_2d,
)



@functools.cache
def _scipy_ndtr() -> tuple[Any, Any] | None:
    """SciPy's vectorized ``(ndtr, log_ndtr)``, or None without SciPy (Optuna's partly
    per-element routines are used then). Imported at the first sampling, not with this
    module: scipy.special alone takes 0.4 s to import, which every worker and command that
    never samples with TPE would pay."""
    try:
        from scipy.special import log_ndtr, ndtr
    except ImportError:  # pragma: no cover - SciPy comes with the test and report extras
        return None
    return ndtr, log_ndtr

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution


_FAR = 9.0


def _log_gauss_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Optuna's ``_truncnorm._log_gauss_mass`` with SciPy's vectorized ``ndtr``/``log_ndtr`` in
    place of its per-element Python ones; equal to it up to rounding."""
    scipy = _scipy_ndtr()
    if scipy is None:
        return _truncnorm._log_gauss_mass(a, b)
    ndtr, log_ndtr = scipy
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    out = np.zeros(a.shape)
    left = b <= 0
    right = a > 0
    # An interval reaching 9 sigma past both sides holds all the mass but 2e-19: Optuna's
    # log1p(-ndtr(a) - ndtr(-b)) is 0 there to within 1e-16, so skip the erf polynomials.
    central = ~(left | right | ((a < -_FAR) & (b > _FAR)))
    if left.any():
        out[left] = _truncnorm._log_diff(log_ndtr(b[left]), log_ndtr(a[left]))
    if right.any():
        out[right] = _truncnorm._log_diff(log_ndtr(-a[right]), log_ndtr(-b[right]))
    if central.any():
        ac, bc = a[central], b[central]
        out[central] = np.log1p(-ndtr(ac) - ndtr(-bc))
    return out


_EXP_FLOOR = -60.0
_SQRT_HALF = math.sqrt(0.5)
_BLOCK = 2048  # kernels per block: a (24 x 2048) float64 buffer pair fits in L2
_MAX_EXPANDED = 1e4


def _fast_log_pdf(mpe: _ParzenEstimator, samples: dict[str, np.ndarray]) -> np.ndarray:
    """``mpe.log_pdf(samples)`` without per-kernel Python work and without (samples x kernels x
    params) temporaries: per-kernel terms (normalizing mass, log sigma, log weight) are summed
    once per kernel, and the exponents of a block of kernels come from one small matrix
    product."""
    mixture = mpe._mixture_distribution
    x = mpe._transform(samples)
    m, k = len(x), len(mixture.weights)
    with np.errstate(divide="ignore"):
        const = np.log(mixture.weights)
    acc: np.ndarray | None = None  # (sample, kernel) log densities of the non-continuous params
    # continuous params: x, mu, sigma (internal representation) and the domain's centre
    cont: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
    for i, d in enumerate(mixture.distributions):
        xi = x[:, i]
        if isinstance(d, _BatchedCategoricalDistributions):
            with np.errstate(divide="ignore"):
                term = np.log(d.weights[:, xi.astype(np.int64)]).T
            acc = term if acc is None else acc + term
            continue
        step = d.step
        lo, hi = d.adapted_low, d.adapted_high
        if step == 0.0:
            xc = np.log(xi) if d.is_log else xi
            const -= _log_gauss_mass((lo - d.mu) / d.sigma, (hi - d.mu) / d.sigma)
            const -= np.log(d.sigma) + _truncnorm._norm_pdf_logC
            cont.append((xc, d.mu, d.sigma, 0.5 * (lo + hi)))
            outside = np.flatnonzero((xc < lo) | (xc > hi))
            if len(outside):  # rare: a candidate on the wrong side of a bound by rounding
                acc = np.zeros((m, k)) if acc is None else acc
                for r in outside:
                    z = (xc[r] - d.mu) / d.sigma
                    acc[r, (z < (lo - d.mu) / d.sigma) | (z > (hi - d.mu) / d.sigma)] = -np.inf
        else:  # the discrete case, as Optuna: mass of [x - step/2, x + step/2] per kernel
            x_uniq, x_inv = np.unique(xi, return_inverse=True)
            mu_u, sigma_u, ms_inv = _unique_inverse_2d(d.mu, d.sigma)
            left = np.log(x_uniq - step / 2) if d.is_log else x_uniq - step / 2
            right = np.log(x_uniq + step / 2) if d.is_log else x_uniq + step / 2
            mass = _log_gauss_mass((left[:, None] - mu_u) / sigma_u,
                                   (right[:, None] - mu_u) / sigma_u)
            term = mass[np.ix_(x_inv.ravel(), ms_inv)]
            acc = term if acc is None else acc + term
            const -= _log_gauss_mass((lo - mu_u) / sigma_u, (hi - mu_u) / sigma_u)[ms_inv]
    # log sum_k exp(const_k + acc_rk - sum over continuous params of z_rk**2 / 2), with
    # z = (x - mu) / sigma. Centred on its domain, z**2 / 2 = s*x**2 - 2*s*mu*x + s*mu**2 with
    # s = 1 / (2 sigma**2): the whole exponent is one (samples x 2d+1) x (2d+1 x kernels)
    # product, taken a block of kernels at a time: small enough to stay in cache and for BLAS
    # to run it on one thread (threads only lose on a busy machine at this size).
    # Expanding loses about eps * s * max(x**2, mu**2), under 1e-11 with Optuna's magic clip
    # (sigma >= range / 100); past _MAX_EXPANDED the direct form is used instead.
    expanded = all(
        float(np.max(0.5 / (sigma * sigma))) * max(float(np.max(np.abs(xc - c))),
                                                    float(np.max(np.abs(mu - c)))) ** 2
        <= _MAX_EXPANDED for xc, mu, sigma, c in cont)
    width = min(k, _BLOCK)
    if expanded:  # OpenBLAS keeps a product under 24 * 5 * 2048 multiply-adds single-threaded
        width = min(k, max(256, _BLOCK * 5 * 24 // ((2 * len(cont) + 1) * max(m, 1))))
    buf = np.empty((m, width))
    if expanded:
        lhs = np.ones((m, 2 * len(cont) + 1))
        rhs = np.empty((2 * len(cont) + 1, k))
        rhs[-1] = const
        for j, (xc, mu, sigma, c) in enumerate(cont):
            xs, ms, half_prec = xc - c, mu - c, 0.5 / (sigma * sigma)
            lhs[:, 2 * j], lhs[:, 2 * j + 1] = xs * xs, xs
            rhs[2 * j], rhs[2 * j + 1] = -half_prec, 2.0 * half_prec * ms
            rhs[-1] -= half_prec * ms * ms
    else:
        tmp = np.empty((m, width))
        scaled = [(xc, mu, _SQRT_HALF / sigma) for xc, mu, sigma, _ in cont]
    maxes, sums = [], []
    for start in range(0, k, width):
        stop = min(k, start + width)
        t = buf[:, : stop - start]
        if expanded:
            np.matmul(lhs, rhs[:, start:stop], out=t)
        else:
            u = tmp[:, : stop - start]
            t[:] = const[None, start:stop]
            for xc, mu, scale in scaled:
                np.subtract(xc[:, None], mu[None, start:stop], out=u)
                u *= scale[start:stop]
                u *= u
                t -= u
        if acc is not None:
            t += acc[:, start:stop]
        block_max = t.max(axis=1)
        maxes.append(block_max)
        t -= np.where(np.isneginf(block_max), 0.0, block_max)[:, None]
        # Terms below e**-60 of a block's largest change its sum (>= 1) by under 1e-26 per
        # kernel, and numpy's exp takes a slow path for large negative arguments: clip them.
        np.maximum(t, _EXP_FLOOR, out=t)
        np.exp(t, out=t)
        sums.append(t.sum(axis=1))
    block_maxes = np.array(maxes)
    max_ = block_maxes.max(axis=0)
    impossible = np.isneginf(max_)  # no kernel gives this sample any density
    max_[impossible] = 0
    with np.errstate(invalid="ignore"):
        out = np.log((np.array(sums) * np.exp(block_maxes - max_)).sum(axis=0)) + max_
    out[impossible] = -np.inf
    return out


class _ParzenEstimatorFastSigmas(_ParzenEstimator):
    """Optuna's estimator with the kernel bandwidths computed without sorting.

    Optuna's ``compute_sigmas`` sorts the observations (``np.argsort(mus)``) and maps the sorted
    bandwidths back with ``np.argsort(sorted_indices)``, a second full sort. Here the first sort
    comes from the trial table's incrementally kept order when that order is verified to sort
    the observations strictly (then it is the only sorting permutation, so np.argsort's own);
    with ties np.argsort is called, since its tie order decides which of several equal
    observations gets which bandwidth. The second sort becomes a scatter into the inverse
    permutation, the identical array. The method is Optuna's otherwise, step for step (it is one
    function there, so it is replicated whole).
    """

    def __init__(self, observations: dict[str, np.ndarray],
                 search_space: dict[str, BaseDistribution], parameters: Any,
                 predetermined_weights: np.ndarray | None = None,
                 presorted: dict[str, np.ndarray] | None = None) -> None:
        self._presorted = presorted or {}
        self._presort: np.ndarray | None = None
        super().__init__(observations, search_space, parameters, predetermined_weights)

    def _calculate_distributions(self, observations: np.ndarray, param_name: str,
                                 search_space: BaseDistribution, parameters: Any) -> Any:
        self._presort = self._presorted.get(param_name)
        return super()._calculate_distributions(observations, param_name, search_space,
                                                parameters)

    def _sorted_indices(self, mus: np.ndarray) -> np.ndarray:
        """``np.argsort(mus)``, or the presorted permutation when it provably equals it: if it
        orders MUS strictly increasing it is the only sorting permutation there is."""
        order = self._presort
        if order is not None and len(order) == len(mus):
            sorted_mus = mus[order]
            if np.all(sorted_mus[1:] > sorted_mus[:-1]):
                return order
        return np.argsort(mus)

    def _calculate_numerical_distributions(
        self, observations: np.ndarray, search_space: Any, parameters: Any,
    ) -> Any:
        low, high = search_space.low, search_space.high
        if search_space.step is not None:
            low -= search_space.step / 2
            high += search_space.step / 2
        if search_space.log:
            observations = np.log(observations)
            low, high = np.log(low), np.log(high)
        mus = observations
        sorted_indices = self._sorted_indices(mus)
        with_ends = np.empty(len(mus) + 2, dtype=float)
        with_ends[0] = low
        with_ends[1:-1] = mus[sorted_indices]
        with_ends[-1] = high
        sorted_sigmas = np.maximum(with_ends[1:-1] - with_ends[0:-2],
                                   with_ends[2:] - with_ends[1:-1])
        if not parameters.consider_endpoints and with_ends.shape[0] >= 4:
            sorted_sigmas[0] = with_ends[2] - with_ends[1]
            sorted_sigmas[-1] = with_ends[-2] - with_ends[-3]
        sigmas = np.empty_like(sorted_sigmas)
        sigmas[sorted_indices] = sorted_sigmas  # == sorted_sigmas[np.argsort(sorted_indices)]
        maxsigma = high - low
        if parameters.consider_magic_clip:
            n_kernels = len(observations) + 1  # + 1 for the prior, as Optuna
            minsigma = (high - low) / min(100.0, (1.0 + n_kernels))
        else:
            minsigma = EPS
        sigmas = np.asarray(np.clip(sigmas, minsigma, maxsigma))
        mus = np.append(mus, [0.5 * (low + high)])
        sigmas = np.append(sigmas, [high - low])
        if search_space.step is None:
            cls = _BatchedTruncLogNormDistributions if search_space.log else \
                _BatchedTruncNormDistributions
            return cls(mus, sigmas, search_space.low, search_space.high)
        cls = _BatchedDiscreteTruncLogNormDistributions if search_space.log else \
            _BatchedDiscreteTruncNormDistributions
        return cls(mus, sigmas, search_space.low, search_space.high, search_space.step)

