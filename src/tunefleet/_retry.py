"""The one retry rule of every mode: a trial that failed through no fault of its objective (its
worker died, fell silent, or its coordinator did) runs again with the same parameters.

The hub (a lost worker, orphans of a dead coordinator) and storage mode (a trial whose heartbeat
went stale) both build the retry here, so that it carries the same things everywhere: every
parameter the failed trial had (and values drawn for it that it had not asked for yet), its user
attributes, its lineage (``tunefleet:retry_of``) and how many times it was retried
(``tunefleet:retry``, at most ``max_retries``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet import _attrs as attrs


def retry_of(failed: FrozenTrial, max_retries: int,
             drawn: Mapping[str, Any] | None = None) -> FrozenTrial | None:
    """The WAITING trial that runs ``failed``'s parameters again, or None when they already
    ran ``max_retries`` extra times. ``drawn``: values drawn ahead for ``failed`` that its
    objective had not asked for yet, so that the retry draws nothing anew."""
    count = int(failed.system_attrs.get(attrs.RETRY_COUNT, 0))
    if count >= max_retries:
        return None
    params = dict(drawn or {})
    params.update(failed.system_attrs.get("fixed_params", {}))
    params.update(failed.params)
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": params, attrs.RETRY_OF: failed.number,
                      attrs.RETRY_COUNT: count + 1},
        user_attrs=dict(failed.user_attrs))
