"""A drop-in ``optuna.samplers.TPESampler`` whose ask cost does not grow with Python work per trial.

Optuna's TPE rebuilds everything from every ``FrozenTrial`` on each ask: it filters the trial list,
converts every parameter to its internal representation, sorts trials by value and evaluates the
"above" Parzen estimator (one kernel per trial) partly through per-element Python (``log_ndtr``,
``erf``). That is about 10 microseconds per trial already in the study, paid on every ask.

This subclass keeps Optuna's algorithm and random stream and replaces only the hot parts:

* ``_TrialTable`` ingests each finished trial once (finished trials never change) into numpy
  columns indexed by trial number: state, values, pruned score, infeasibility score and the
  parameters. Each ask only looks at trials it has not seen finished (new or still running).
* The below/above split is done with numpy on those columns, with the same ordering and tie
  breaks as Optuna's ``_split_trials`` (stable sorts in trial-number order).
* The estimators are Optuna's ``_ParzenEstimator`` with the bandwidth step fed a sort order the
  table keeps (``_ParzenEstimatorFastSigmas``; identical kernels), and candidates are drawn by
  Optuna's own code from the same ``RandomState``; the log densities of the candidates are
  evaluated by ``_fast_log_pdf``: per-kernel constants once per kernel, the rest as blocked
  numpy.

Given the same study and seed the proposals are those of Optuna's TPE: identical candidates, and
acquisition values (used only for an argmax) that agree with Optuna's to about 1e-11. See
docs/samplers.md.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunefleet._optuna import (  # Optuna's TPE internals (only where FAST_TPE: Optuna 5.x)
    TPE_EPS as EPS,
    BatchedCategoricalDistributions as _BatchedCategoricalDistributions,
    BatchedDiscreteTruncLogNormDistributions as _BatchedDiscreteTruncLogNormDistributions,
    BatchedDiscreteTruncNormDistributions as _BatchedDiscreteTruncNormDistributions,
    BatchedTruncLogNormDistributions as _BatchedTruncLogNormDistributions,
    BatchedTruncNormDistributions as _BatchedTruncNormDistributions,
    ParzenEstimator as _ParzenEstimator,
    tpe_sampler as _optuna_tpe,
    tpe_truncnorm as _truncnorm,
    unique_inverse_2d as _unique_inverse_2d,
)

try:  # Vectorized ndtr / log_ndtr; without SciPy Optuna's (partly per-element) routines are used.
    from scipy.special import log_ndtr as _scipy_log_ndtr
    from scipy.special import ndtr as _scipy_ndtr
except ImportError:  # pragma: no cover - SciPy comes with the test and report extras
    _scipy_log_ndtr = _scipy_ndtr = None

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from optuna.distributions import BaseDistribution
    from optuna.study import Study

__all__ = ["TPESampler"]

_COMPLETE, _PRUNED, _OTHER = 1, 2, 3  # _TrialTable.state codes; 0 = not ingested (unfinished)
_STATE_CODE = {TrialState.COMPLETE: _COMPLETE, TrialState.PRUNED: _PRUNED,
               TrialState.FAIL: _OTHER}


class _TrialTable:
    """What TPE needs from the finished trials of one study, as numpy columns by trial number.

    Finished trials are immutable in Optuna's storages, so each is read once; trials that were
    unfinished at the last sync (``pending``) and those beyond the last seen number are the only
    ones looked at again. Running trials are kept as FrozenTrials for the constant liar.
    """

    def __init__(self, storage: Any, study_id: int, n_objectives: int) -> None:
        self.storage = storage  # strong reference: keeps id(storage) in the cache key unique
        self.study_id = study_id
        self.lock = threading.Lock()
        self.n_obj = n_objectives
        self.cap = 0
        self.state = np.zeros(0, dtype=np.int8)
        self.values = np.zeros((0, n_objectives))
        self.pruned_step = np.zeros(0)  # first component of Optuna's pruned-trial score
        self.pruned_value = np.zeros(0)  # second component
        self.infeasible = np.zeros(0)  # Optuna's infeasible-trial score (sum of violations)
        self.has: dict[str, np.ndarray] = {}  # param name -> present in the finished trial
        self.num: dict[str, np.ndarray] = {}  # param name -> float(value), NaN if not castable
        self.ext: dict[str, list[tuple[int, Any]]] = {}  # param name -> (number, external value)
        self.cat_cols: dict[tuple[str, Any], tuple[np.ndarray, int]] = {}
        # param name -> finished trials with a numeric value, sorted by it (and those values),
        # kept by merging in the newly finished ones: a sort order for the Parzen bandwidths.
        self.sorted_rows: dict[str, np.ndarray] = {}
        self.sorted_vals: dict[str, np.ndarray] = {}
        self.unsorted: dict[str, list[int]] = {}
        self.seen = 0  # trials with number < seen were all looked at least once
        self.pending: list[int] = []  # numbers < seen that were unfinished at the last sync
        self.running: list[FrozenTrial] = []  # RUNNING trials of the last snapshot
        self.n_finished = 0  # COMPLETE + PRUNED
        self.version = 0  # bumped whenever a finished trial is ingested
        self.split_key: tuple[int, int] | None = None
        self.split: tuple[np.ndarray, np.ndarray] | None = None

    def _grow(self, n: int) -> None:
        if n <= self.cap:
            return
        cap = max(n, 2 * self.cap, 1024)

        def grown(a: np.ndarray, fill: Any) -> np.ndarray:
            b = np.full((cap,) + a.shape[1:], fill, dtype=a.dtype)
            b[: len(a)] = a
            return b

        self.state = grown(self.state, 0)
        self.values = grown(self.values, np.nan)
        self.pruned_step = grown(self.pruned_step, np.nan)
        self.pruned_value = grown(self.pruned_value, np.nan)
        self.infeasible = grown(self.infeasible, 0.0)
        for name in self.has:
            self.has[name] = grown(self.has[name], False)
            self.num[name] = grown(self.num[name], np.nan)
        self.cap = cap

    def sync(self, trials: Sequence[FrozenTrial], study: Study) -> None:
        """Ingest the trials of this snapshot that finished since the last sync."""
        n = len(trials)
        if n and trials[n - 1].number != n - 1:  # not a number-ordered list: index it
            by_number = {t.number: t for t in trials}
            trials = [by_number[i] for i in range(max(by_number) + 1)]
            n = len(trials)
        self._grow(n)
        pending: list[int] = []
        running: list[FrozenTrial] = []
        for i in self.pending + list(range(self.seen, n)):
            if i >= n:  # an older snapshot than the last one (another thread): keep it pending
                pending.append(i)
                continue
            t = trials[i]
            if not t.state.is_finished():
                pending.append(i)
                if t.state == TrialState.RUNNING:
                    running.append(t)
                continue
            self._ingest(t, study)
        self.pending = pending
        self.running = running
        self.seen = max(self.seen, n)

    def _ingest(self, t: FrozenTrial, study: Study) -> None:
        i = t.number
        code = _STATE_CODE.get(t.state, _OTHER)
        self.state[i] = code
        if code == _OTHER:
            return
        self.n_finished += 1
        self.version += 1
        if code == _COMPLETE:
            self.values[i] = t.values
        else:
            self.pruned_step[i], self.pruned_value[i] = _optuna_tpe._get_pruned_trial_score(
                t, study)
        self.infeasible[i] = _optuna_tpe._get_infeasible_trial_score(t)
        for name, value in t.params.items():
            if name not in self.has:
                self.has[name] = np.zeros(self.cap, dtype=bool)
                self.num[name] = np.full(self.cap, np.nan)
                self.ext[name] = []
            self.has[name][i] = True
            try:
                self.num[name][i] = float(value)
                self.unsorted.setdefault(name, []).append(i)
            except (TypeError, ValueError):
                pass
            self.ext[name].append((i, value))

    def sorted_by_value(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(trial numbers, values) of the finished trials with a numeric NAME, by value."""
        rows = self.sorted_rows.get(name, np.zeros(0, dtype=np.int64))
        vals = self.sorted_vals.get(name, np.zeros(0))
        new = self.unsorted.pop(name, None)
        if new:
            new_rows = np.asarray(new, dtype=np.int64)
            new_vals = self.num[name][new_rows]
            order = np.argsort(new_vals, kind="stable")
            new_rows, new_vals = new_rows[order], new_vals[order]
            at = np.searchsorted(vals, new_vals)
            rows, vals = np.insert(rows, at, new_rows), np.insert(vals, at, new_vals)
            self.sorted_rows[name], self.sorted_vals[name] = rows, vals
        return rows, vals

    def column(self, name: str, dist: BaseDistribution, rows: np.ndarray) -> np.ndarray:
        """Internal representation of NAME under DIST for the finished trials ROWS, as Optuna's
        ``dist.to_internal_repr(trial.params[name])``; raises where that would raise."""
        if isinstance(dist, CategoricalDistribution):
            key = (name, dist)
            col, cursor = self.cat_cols.get(key, (np.full(0, np.nan), 0))
            log = self.ext[name]
            if len(col) < self.cap:
                col = np.concatenate([col, np.full(self.cap - len(col), np.nan)])
            for i, value in log[cursor:]:  # each (trial, choice set) is mapped once
                try:
                    col[i] = dist.to_internal_repr(value)
                except ValueError:
                    col[i] = np.nan
            self.cat_cols[key] = (col, len(log))
        else:
            col = self.num[name]
        out = col[rows]
        invalid = np.isnan(out)
        if getattr(dist, "log", False):
            invalid |= out <= 0
        if invalid.any():
            bad = int(rows[np.flatnonzero(invalid)[0]])
            value = next(v for j, v in self.ext[name] if j == bad)
            dist.to_internal_repr(value)  # raises Optuna's ValueError
        return out

    def split_finished(self, study: Study, n_below: int) -> tuple[np.ndarray, np.ndarray]:
        """Numbers of the finished trials below and above, as Optuna's ``_split_trials``, both
        in number order (running trials are added to 'above' by the caller)."""
        key = (self.version, n_below)
        if self.split_key == key and self.split is not None:
            return self.split
        state = self.state[: self.seen]
        finished = np.flatnonzero((state == _COMPLETE) | (state == _PRUNED))
        infeasible = self.infeasible[finished] > 0
        complete = finished[(state[finished] == _COMPLETE) & ~infeasible]
        pruned = finished[(state[finished] == _PRUNED) & ~infeasible]
        infeas = finished[infeasible]

        below_c = _below_complete(self.values[complete], complete, study, n_below)
        n_below = max(0, n_below - len(below_c))
        k = min(n_below, len(pruned))
        order = np.lexsort((self.pruned_value[pruned], self.pruned_step[pruned]))  # stable
        below_p = pruned[order[:k]]
        n_below = max(0, n_below - len(below_p))
        k = min(n_below, len(infeas))
        below_i = infeas[np.argsort(self.infeasible[infeas], kind="stable")[:k]]

        below = np.sort(np.concatenate([below_c, below_p, below_i]))
        is_below = np.zeros(self.seen, dtype=bool)
        is_below[below] = True
        above = finished[~is_below[finished]]
        self.split_key, self.split = key, (below, above)
        return below, above


