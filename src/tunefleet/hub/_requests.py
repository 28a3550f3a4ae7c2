"""A worker's calls on its trial, as the coordinator carries them out: the operations it
batches (parameters, reports, attributes, constraints) and the requests it waits on (a
``suggest_*``, ``should_prune``, a study or storage read, a streamed checkpoint)."""

from __future__ import annotations

from typing import Any

import optuna

from tunefleet._optuna import constraint_attr
from tunefleet.hub import _protocol as P
from tunefleet.hub._checkpoints import CheckpointKeeper
from tunefleet.hub._drawing import Drawer
from tunefleet.hub._state import _Running


def apply_ops(storage: Any, drawer: Drawer, run: _Running, ops: list[P.Op]) -> None:
    """Write OPS, sent by the worker that runs RUN, to its trial."""
    trial = run.trial
    cached = trial._cached_frozen_trial
    for op in ops:
        kind = type(op)
        if kind is P.Param:
            if op.name not in cached.distributions:
                storage.set_trial_param(trial._trial_id, op.name,
                                        op.dist.to_internal_repr(op.value), op.dist)
                cached.distributions[op.name] = op.dist
                cached.params[op.name] = op.value
                drawer.learn(op.name, op.dist)
        elif kind is P.Report:
            trial.report(op.value, op.step)
        elif kind is P.UserAttr:
            trial.set_user_attr(op.key, op.value)
        elif kind is P.Constraint:
            trial.set_constraint(op.key, op.value)


def ops_not_stored(frozen: Any, ops: list[P.Op]) -> list[P.Op]:
    """The ops of a reclaimed trial (every op it made, kept by its worker) that the stored
    trial ``frozen`` lacks: the dead coordinator may have stored any of them, or none."""
    def lacks(op: P.Op) -> bool:
        kind = type(op)
        if kind is P.Param:
            return op.name not in frozen.params
        if kind is P.Report:
            return op.step not in frozen.intermediate_values
        if kind is P.UserAttr:
            return op.key not in frozen.user_attrs or frozen.user_attrs[op.key] != op.value
        return constraint_attr(op.key) not in frozen.system_attrs
    return [op for op in ops if lacks(op)]


def answer(study: optuna.Study, storage: Any, drawer: Drawer,
           checkpoints: CheckpointKeeper | None, run: _Running, request: P.Request) -> Any:
    """The value that REQUEST, from the worker that runs RUN, asks for."""
    kind = type(request)
    if kind is P.Suggest:
        return drawer.suggest(run.trial, request.name, request.dist)
    if kind is P.Prune:
        return run.trial.should_prune()
    if kind is P.StudyGet:
        return getattr(study, request.attr)
    if kind is P.StudyCall:
        return getattr(study, request.method)(*request.args, **request.kwargs)
    if kind is P.StorageCall:  # trial.storage in a worker (integrations, optuna.artifacts)
        return P.answer_storage(storage, request)
    if checkpoints is not None:  # a remote worker's checkpoint, streamed
        return checkpoints.answer(run.trial._trial_id, run.trial.number, run.lineage, request)
    raise ValueError(f"unknown request {kind.__name__}")
