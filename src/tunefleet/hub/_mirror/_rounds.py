"""What one round of group commit writes: each changed trial's difference between memory and the
durable storage, and the study-level operations made since the last round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from optuna.trial import FrozenTrial, TrialState


@dataclass(slots=True)
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

    @classmethod
    def new(cls, durable_id: int, state: TrialState) -> "_Written":
        """A trial just inserted whole in this round: only its id is read before ``done``,
        which keeps ``of`` the unfinished ones (nothing allocated per trial but this)."""
        return cls(durable_id, state, _NO_NAMES, _NO_NAMES, _NO_ATTRS, _NO_ATTRS)  # type: ignore[arg-type]


#: Shared, read-only empties: a fast fleet's rounds hold thousands of changes, and each
#: container allocated per change counts towards the garbage collector's next collection.
_NO_NAMES: frozenset = frozenset()
_NO_ATTRS: Mapping[str, Any] = MappingProxyType({})


@dataclass(eq=False, slots=True)
class _Change:
    """One trial's difference between memory and the durable storage, for one round."""

    memory_id: int
    study_id: int  # durable study id
    trial: FrozenTrial  # memory's trial now (memory never mutates it: copy on write)
    written: _Written | None  # None: not in the durable storage yet, write it whole
    # What changed since ``written`` (set by ``diff``; a trial written whole needs none).
    params: Sequence[str] = ()
    steps: Sequence[int] = ()
    user: Mapping[str, Any] = field(default_factory=lambda: _NO_ATTRS)
    system: Mapping[str, Any] = field(default_factory=lambda: _NO_ATTRS)
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
    each write, but ``optuna.Trial`` also updates the dicts of the object it was given. A
    finished trial is memory's own object: nothing changes it any more (memory refuses
    updates to it, and its ``optuna.Trial`` is done), and a fast fleet's rounds are mostly
    such trials, whose five copied dicts each made the garbage collector run sooner (GC took
    a third of a durable run's time, docs/benchmarks.md).

    Read attribute by attribute, never through ``trial.__dict__``: this runs on the writer's
    thread, and on Python 3.11 two threads that make the same object's ``__dict__`` at once
    (a garbage collection inside one of them lets the other run; ``copy.copy`` on the
    coordinator's thread makes it too) leave two dicts on one array of values; the first
    freed frees it under the other, and the coordinator died of a SIGSEGV in a later
    collection, about 1 run in 20 of 4000 fast durable trials (docs/benchmarks.md)."""
    if trial.state.is_finished():
        return trial
    out = FrozenTrial.__new__(FrozenTrial)
    for name in _FIELDS:
        setattr(out, name, getattr(trial, name))
    out._params = dict(trial._params)
    out._distributions = dict(trial._distributions)
    out._user_attrs = dict(trial._user_attrs)
    out._system_attrs = dict(trial._system_attrs)
    out.intermediate_values = dict(trial.intermediate_values)
    return out
