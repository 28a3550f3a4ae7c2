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

from tunefleet._optuna import CachedStudyInfo, UpdateFinishedTrialError, rdb_models, rdb_time


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
        except UpdateFinishedTrialError:
            return False
    models = rdb_models()

    table = models.TrialModel.__table__
    values: dict = {"state": new}
    if new == TrialState.RUNNING:
        values["datetime_start"] = rdb_time(datetime.now())
    if new.is_finished():
        values["datetime_complete"] = rdb_time(datetime.now())
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
                         system_attrs: dict, state: TrialState = TrialState.RUNNING) -> int:
    """Create a RUNNING (or STATE) trial carrying SYSTEM_ATTRS; return its id.

    Optuna's ``create_new_trial`` with a template runs two ORM queries per attribute, which
    doubled the CPU cost of a trial (a fleet of workers on a small node is CPU-bound). On a
    database the trial is created bare and its attributes inserted in one statement instead.
    """
    rdb = _rdb(storage)
    if rdb is None or state != TrialState.RUNNING:
        template = optuna.trial.create_trial(state=state, system_attrs=system_attrs)
        return storage.create_new_trial(study_id, template)
    import json

    models = rdb_models()

    trial_id = storage.create_new_trial(study_id)
    table = models.TrialSystemAttributeModel.__table__
    with rdb.engine.begin() as conn:
        conn.execute(table.insert(), [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                      for k, v in system_attrs.items()])
    return trial_id


def create_within_budget(storage: optuna.storages.BaseStorage, study_id: int,
                         system_attrs: dict, total: int,
                         state: TrialState = TrialState.RUNNING) -> tuple[int, int] | None:
    """Create a RUNNING (or WAITING: a retry) trial carrying SYSTEM_ATTRS only if the study has
    room for it: fewer than TOTAL trials that count (all but FAIL). Return its (id, number), or
    None when full.

    Counting and creating are one step for every worker, so no worker ever creates a trial past
    the budget that it then has to close unrun (the "void" FAIL placeholders two workers racing
    for the last place used to leave). Databases: one transaction that first writes the study
    row (a no-op update: the row lock Optuna's own ``create_new_trial`` takes with SELECT ...
    FOR UPDATE, and SQLite's write lock), then counts and inserts. Journal files: an exclusive
    lock on a file next to the journal around read, count and append. Other storages: ``None``
    is never returned and the caller checks the rank afterwards (see :mod:`.budget`).
    """
    rdb = _rdb(storage)
    if rdb is not None:
        made = _create_within_budget_rdb(rdb, study_id, system_attrs, total, state)
        if made is not None:
            _remember(storage, study_id, made, system_attrs, state)
        return made
    lock_path = _journal_lock_path(storage)
    if lock_path is None:
        trial_id = create_running_trial(storage, study_id, system_attrs, state)
        return trial_id, storage.get_trial_number_from_id(trial_id)
    import fcntl

    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            trials = storage.get_all_trials(study_id, deepcopy=False)
            if sum(t.state != TrialState.FAIL for t in trials) >= total:
                return None
            trial_id = create_running_trial(storage, study_id, system_attrs, state)
            return trial_id, storage.get_trial_number_from_id(trial_id)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _journal_lock_path(storage: optuna.storages.BaseStorage) -> str | None:
    """``<journal file>.tunefleet-lock`` for a journal file storage, else None."""
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    return f"{path}.tunefleet-lock" if isinstance(path, str) else None


def _create_within_budget_rdb(rdb: optuna.storages.RDBStorage, study_id: int,
                              system_attrs: dict, total: int,
                              state: TrialState) -> tuple[int, int] | None:
    import json

    models = rdb_models()
    from sqlalchemy import func, select

    studies = models.StudyModel.__table__
    trials = models.TrialModel.__table__
    attrs_table = models.TrialSystemAttributeModel.__table__
    with rdb.engine.begin() as conn:
        conn.execute(studies.update().where(studies.c.study_id == study_id)
                     .values(study_name=studies.c.study_name))
        counts = conn.execute(select(trials.c.state, func.count()).where(
            trials.c.study_id == study_id).group_by(trials.c.state)).all()
        n_all = sum(n for _, n in counts)
        n_failed = sum(n for state, n in counts if state == TrialState.FAIL)
        if n_all - n_failed >= total:
            return None
        inserted = conn.execute(trials.insert().values(
            number=n_all, study_id=study_id, state=state,
            datetime_start=rdb_time(datetime.now()) if state == TrialState.RUNNING else None))
        trial_id = int(inserted.inserted_primary_key[0])
        if system_attrs:
            conn.execute(attrs_table.insert(), [
                {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in system_attrs.items()])
    return trial_id, n_all


def _remember(storage: optuna.storages.BaseStorage, study_id: int, made: tuple[int, int],
              system_attrs: dict, state: TrialState) -> None:
    """Tell Optuna's trial cache about a trial created behind its back, as its own
    ``create_new_trial`` does (``set_trial_param`` looks the trial up there). Where the cache
    is not built as expected (another Optuna version), a read of the study fills it instead."""
    if not hasattr(storage, "_add_trials_to_cache"):
        return  # no cache: nothing to tell
    trial_id, number = made
    try:
        frozen = optuna.trial.FrozenTrial(
            number=number, state=state, value=None, values=None,
            datetime_start=datetime.now() if state == TrialState.RUNNING else None,
            datetime_complete=None, params={}, distributions={}, user_attrs={},
            system_attrs=dict(system_attrs), intermediate_values={}, trial_id=trial_id)
        with storage._lock:
            if study_id not in storage._studies:
                storage._studies[study_id] = CachedStudyInfo()
            storage._add_trials_to_cache(study_id, [frozen])
    except (ImportError, AttributeError, TypeError):
        storage.get_all_trials(study_id, deepcopy=False)  # reads the new trial into the cache
