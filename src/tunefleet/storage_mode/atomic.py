"""The two steps that must be won by exactly one worker: claiming a WAITING trial and failing
the RUNNING trial of a dead worker.

Optuna's ``set_trial_state_values`` reads the state, then writes it. On PostgreSQL and MySQL the
read locks the row (SELECT ... FOR UPDATE), but SQLite ignores FOR UPDATE and Python's sqlite3
runs that read outside the write transaction, so two workers can both "win" (seen in the
tests: one dead worker's trial retried three times). A conditional UPDATE
(``... WHERE state = expected``) is atomic on every database; the row count says who won.
Journal files are already exact: the order of the log decides.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable

import optuna
from optuna.trial import TrialState


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def compare_and_set(storage: optuna.storages.BaseStorage, trial_id: int,
                    expected: TrialState, new: TrialState) -> bool:
    """Move the trial from EXPECTED to NEW state; True only for the one caller that did."""
    rdb = _rdb(storage)
    if rdb is None:
        try:
            return bool(storage.set_trial_state_values(trial_id, state=new))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    values: dict = {"state": new}
    if new == TrialState.RUNNING:
        values["datetime_start"] = datetime.now()
    if new.is_finished():
        values["datetime_complete"] = datetime.now()
    stmt = (table.update().where(table.c.trial_id == trial_id)
            .where(table.c.state == expected).values(**values))
    with rdb.engine.begin() as conn:
        return conn.execute(stmt).rowcount == 1


def pop_waiting(study: optuna.Study,
                accept: Callable[[int], bool] = lambda number: True) -> tuple[int, int] | None:
    """Claim the first WAITING trial (a retry or an enqueued one) whose number ACCEPT takes and
    that no one else claimed; return its (id, number). One filtered read when there is none,
    as in ``Study.ask``."""
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if accept(t.number) and compare_and_set(storage, t._trial_id, TrialState.WAITING, TrialState.RUNNING):
            return t._trial_id, t.number
    return None


def create_running_trial(storage: optuna.storages.BaseStorage, study_id: int,
                         system_attrs: dict) -> int:
    """Create a RUNNING trial carrying SYSTEM_ATTRS; return its id.

    Optuna's ``create_new_trial`` with a template runs two ORM queries per attribute, which
    doubled the CPU cost of a trial (a fleet of workers on a small node is CPU-bound). On a
    database the trial is created bare and its attributes inserted in one statement instead.
    """
    rdb = _rdb(storage)
    if rdb is None:
        template = optuna.trial.create_trial(state=TrialState.RUNNING, system_attrs=system_attrs)
        return storage.create_new_trial(study_id, template)
    import json

    from optuna.storages._rdb import models

    trial_id = storage.create_new_trial(study_id)
    table = models.TrialSystemAttributeModel.__table__
    with rdb.engine.begin() as conn:
        conn.execute(table.insert(), [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                      for k, v in system_attrs.items()])
    return trial_id