def _below_complete(values: np.ndarray, numbers: np.ndarray, study: Study,
                    n_below: int) -> np.ndarray:
    """The complete trials Optuna's ``_split_complete_trials`` puts below (any order)."""
    n_below = min(n_below, len(numbers))
    if n_below == 0:
        return numbers[:0]
    if values.shape[1] == 1:
        v = values[:, 0]
        if study.direction == StudyDirection.MAXIMIZE:
            v = -v  # sorted(reverse=True) is stable too: ties stay in number order
        if n_below == len(v):
            return numbers
        # The first n_below of a stable sort: everything strictly better than the n_below-th
        # value, then the lowest-numbered trials tied with it.
        kth = np.partition(v, n_below - 1)[n_below - 1]
        strict = np.flatnonzero(v < kth)
        ties = np.flatnonzero(v == kth)[: n_below - len(strict)]
        return numbers[np.concatenate([strict, ties])]
    if n_below == len(numbers):
        return numbers
    # Multi-objective: Optuna's nondomination-rank + HSSP tie break, on the value array
    # (Optuna's function takes FrozenTrials; the steps are its own helpers, in its order).
    lvals = values * [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    ranks = _optuna_tpe._fast_non_domination_rank(lvals, n_below=n_below)
    uniq, counts = np.unique(ranks, return_counts=True)
    last_rank = int(np.max(uniq[np.cumsum(counts) <= n_below], initial=-1))
    indices = np.arange(len(numbers))
    below = indices[ranks <= last_rank]
    if below.size < n_below:
        tie = ranks == last_rank + 1
        tie_lvals = lvals[tie]
        chosen = _optuna_tpe._solve_hssp_with_cache(
            tuple(tie_lvals.ravel()), tuple(indices[tie]), n_below - below.size,
            tuple(_optuna_tpe._get_reference_point(tie_lvals)))
        below = np.append(below, chosen)
    return numbers[np.asarray(below, dtype=int)]


_FAR = 9.0


def _log_gauss_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Optuna's ``_truncnorm._log_gauss_mass`` with SciPy's vectorized ``ndtr``/``log_ndtr`` in
    place of its per-element Python ones; equal to it up to rounding."""
    if _scipy_log_ndtr is None:
        return _truncnorm._log_gauss_mass(a, b)
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    out = np.zeros(a.shape)
    left = b <= 0
    right = a > 0
    # An interval reaching 9 sigma past both sides holds all the mass but 2e-19: Optuna's
    # log1p(-ndtr(a) - ndtr(-b)) is 0 there to within 1e-16, so skip the erf polynomials.
    central = ~(left | right | ((a < -_FAR) & (b > _FAR)))
    if left.any():
        out[left] = _truncnorm._log_diff(_scipy_log_ndtr(b[left]), _scipy_log_ndtr(a[left]))
    if right.any():
        out[right] = _truncnorm._log_diff(_scipy_log_ndtr(-a[right]), _scipy_log_ndtr(-b[right]))
    if central.any():
        ac, bc = a[central], b[central]
        out[central] = np.log1p(-_scipy_ndtr(ac) - _scipy_ndtr(-bc))
    return out


_EXP_FLOOR = -60.0
_SQRT_HALF = math.sqrt(0.5)
_BLOCK = 2048  # kernels per block: a (24 x 2048) float64 buffer pair fits in L2
_MAX_EXPANDED = 1e4
_NEAR_TIE = 1e-8  # fast acquisition values this close to the best are re-scored exactly


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


class TPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE with the trial bookkeeping kept incrementally per study and a numpy Parzen
    density: same arguments, same random stream, same proposals, a fraction of the ask cost.

    Use it where you would use ``optuna.samplers.TPESampler``::

        from tunefleet.samplers import TPESampler
        study = optuna.create_study(sampler=TPESampler(seed=0))
    """

    def __init__(
        self,
        *,
        consider_prior: bool | None = None,
        prior_weight: float | None = None,
        consider_magic_clip: bool | None = None,
        consider_endpoints: bool | None = None,
        n_startup_trials: int = 10,
        n_ei_candidates: int = 24,
        gamma: Callable[[int], int] | None = None,
        weights: Callable[[int], np.ndarray] | None = None,
        seed: int | None = None,
        multivariate: bool | None = None,
        group: bool = False,
        warn_independent_sampling: bool | None = None,
        constant_liar: bool = True,
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
    ) -> None:
        super().__init__(
            consider_prior=consider_prior, prior_weight=prior_weight,
            consider_magic_clip=consider_magic_clip, consider_endpoints=consider_endpoints,
            n_startup_trials=n_startup_trials, n_ei_candidates=n_ei_candidates, gamma=gamma,
            weights=weights, seed=seed, multivariate=multivariate, group=group,
            warn_independent_sampling=warn_independent_sampling, constant_liar=constant_liar,
            constraints_func=constraints_func,
        )
        self._tables: dict[tuple[int, int], _TrialTable] = {}
        self._tables_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Locks do not pickle, and a copy sent to another process must not trust this cache.
        state = self.__dict__.copy()
        state["_tables"] = {}
        del state["_tables_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tables_lock = threading.Lock()

    def _table(self, study: Study, use_cache: bool) -> _TrialTable:
        """The study's table, synced with the trial snapshot Optuna's TPE would read here."""
        storage = study._storage
        key = (id(storage), study._study_id)
        # A view of the study as one trial sees it (tunefleet --deterministic) holds its own
        # table: the shared one may already hold trials the view leaves out.
        tables = getattr(study, "tunefleet_tables", self._tables)
        with self._tables_lock:
            table = tables.get(key)
            if table is None or table.storage is not storage:
                table = _TrialTable(storage, study._study_id, len(study.directions))
                tables[key] = table
        trials = study._get_trials(deepcopy=False, use_cache=use_cache)
        with table.lock:
            table.sync(trials, study)
        return table

    def _sample_relative(self, study: Study, trial: FrozenTrial,
                         search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        # Optuna's, with the finished-trial count from the table instead of a filtered list.
        if search_space == {}:
            return {}
        if self._table(study, use_cache=True).n_finished < self._n_startup_trials:
            return {}
        return self._sample(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if self._warn_independent_sampling:  # the warning needs Optuna's trial scan
            return super().sample_independent(study, trial, param_name, param_distribution)
        if self._table(study, use_cache=True).n_finished < self._n_startup_trials:
            return self._random_sampler.sample_independent(
                study, trial, param_name, param_distribution)
        return self._sample(study, trial, {param_name: param_distribution})[param_name]

    def _observations(self, table: _TrialTable, study: Study, rows: np.ndarray,
                      running: list[FrozenTrial], search_space: dict[str, BaseDistribution],
                      presort: bool = False,
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Optuna's ``_get_internal_repr`` for finished ROWS plus RUNNING trials, in number
        order, keeping only trials that have every parameter of SEARCH_SPACE; and with PRESORT,
        for each numeric parameter, the permutation that likely sorts its observations (taken
        from the table's sorted order; the estimator checks it before using it)."""
        names = list(search_space)
        mask = np.ones(len(rows), dtype=bool)
        for name in names:
            has = table.has.get(name)
            mask &= has[rows] if has is not None else False
        rows = rows[mask]
        obs = {name: table.column(name, search_space[name], rows) for name in names}
        numbers = rows
        extra: dict[str, list[float]] = {name: [] for name in names}
        extra_numbers: list[int] = []
        for t in running:  # the few trials still running (constant liar)
            params = self._get_params(t, study)
            if search_space.keys() <= params.keys():
                extra_numbers.append(t.number)
                for name, dist in search_space.items():
                    extra[name].append(dist.to_internal_repr(params[name]))
        if extra_numbers:
            numbers = np.concatenate([rows, extra_numbers])
            order = np.argsort(numbers, kind="stable")
            obs = {name: np.concatenate([obs[name], extra[name]])[order] for name in names}
            numbers = numbers[order]
        presorted: dict[str, np.ndarray] = {}
        if presort and len(numbers):
            position = np.full(max(table.cap, int(numbers[-1]) + 1), -1, dtype=np.int64)
            position[numbers] = np.arange(len(numbers))
            for name, dist in search_space.items():
                if isinstance(dist, CategoricalDistribution):
                    continue
                by_value, values = table.sorted_by_value(name)
                keep = position[by_value] >= 0
                order = position[by_value[keep]]
                if extra_numbers:
                    at = np.searchsorted(values[keep], extra[name])
                    order = np.insert(order, at, position[np.asarray(extra_numbers)])
                presorted[name] = order
        return obs, presorted

    def _settle_near_ties(self, samples: dict[str, np.ndarray], acq: np.ndarray,
                          mpe_below: _ParzenEstimator, mpe_above: _ParzenEstimator,
                          search_space: dict[str, BaseDistribution]) -> np.ndarray:
        """Acquisition values whose argmax is Optuna's, bit for bit.

        The fast values are within about 1e-12 of Optuna's, which decides every argmax but a
        near tie. Near ties are common late in a study: candidates drawn from the prior kernel
        far from all observations get log l - log g = log(prior weight ratio) up to a few ulps.
        Then the candidates within _NEAR_TIE of the best are re-scored with Optuna's own
        ``log_pdf`` (only those rows when every parameter is continuous or categorical, whose
        per-row arithmetic does not depend on the other rows; all rows otherwise, since
        Optuna's discrete path switches erf implementations with the array size).
        """
        top = np.max(acq)
        near = np.flatnonzero(acq >= top - _NEAR_TIE)
        if len(near) <= 1:
            return acq
        rows = np.stack([values[near] for values in samples.values()], axis=1)
        if (rows == rows[0]).all():  # one candidate drawn several times (integers): no choice
            return acq
        row_wise = all(isinstance(d, CategoricalDistribution) or
                       (isinstance(d, optuna.distributions.FloatDistribution) and d.step is None)
                       for d in search_space.values())
        if not row_wise:
            return self._compute_acquisition_func(samples, mpe_below, mpe_above)
        subset = {name: values[near] for name, values in samples.items()}
        out = np.full_like(acq, -np.inf)
        out[near] = self._compute_acquisition_func(subset, mpe_below, mpe_above)
        return out

    def _sample(self, study: Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        # Optuna's ``_sample`` step for step; the trial scan, split and density are replaced.
        table = self._table(study, use_cache=not self._constant_liar)
        if self._gamma is None:
            multi = len(study.directions) > 1
            self._gamma = (_optuna_tpe.default_gamma_multiobjective if multi
                           else _optuna_tpe.default_gamma)
        with table.lock:
            below, above = table.split_finished(study, self._gamma(table.n_finished))
            running = ([t for t in table.running if t.number != trial.number]
                       if self._constant_liar else [])
            obs_below, _ = self._observations(table, study, below, [], search_space)
            obs_above, presorted = self._observations(table, study, above, running,
                                                      search_space, presort=True)

        predetermined = None
        if study._is_multi_objective():
            predetermined = np.ones(len(next(iter(obs_below.values()))) if obs_below else 0)
        cls = self._parzen_estimator_cls
        if cls is _ParzenEstimator:  # not customised by the user
            cls = _ParzenEstimatorFastSigmas
        mpe_below = cls(obs_below, search_space, self._parzen_estimator_parameters, predetermined)
        if cls is _ParzenEstimatorFastSigmas:
            mpe_above = cls(obs_above, search_space, self._parzen_estimator_parameters,
                            presorted=presorted)
        else:
            mpe_above = cls(obs_above, search_space, self._parzen_estimator_parameters)
        if not isinstance(mpe_below, _ParzenEstimator):
            raise RuntimeError("_parzen_estimator_cls must override _ParzenEstimator.")

        samples = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        if type(mpe_below) is _ParzenEstimatorFastSigmas:
            acq = _fast_log_pdf(mpe_below, samples) - _fast_log_pdf(mpe_above, samples)
            acq = self._settle_near_ties(samples, acq, mpe_below, mpe_above, search_space)
        else:  # a user's estimator keeps its own density
            acq = self._compute_acquisition_func(samples, mpe_below, mpe_above)
        ret = self._compare(samples, acq)
        for name, dist in search_space.items():
            ret[name] = dist.to_external_repr(ret[name])
        return ret
