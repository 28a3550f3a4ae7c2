"""tunefleet's ``TPESampler``: Optuna's TPE step for step, with the trial scan, split and
density taken from the trial table and the numpy Parzen helpers."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

from tunefleet._optuna import (  # Optuna's TPE internals (only where FAST_TPE: Optuna 5.x)
    ParzenEstimator as _ParzenEstimator,
    tpe_sampler as _optuna_tpe,
)
from tunefleet.samplers._tpe._parzen import _fast_log_pdf, _ParzenEstimatorFastSigmas
from tunefleet.samplers._tpe._table import _TrialTable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from optuna.distributions import BaseDistribution
    from optuna.study import Study

__all__ = ["TPESampler"]

_NEAR_TIE = 1e-8  # fast acquisition values this close to the best are re-scored exactly


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
        # Relative values drawn ahead, offered to the next draw of the same search space
        # (see drawn_ahead).
        self._offered: tuple[dict[str, BaseDistribution], dict[str, Any]] | None = None

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

    # -- drawing ahead: the hook a coordinator uses to draw off its message path -------------
    def draw_relative_ahead(self, study: Study, trial: FrozenTrial,
                            ) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        """The relative search space the next trial will have and values drawn for it now,
        for a trial that does not exist yet (``trial`` stands in for it). TPE's own step,
        without the constant-liar note that ``sample_relative`` writes on the real trial when
        :meth:`drawn_ahead` offers these values. Grouped TPE splits the space first: it draws
        at ask time, so nothing is drawn here."""
        space = self.infer_relative_search_space(study, trial)
        if not space or self._group:
            return space, {}
        return space, self._sample_relative(study, trial, space)

    @contextlib.contextmanager
    def drawn_ahead(self, space: dict[str, BaseDistribution],
                    values: dict[str, Any]) -> Iterator[None]:
        """Within the block, a draw of the relative search space ``space`` returns ``values``
        (from :meth:`draw_relative_ahead`) instead of drawing; any other space draws as usual."""
        self._offered = (space, values)
        try:
            yield
        finally:
            self._offered = None

    def _sample_relative(self, study: Study, trial: FrozenTrial,
                         search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        offered = getattr(self, "_offered", None)
        if offered is not None and search_space == offered[0]:
            return dict(offered[1])
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
