"""How the coordinator draws a trial's values: at ask time for every parameter the study has
seen (so that a worker gets them with its trial, with no round trip per parameter), ahead of
the trial while the coordinator would otherwise wait (tunefleet's TPE), seeded per trial
(``--seed``), and over a window of finished trials only (``--deterministic``).

Every value is drawn as ``Trial._suggest`` would draw it, by the study's own sampler; a worker
uses a value drawn ahead only when its objective asks for that parameter with the same
distribution, so the trials are those ``study.optimize`` would give.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from tunefleet._optuna import (FAST_TPE, filter_study, pop_waiting_trial_id, tpe_is_multivariate,
                               wrapped_sampler)
from tunefleet.hub._ordered import HistoryView
from tunefleet.samplers import Reseeder, TPESampler, random_draw

#: Samplers whose ``sample_independent`` may run at ask time for parameters the objective has
#: not asked for yet (their result depends only on the study and the parameter). Any other
#: sampler gets one round trip per parameter, exactly as in Optuna.
_PRESAMPLE_SAFE: tuple[type, ...] = tuple(
    getattr(optuna.samplers, name)
    for name in ("RandomSampler", "TPESampler", "CmaEsSampler", "QMCSampler", "GPSampler",
                 "NSGAIISampler", "NSGAIIISampler", "GridSampler")
    if hasattr(optuna.samplers, name)
)

#: How many trials' values tunefleet's TPE draws ahead at most.
_AHEAD = 2


def spec_seed(study: optuna.Study) -> int | None:
    """The --seed a study was made with on the command line (its recorded spec), if any."""
    from tunefleet._studies import SPEC_ATTR

    raw = study._storage.get_study_system_attrs(study._study_id).get(SPEC_ATTR)
    try:
        seed = json.loads(raw).get("seed") if raw else None
    except (TypeError, ValueError):
        return None
    return seed if isinstance(seed, int) else None


def _draws_ahead(study: optuna.Study) -> bool:
    """Whether values may be drawn before the trial exists: for tunefleet's TPE, whose draws
    cost enough to be worth moving off the message path, without Hyperband (its brackets go by
    trial number). Every other sampler keeps Optuna's exact order of draws (a seeded Random run
    gives Optuna's values)."""
    return (FAST_TPE and type(study.sampler) is TPESampler
            and not isinstance(study.pruner, optuna.pruners.HyperbandPruner))


def _independent_is_primary(sampler: optuna.samplers.BaseSampler, study: optuna.Study) -> bool:
    """Whether ``sample_independent`` is how the sampler draws (not a warned-about fallback
    for parameters outside its relative search space)."""
    sampler = wrapped_sampler(sampler)
    if isinstance(sampler, optuna.samplers.TPESampler):
        return not tpe_is_multivariate(sampler, study)
    return isinstance(sampler, (optuna.samplers.RandomSampler, optuna.samplers.GridSampler))


def _presample_safe(sampler: optuna.samplers.BaseSampler) -> bool:
    sampler = wrapped_sampler(sampler)
    return type(sampler) in _PRESAMPLE_SAFE or type(sampler) is TPESampler


