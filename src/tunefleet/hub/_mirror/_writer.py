"""The writer of rounds to any durable storage, through its public methods (one call per change),
and the bookkeeping every writer shares: which durable trial each memory trial is, and what the
durable storage holds of the unfinished ones."""

from __future__ import annotations

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from tunefleet.errors import MirrorError
from tunefleet.hub._mirror._rounds import _Change, _Round, _Written


class _Writer:
    """Writes rounds to one kind of durable storage; holds the memory -> durable trial ids and
    what the storage has of each unfinished trial. Used by the writer thread only."""

    #: Whether a round that failed may be written again: true only where a round is one
    #: transaction that leaves nothing behind when it fails (one call per change here does).
    retry_safe = False

    def __init__(self, durable: BaseStorage) -> None:
        self.durable = durable
        self.ids: dict[int, int] = {}  # memory trial id -> durable id, unfinished trials only
        self.open: dict[int, _Written] = {}
        self.counts: dict[int, int] = {}  # durable study id -> trials it holds

    def known(self, memory_id: int, durable_id: int, trial: FrozenTrial) -> None:
        """Record a trial that the durable storage already holds (loaded at start)."""
        if not trial.state.is_finished():
            self.ids[memory_id] = durable_id
            self.open[memory_id] = _Written.of(durable_id, trial)

    def done(self, change: _Change, durable_id: int) -> None:
        """The round holding ``change`` is committed: remember what the storage has now."""
        if change.trial.state.is_finished():
            self.ids.pop(change.memory_id, None)
            self.open.pop(change.memory_id, None)
        else:
            self.ids[change.memory_id] = durable_id
            self.open[change.memory_id] = _Written.of(durable_id, change.trial)

    def write(self, rnd: _Round) -> None:
        if rnd.changes or rnd.study_ops:
            self._write(rnd)
            rnd.changes, rnd.study_ops = [], []  # written: a retry runs only what follows
        for op in rnd.after:
            if op[0] == "heartbeat":
                self.durable.record_heartbeat(op[1])  # type: ignore[attr-defined]
            elif op[0] == "delete_study":
                self.durable.delete_study(op[1])
            elif op[0] == "session":
                self.durable.remove_session()

    def _write(self, rnd: _Round) -> None:
        """Any storage, through its public methods: one call per change, no group commit."""
        d = self.durable
        for kind, study_id, key, value in rnd.study_ops:
            (d.set_study_user_attr if kind == "user" else d.set_study_system_attr)(
                study_id, key, value)
        for c in rnd.changes:
            t = c.trial
            if c.written is None:
                durable_id = d.create_new_trial(c.study_id, template_trial=t)
                if d.get_trial_number_from_id(durable_id) != t.number:
                    raise MirrorError(f"the durable storage numbered trial {t.number} otherwise: "
                                      "someone else wrote to the study")
            else:
                durable_id = c.written.durable_id
                for k in c.params:
                    dist = t.distributions[k]
                    d.set_trial_param(durable_id, k, dist.to_internal_repr(t.params[k]), dist)
                for s in c.steps:
                    d.set_trial_intermediate_value(durable_id, s, t.intermediate_values[s])
                for k, v in c.user.items():
                    d.set_trial_user_attr(durable_id, k, v)
                for k, v in c.system.items():
                    d.set_trial_system_attr(durable_id, k, v)
                if c.state:
                    d.set_trial_state_values(durable_id, t.state, t.values)
            self.done(c, durable_id)
