"""The per-study trial table: what TPE needs from the finished trials, kept incrementally as
numpy columns by trial number, and the below/above split done on those columns (the same
ordering and tie breaks as Optuna's ``_split_trials``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunefleet._optuna import tpe_sampler as _optuna_tpe

if TYPE_CHECKING:
    from collections.abc import Sequence

    from optuna.distributions import BaseDistribution
    from optuna.study import Study

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
