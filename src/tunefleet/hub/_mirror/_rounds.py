"""What one round of group commit writes: each changed trial's difference between memory and the
durable storage, and the study-level operations made since the last round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState


@dataclass
class _Written:
    """What the durable storage holds of a trial that was not finished when last written."""

    durable_id: int
    state: TrialState
    params: set[str]
    steps: set[int]
    user: dict[str, Any]
    system: dict[str, Any]

    @classmethod
    def of(cls, durable_id: int, trial: FrozenTrial) -> "_Written":
        return cls(durable_id, trial.state, set(trial.params), set(trial.intermediate_values),
                   dict(trial.user_attrs), dict(trial.system_attrs))


@dataclass(eq=False)
class _Change:
    """One trial's difference between memory and the durable storage, for one round."""

    memory_id: int
    study_id: int  # durable study id
    trial: FrozenTrial  # memory's trial now (memory never mutates it: copy on write)
    written: _Written | None  # None: not in the durable storage yet, write it whole
    params: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    user: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    state: bool = False  # the state (and its datetime and values) changed

    def diff(self) -> "_Change":
        w, t = self.written, self.trial
        if w is None:
            return self
        self.params = [k for k in t.params if k not in w.params]
        self.steps = [s for s in t.intermediate_values if s not in w.steps]
        self.user = {k: v for k, v in t.user_attrs.items() if k not in w.user or w.user[k] != v}
        self.system = {k: v for k, v in t.system_attrs.items()
                       if k not in w.system or w.system[k] != v}
        self.state = t.state != w.state
        return self


@dataclass
class _Round:
    seq: int
    study_ops: list[tuple]  # ("user" | "system", durable study id, key, value)
    changes: list[_Change]
    after: list[tuple]  # ("heartbeat", durable trial id) | ("delete_study", id) | ("session",)


#: FrozenTrial's attributes, in the order its ``__init__`` sets them.
_FIELDS = tuple(vars(FrozenTrial(0, TrialState.RUNNING, None, None, None, {}, {}, {}, {}, {}, 0)))


def _snapshot(trial: FrozenTrial) -> FrozenTrial:
    """A copy of memory's trial that later changes cannot reach: memory replaces a trial on
    each write, but ``optuna.Trial`` also updates the dicts of the object it was given.

    Read attribute by attribute, never through ``trial.__dict__``: this runs on the writer's
    thread, and on Python 3.11 two threads that make the same object's ``__dict__`` at once
    (a garbage collection inside one of them lets the other run; ``copy.copy`` on the
    coordinator's thread makes it too) leave two dicts on one array of values; the first
    freed frees it under the other, and the coordinator died of a SIGSEGV in a later
    collection, about 1 run in 20 of 4000 fast durable trials (docs/benchmarks.md)."""
    out = FrozenTrial.__new__(FrozenTrial)
    for name in _FIELDS:
        setattr(out, name, getattr(trial, name))
    out._params = dict(trial._params)
    out._distributions = dict(trial._distributions)
    out._user_attrs = dict(trial._user_attrs)
    out._system_attrs = dict(trial._system_attrs)
    out.intermediate_values = dict(trial.intermediate_values)
    return out
