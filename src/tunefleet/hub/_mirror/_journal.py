"""The writer of rounds to a journal: one append of ``JournalStorage``'s own log records per
round."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from tunefleet._optuna import JournalOperation, journal_time
from tunefleet.errors import MirrorError
from tunefleet.hub._mirror._rounds import _Round, _Written
from tunefleet.hub._mirror._writer import _Writer


class _JournalWriter(_Writer):
    """One append (one lock, one fsync) per round, of the log records ``JournalStorage`` itself
    writes, so that its replay builds exactly the trials memory holds."""

    def __init__(self, durable: optuna.storages.JournalStorage) -> None:
        super().__init__(durable)
        self.op = JournalOperation

    def _write(self, rnd: _Round) -> None:
        d: Any = self.durable
        op = self.op
        worker = d._replay_result.worker_id
        logs: list[dict[str, Any]] = []

        def log(code: int, **fields: Any) -> None:
            logs.append({"op_code": code, "worker_id": worker, **fields})

        for kind, study_id, key, value in rnd.study_ops:
            if kind == "user":
                log(op.SET_STUDY_USER_ATTR, study_id=study_id, user_attr={key: value})
            else:
                log(op.SET_STUDY_SYSTEM_ATTR, study_id=study_id, system_attr={key: value})
        new = [c for c in rnd.changes if c.written is None]
        for c in rnd.changes:
            t = c.trial
            if c.written is None:
                multi = t.values is not None and len(t.values) > 1
                record: dict[str, Any] = {
                    "study_id": c.study_id, "state": int(t.state),
                    "value": None if multi else t.value, "values": t.values if multi else None,
                    "datetime_start": journal_time(t.datetime_start),
                    "distributions": {k: distribution_to_json(v)
                                      for k, v in t.distributions.items()},
                    "params": {k: t.distributions[k].to_internal_repr(v)
                               for k, v in t.params.items()},
                    "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
                    "intermediate_values": t.intermediate_values}
                if t.datetime_complete is not None:
                    record["datetime_complete"] = journal_time(t.datetime_complete)
                log(op.CREATE_TRIAL, **record)
                continue
            trial_id = c.written.durable_id
            for k in c.params:
                dist = t.distributions[k]
                log(op.SET_TRIAL_PARAM, trial_id=trial_id, param_name=k,
                    param_value_internal=dist.to_internal_repr(t.params[k]),
                    distribution=distribution_to_json(dist))
            for s in c.steps:
                log(op.SET_TRIAL_INTERMEDIATE_VALUE, trial_id=trial_id, step=s,
                    intermediate_value=t.intermediate_values[s])
            for k, v in c.user.items():
                log(op.SET_TRIAL_USER_ATTR, trial_id=trial_id, user_attr={k: v})
            for k, v in c.system.items():
                log(op.SET_TRIAL_SYSTEM_ATTR, trial_id=trial_id, system_attr={k: v})
            if c.state:
                fields: dict[str, Any] = {"trial_id": trial_id, "state": int(t.state),
                                          "values": t.values}
                if t.state == TrialState.RUNNING:
                    fields["datetime_start"] = journal_time(t.datetime_start)
                elif t.state.is_finished():
                    fields["datetime_complete"] = journal_time(t.datetime_complete)
                log(op.SET_TRIAL_STATE_VALUES, **fields)
        if not logs:
            return
        with d._thread_lock:
            d._sync_with_backend()
            trial_ids = d._replay_result._study_id_to_trial_ids
            expected = {c.study_id: len(trial_ids[c.study_id]) for c in new}
            for c in new:  # numbered in order after what the study holds, as replay will
                if c.trial.number != expected[c.study_id]:
                    raise MirrorError(f"the journal would number trial {c.trial.number} as "
                                      f"{expected[c.study_id]}: someone else wrote to the study")
                expected[c.study_id] += 1
            d._backend.append_logs(logs)
            d._sync_with_backend()
            for c in new:
                ids = trial_ids[c.study_id]
                if len(ids) != expected[c.study_id]:
                    raise MirrorError("the journal holds trials this coordinator did not write: "
                                      "someone else wrote to the study")
                c.written = _Written.new(ids[c.trial.number], c.trial.state)
        for c in rnd.changes:
            self.done(c, c.written.durable_id)  # type: ignore[union-attr]