class Drawer:
    """Asks the study for trials and draws their values, for one coordinator.

    Args:
        study: the study the coordinator runs (in memory).
        seed: draw from (seed, trial number, parameter); None for the sampler's own stream.
        window: ``--deterministic``: trial k sees only trials numbered k - window or lower
            (0: the whole study, as usual).
    """

    def __init__(self, study: optuna.Study, seed: int | None, window: int = 0) -> None:
        self.study = study
        self.window = window
        #: The search space seen so far, and its version (bumped on every change): a worker
        #: gets the distributions again only when its version is older.
        self.known: dict[str, BaseDistribution] = {}
        self.version = 0
        self._presample = _presample_safe(study.sampler)
        # Relative samplers (CMA-ES, GP, multivariate TPE...) draw a parameter outside their
        # relative space independently only as a fallback, with a warning: drawn ahead for a
        # parameter the trial never asks for, it would warn (and use random numbers) where
        # study.optimize does not. Those get their relative values ahead, the rest on demand.
        self._independent = _independent_is_primary(study.sampler, study)
        self._reseeder = Reseeder(study.sampler, seed) if seed is not None else None
        self._random = random_draw(study.sampler)  # Random's draw, reading no study or trial
        self._limit = _AHEAD if self._presample and _draws_ahead(study) and seed is None else 0
        # Values drawn ahead: (relative search space, relative values, independent values).
        self._prepared: deque[tuple[dict, dict, dict]] = deque()

    def learn(self, name: str, dist: BaseDistribution) -> None:
        if self.known.get(name) != dist:
            self.known[name] = dist
            self.version += 1

    # -- a trial and its values ---------------------------------------------------------------
    def ask(self) -> optuna.Trial:
        """``study.ask()``, with the relative values drawn ahead when the search space is
        still the one they were drawn for (else the sampler draws them now, as usual)."""
        if self.window:  # --deterministic: the trial sees the study up to its window
            study = self.study
            study._thread_local.cached_all_trials = None
            trial_id = pop_waiting_trial_id(study)
            if trial_id is None:
                trial_id = study._storage.create_new_trial(study._study_id)
            number = study._storage.get_trial_number_from_id(trial_id)
            return optuna.Trial(HistoryView(study, number - self.window), trial_id)
        if not self._prepared or not self._prepared[0][1]:
            return self.study.ask()
        space, relative, _ = self._prepared[0]
        with self.study.sampler.drawn_ahead(space, relative):
            trial = self.study.ask()
            trial.relative_params  # Optuna draws them lazily: now, while they are offered
        return trial

    def sample_known(self, trial: optuna.Trial) -> dict[str, Any]:
        """Values for the parameters seen so far, drawn as ``Trial._suggest`` would draw them;
        the worker uses those its objective asks for with the same distribution."""
        if not self._presample or not self.known:
            return {}
        if self._reseeder and trial._relative_params is None:
            self._reseeder(trial.number)
            trial.relative_params  # drawn now, from this trial's seed
        out: dict[str, Any] = {}
        fixed = trial._fixed_params
        frozen = None
        filtered = None
        prepared = self._prepared.popleft()[2] if self._prepared else None
        if fixed:
            prepared = None
        for name, dist in self.known.items():
            if name in fixed or dist.single():
                continue
            if trial._is_relative_param(name, dist):
                out[name] = trial.relative_params[name]
                continue
            if not self._independent:
                continue
            if prepared is not None and name in prepared:
                out[name] = prepared[name]
                continue
            self._reseed(trial.number, name)
            if self._random is not None:
                out[name] = self._random(name, dist)
                continue
            if frozen is None:
                frozen = trial._get_latest_trial()
                filtered = filter_study(trial.study, frozen)
            out[name] = self.study.sampler.sample_independent(filtered, frozen, name, dist)
        return out

    def suggest(self, trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
        """A parameter a worker asks for that was not drawn ahead: drawn and stored now."""
        if self._reseeder:
            if trial._relative_params is None:
                self._reseeder(trial.number)
                trial.relative_params
            self._reseeder(trial.number, name)
        value = trial._suggest(name, dist)
        self.learn(name, dist)
        return value

    def _reseed(self, number: int, name: str | None = None) -> None:
        """Seeded studies: the sampler's random state for this trial (and parameter) depends on
        the seed and the trial number only, not on how many draws came before it; so a seeded
        Random run gives the same trials with any number of workers, and a resumed run (TPE,
        CMA-ES, NSGA-II with one worker) goes on as an uninterrupted one would (the keys of
        storage mode's SeededTrial)."""
        if self._reseeder:
            self._reseeder(number, name)

    def history_ready(self, unfinished: list[int]) -> bool:
        """--deterministic: whether every trial the next one may see (numbered ``window``
        places before it, or lower) has ended; ``unfinished``: the numbers of those that run."""
        upto = self._next_number() - self.window
        return all(number > upto for number in unfinished)

    def _next_number(self) -> int:
        """The number the next ``study.ask()`` gives: the first queued trial's, or a new one."""
        storage, study_id = self.study._storage, self.study._study_id
        waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
        return waiting[0].number if waiting else storage.get_n_trials(study_id)

    # -- values drawn ahead, while the coordinator would otherwise wait ------------------------
    def wants_ahead(self, room: int | None) -> bool:
        """Whether to draw another trial's values now: only for a sampler whose draws do not
        depend on the trial they are for (tunefleet's TPE), never more than ``room`` (the
        trials the budget still allows; None: no limit)."""
        return (self._limit > 0 and bool(self.known) and len(self._prepared) < self._limit
                and (room is None or len(self._prepared) < room))

    @property
    def ahead(self) -> int:
        """How many trials' values are drawn ahead now."""
        return len(self._prepared)

    def draw_ahead(self) -> None:
        """Draw a trial's values before the trial exists, so that a worker asking for one gets
        it without waiting for the sampler: the relative ones (multivariate TPE, Optuna 5's
        default; running trials count as constant-liar fantasies) for the search space the
        study has now, and independent ones for every known parameter."""
        ghost = FrozenTrial(
            number=-1, trial_id=-1, state=TrialState.RUNNING, value=None, values=None,
            datetime_start=None, datetime_complete=None, params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={})
        sampler = self.study.sampler
        space, relative = sampler.draw_relative_ahead(self.study, ghost)
        independent = {name: sampler.sample_independent(self.study, ghost, name, dist)
                       for name, dist in self.known.items()
                       if not dist.single() and name not in relative and self._independent}
        self._prepared.append((space, relative, independent))
