"""``--deterministic``: a seeded hub run whose trials do not depend on the workers' timing.

With N workers, trial k is handed out only once every trial numbered k - N or lower has
ended, and everything the sampler and the pruner see of the study while trial k runs is those
trials and nothing else (:class:`HistoryView`). With the coordinator's per-(seed, number,
parameter) random states, trial k's parameters, its pruning decisions, and so its value, are
then functions of the seed, N and the objective alone: which worker ran what, and when, no
longer matters. The price is the window: a trial that runs long holds back the trial N places
after it (``benchmarks/deterministic.py`` measures it), and a sampler never sees the trials
still running (no constant-liar fantasies).
"""

from __future__ import annotations

import copy
from typing import Any, Container

import optuna
from optuna.trial import FrozenTrial, TrialState


class HistoryView(optuna.Study):
    """The study as trial k sees it: the finished trials numbered ``upto`` or lower.

    A shallow stand-in for the study (same storage, sampler, pruner, directions) whose trial
    lists stop at ``upto``. Those trials have all ended before the view is made, and ended
    trials never change, so the list is read once."""

    def __init__(self, study: optuna.Study, upto: int) -> None:  # no Study.__init__: a view
        self.__dict__.update(study.__dict__)
        self._view_upto = upto
        self._view_trials: list[FrozenTrial] | None = None
        self._view_of = study
        self.tunefleet_tables: dict[Any, Any] = {}  # tunefleet's TPE keeps its table here

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        if self._view_trials is None:
            everything = self._storage.get_all_trials(self._study_id, deepcopy=False)
            self._view_trials = [t for t in everything[: self._view_upto + 1]
                                 if t.number <= self._view_upto]
        trials = self._view_trials
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def stop(self) -> None:  # stops the run, not the view
        self._view_of.stop()

