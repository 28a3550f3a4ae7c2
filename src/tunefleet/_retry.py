"""The one retry rule of every mode: a trial that failed through no fault of its objective (its
worker died, fell silent, or its coordinator did) runs again with the same parameters.

The hub (a lost worker, orphans of a dead coordinator) and storage mode (a trial whose heartbeat
went stale) both build the retry here, so that it carries the same things everywhere: every
parameter the failed trial had (and values drawn for it that it had not asked for yet), its user
attributes, its lineage (``tunefleet:retry_of``) and how many times it was retried
(``tunefleet:retry``, at most ``max_retries``). Its lineage is kept the way Optuna's
``RetryFailedTrialCallback`` keeps it (``failed_trial``: the first trial of the lineage,
``retry_history``), so ``RetryFailedTrialCallback.retried_trial_number(trial)`` names the trial
whose checkpoints a retry continues (``tunefleet.checkpoint``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs


#: Optuna's names (``RetryFailedTrialCallback``): the lineage's first trial, and every trial
#: of the lineage before this one.
FAILED_TRIAL = "failed_trial"
RETRY_HISTORY = "retry_history"


def lineage(trial: FrozenTrial) -> int:
    """The number of the first trial of ``trial``'s lineage (its own for a fresh trial): the
    key of its checkpoints."""
    first = trial.system_attrs.get(FAILED_TRIAL)
    return int(first) if isinstance(first, int) else trial.number


def retry_of(failed: FrozenTrial, max_retries: int, drawn: Mapping[str, Any] | None = None,
             *, handed_back: bool = False) -> FrozenTrial | None:
    """The WAITING trial that runs ``failed``'s parameters again, or None when they already
    ran ``max_retries`` extra times. ``drawn``: values drawn ahead for ``failed`` that its
    objective had not asked for yet, so that the retry draws nothing anew. ``handed_back``: the
    trial was preempted and handed back, not lost: its continuation uses up no retry."""
    count = int(failed.system_attrs.get(attrs.RETRY_COUNT, 0))
    if count >= max_retries and not handed_back:
        return None
    params = dict(drawn or {})
    params.update(failed.system_attrs.get("fixed_params", {}))
    params.update(failed.params)
    history = list(failed.system_attrs.get(RETRY_HISTORY, [])) + [failed.number]
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": params, attrs.RETRY_OF: failed.number,
                      attrs.RETRY_COUNT: count if handed_back else count + 1,
                      FAILED_TRIAL: lineage(failed), RETRY_HISTORY: history},
        user_attrs=dict(failed.user_attrs))
