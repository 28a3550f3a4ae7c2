"""An in-memory study written to its durable storage by group commit, for the hub's coordinator.

In hub mode the coordinator is the only writer of the study, so it may serve every read from an
:class:`~optuna.storages.InMemoryStorage` (samplers such as TPE read all trials for each new
trial; on a database those reads used to bound the hub's speed) and let one background thread
write the changes to the durable storage (SQLite, PostgreSQL, MySQL, a journal file).

The thread writes by *group commit*: each round takes every trial and study attribute that
changed since the last round and writes them in one transaction (one journal append), as the
difference between what memory holds now and what the durable storage already has. A trial that
started and finished between two rounds is written once, whole. Every change made to memory gets
a sequence number (:attr:`MirroredStorage.seq`); :attr:`MirroredStorage.durable_seq` is the
highest one the durable storage is known to hold. The coordinator counts a trial as finished
(progress bar, callbacks, best value) only once ``durable_seq`` has passed the change that
finished it, so a crash of the coordinator never loses a trial that was shown or counted, and it
holds back new trials while :meth:`MirroredStorage.lag` says the storage is behind.

What lands in the durable storage is an ordinary Optuna study (numbers, states, params,
distributions, values, intermediate values, attributes, datetimes as ``study.optimize`` writes
them; start and completion times are memory's). Databases are written through Optuna's own table
definitions; the journal through the same log records ``JournalStorage`` appends. A durable write
that fails stops the mirroring (the two would no longer match): the error is logged once and
raised by every later ``flush()`` and ``close()``.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tunefleet._optuna import (BaseHeartbeat, FrozenStudy, JournalOperation, journal_time,
                               rdb_models, rdb_time, stale_trial_callback)

__all__ = ["MirrorError", "MirroredStorage", "mirrored_study", "durable_storage"]

_logger = logging.getLogger("tunefleet.mirror")

#: Seconds a round waits for more changes before it is written (group commit). Half the 0.1 s
#: the coordinator lets the storage fall behind; long enough that a coordinator whose trials end
#: one by one (a slow sampler) writes several per transaction, and that most trials of a fast
#: fleet start and end within one round (one INSERT each). 50 ms against 20 ms: the writer's
#: CPU per trial fell 40 % with TPE, durable Random went from 1450-1740 to 1780-1970 trials/s.
GROUP_WINDOW = 0.05


class MirrorError(RuntimeError):
    """The durable storage did not accept the mirror's writes; it no longer matches memory."""


def durable_storage(storage: BaseStorage) -> BaseStorage:
    """The storage that really holds the data: Optuna wraps an RDBStorage in a _CachedStorage,
    whose caching the mirror makes useless (and whose reads it exists to avoid)."""
    backend = getattr(storage, "_backend", None)
    if isinstance(storage, optuna.storages._CachedStorage) and isinstance(backend, BaseStorage):
        return backend
    return storage


# -- what one round writes ---------------------------------------------------------------------

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


def _snapshot(trial: FrozenTrial) -> FrozenTrial:
    """A copy of memory's trial that later changes cannot reach: memory replaces a trial on
    each write, but ``optuna.Trial`` also updates the dicts of the object it was given."""
    out = copy.copy(trial)
    out._params = dict(trial._params)
    out._distributions = dict(trial._distributions)
    out._user_attrs = dict(trial._user_attrs)
    out._system_attrs = dict(trial._system_attrs)
    out.intermediate_values = dict(trial.intermediate_values)
    return out


def _utc(value: datetime | None) -> datetime | None:
    """Memory's naive local time as an RDBStorage stores it (naive UTC in Optuna 5.x)."""
    return rdb_time(value)


def _iso(value: datetime | None) -> str | None:
    """Memory's naive local time as the text a journal stores (aware UTC in Optuna 5.x)."""
    return journal_time(value)


class _Writer:
    """Writes rounds to one kind of durable storage; holds the memory -> durable trial ids and
    what the storage has of each unfinished trial. Used by the writer thread only."""

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
        self._write(rnd)
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


class _RDBWriter(_Writer):
    """One transaction per round, written with Optuna's own table definitions (SQLAlchemy Core
    with executemany; on SQLite the same statements, compiled once, as multi-row INSERTs on the
    DBAPI cursor), exactly the rows ``RDBStorage`` would write one call at a time."""

    CHECK_EVERY = 1.0  # seconds between checks that nobody else adds trials to the study
    MAX_VARIABLES = 999  # bound values in one SQLite statement (its limit before 3.32)

    def __init__(self, durable: optuna.storages.RDBStorage) -> None:
        import sqlalchemy as sa

        super().__init__(durable)
        models = rdb_models()
        self.m = models
        self.engine = durable.engine
        self.trials = models.TrialModel.__table__
        self.params = models.TrialParamModel.__table__
        self.values = models.TrialValueModel.__table__
        self.inter = models.TrialIntermediateValueModel.__table__
        self.user = models.TrialUserAttributeModel.__table__
        self.system = models.TrialSystemAttributeModel.__table__
        self.study_user = models.StudyUserAttributeModel.__table__
        self.study_system = models.StudySystemAttributeModel.__table__
        self.next_check = 0.0
        T, bind = self.trials, sa.bindparam
        # Built once: each round executes them with its rows (executemany).
        self.stmts: dict[str, Any] = {
            "trials": T.insert(), "params": self.params.insert(), "inter": self.inter.insert(),
            "user": self.user.insert(), "system": self.system.insert(),
            "values": self.values.insert(),
            "state": T.update().where(T.c.trial_id == bind("b_id")).values(
                state=bind("b_state"), datetime_start=bind("b_start"),
                datetime_complete=bind("b_complete")),
            "ids": sa.select(T.c.trial_id, T.c.number).where(T.c.study_id == bind("s"),
                                                             T.c.number >= bind("f")),
            **{f"{name}-update": table.update().where(
                table.c.trial_id == bind("b_id"), table.c.key == bind("b_key")).values(
                value_json=bind("b_json")) for name, table in (("user", self.user),
                                                               ("system", self.system))}}
        # On SQLite they go straight to the DBAPI cursor of the round's transaction, compiled
        # once: SQLAlchemy's work per call was most of the writer's Python time, which the
        # coordinator's sampler waits out (one GIL). On a server SQLAlchemy stays: its batched
        # INSERT (insertmanyvalues) beats a DBAPI executemany there.
        dialect = self.engine.dialect
        self.raw = dialect.name == "sqlite" and dialect.paramstyle == "qmark"
        self.plans: dict[str, tuple[str, list[tuple[str, Any]]]] = {}
        if self.raw:
            try:  # the compiled form's parts used are SQLAlchemy's, not public API
                self._plan("trials", ["number", "study_id", "state", "datetime_start",
                                      "datetime_complete"])
            except AttributeError:  # pragma: no cover - another SQLAlchemy
                self.raw = False

    def _plan(self, name: str, keys: list[str]) -> tuple[str, list[tuple[str, Any]]]:
        """Statement ``name`` compiled for this database once: its SQL and, in bind order, each
        bind's name and SQLAlchemy's conversion of its value (enums, datetimes, floats)."""
        plan = self.plans.get(name)
        if plan is None:
            compiled = self.stmts[name].compile(dialect=self.engine.dialect, column_keys=keys)
            procs = compiled._bind_processors
            plan = self.plans[name] = (compiled.string,
                                       [(k, procs.get(k)) for k in compiled.positiontup])
        return plan

    def _many(self, conn: Any, name: str, rows: list[dict[str, Any]]) -> list[Any]:
        """Execute statement ``name`` once per row of ``rows`` (all with the same keys) in the
        round's transaction; return the rows of a query."""
        if not self.raw:
            result = conn.execute(self.stmts[name], rows if len(rows) > 1 else rows[0])
            return list(result) if result.returns_rows else []
        sql, order = self._plan(name, list(rows[0]))

        def values(row: dict[str, Any]) -> list[Any]:
            return [row[k] if p is None else p(row[k]) for k, p in order]

        cursor = conn.connection.cursor()
        try:
            if not sql.startswith("INSERT"):
                if len(rows) == 1:
                    return cursor.execute(sql, values(rows[0])).fetchall()
                cursor.executemany(sql, [values(row) for row in rows])
                return []
            # Multi-row INSERTs: one step of SQLite (one release of the GIL, which the sampler
            # then has to wait to get back) per statement instead of per row. Their sizes are
            # powers of two, so that SQLite's cache of prepared statements (128 per connection)
            # holds a few small ones: one size per round had grown it by 11 MB.
            head, one = sql.split(" VALUES ", 1)
            most = 1 << ((self.MAX_VARIABLES // len(order)).bit_length() - 1)
            start = 0
            while start < len(rows):
                size = min(most, 1 << ((len(rows) - start).bit_length() - 1))
                flat = [v for row in rows[start:start + size] for v in values(row)]
                cursor.execute(f"{head} VALUES {', '.join([one] * size)}", flat)
                start += size
            return []
        finally:
            cursor.close()

    def _write(self, rnd: _Round) -> None:
        rows: dict[str, list[dict[str, Any]]] = {"params": [], "values": [], "inter": [],
                                                 "user": [], "system": []}
        updates: dict[str, list[dict[str, Any]]] = {"user": [], "system": []}
        state_rows: list[dict[str, Any]] = []
        new = [c for c in rnd.changes if c.written is None]
        with self.engine.begin() as conn:
            for kind, study_id, key, value in rnd.study_ops:
                table = self.study_user if kind == "user" else self.study_system
                conn.execute(table.delete().where(table.c.study_id == study_id,
                                                  table.c.key == key))
                conn.execute(table.insert(), [{"study_id": study_id, "key": key,
                                               "value_json": json.dumps(value)}])
            if new:
                self._check_numbers(conn, new)
                trial_rows = [{"number": c.trial.number, "study_id": c.study_id,
                               "state": c.trial.state,
                               "datetime_start": _utc(c.trial.datetime_start),
                               "datetime_complete": _utc(c.trial.datetime_complete)}
                              for c in new]
                self._many(conn, "trials", trial_rows)
                # Numbers are unique in a study (checked above), so they give the new ids:
                # one query instead of one INSERT ... RETURNING per row.
                ids: dict[tuple[int, int], int] = {}
                for study_id in {c.study_id for c in new}:
                    first = min(c.trial.number for c in new if c.study_id == study_id)
                    for trial_id, number in self._many(conn, "ids", [{"s": study_id,
                                                                          "f": first}]):
                        ids[(study_id, number)] = trial_id
                new_ids = [ids[(c.study_id, c.trial.number)] for c in new]
                for c, durable_id in zip(new, new_ids):
                    self._children(c, durable_id, rows, whole=True)
                    c.written = _Written(durable_id, c.trial.state, set(), set(), {}, {})
            fresh = set(new)
            for c in rnd.changes:
                if c in fresh:
                    continue
                durable_id = c.written.durable_id  # type: ignore[union-attr]
                self._children(c, durable_id, rows, whole=False, updates=updates)
                if c.state:
                    t = c.trial
                    state_rows.append({"b_id": durable_id, "b_state": t.state,
                                       "b_start": _utc(t.datetime_start),
                                       "b_complete": _utc(t.datetime_complete)})
            for name in ("params", "inter", "user", "system", "values"):
                if rows[name]:
                    self._many(conn, name, rows[name])
            for name in ("user", "system"):
                if updates[name]:
                    self._many(conn, f"{name}-update", updates[name])
            if state_rows:
                self._many(conn, "state", state_rows)
        for c in rnd.changes:
            self.done(c, c.written.durable_id)  # type: ignore[union-attr]

    def _children(self, c: _Change, durable_id: int, rows: dict[str, list[dict[str, Any]]], *,
                  whole: bool, updates: dict[str, list[dict[str, Any]]] | None = None) -> None:
        t = c.trial
        m = self.m
        for k in (t.params if whole else c.params):
            dist = t.distributions[k]
            rows["params"].append({"trial_id": durable_id, "param_name": k,
                                   "param_value": dist.to_internal_repr(t.params[k]),
                                   "distribution_json": distribution_to_json(dist)})
        for s in (t.intermediate_values if whole else c.steps):
            value, kind = m.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                t.intermediate_values[s])
            rows["inter"].append({"trial_id": durable_id, "step": s, "intermediate_value": value,
                                  "intermediate_value_type": kind})
        for name, attrs, old in (("user", t.user_attrs if whole else c.user,
                                  None if whole else c.written.user),  # type: ignore[union-attr]
                                 ("system", t.system_attrs if whole else c.system,
                                  None if whole else c.written.system)):  # type: ignore[union-attr]
            for k, v in attrs.items():
                if old is not None and k in old:
                    updates[name].append({"b_id": durable_id, "b_key": k,  # type: ignore[index]
                                          "b_json": json.dumps(v)})
                else:
                    rows[name].append({"trial_id": durable_id, "key": k,
                                       "value_json": json.dumps(v)})
        if (whole or c.state) and t.state.is_finished() and t.values is not None:
            for objective, v in enumerate(t.values):
                value, kind = m.TrialValueModel.value_to_stored_repr(v)
                rows["values"].append({"trial_id": durable_id, "objective": objective,
                                       "value": value, "value_type": kind})

    def _check_numbers(self, conn: Any, new: list[_Change]) -> None:
        """New trials are numbered by memory; check now and then (and for each study's first
        round) that the study holds exactly the trials numbered before them."""
        import sqlalchemy as sa

        now = time.monotonic()
        for c in new:
            study_id = c.study_id
            expected = self.counts.get(study_id)
            if expected is None or now >= self.next_check:
                held = conn.execute(sa.select(sa.func.count(self.trials.c.trial_id)).where(
                    self.trials.c.study_id == study_id)).scalar_one()
                if expected is not None and held != expected:
                    raise MirrorError(f"the durable study holds {held} trials where this "
                                      f"coordinator wrote {expected}: someone else wrote to it")
                expected = held
                self.next_check = now + self.CHECK_EVERY
            if c.trial.number != expected:
                raise MirrorError(f"the durable storage would number trial {c.trial.number} as "
                                  f"{expected}: someone else wrote to the study")
            self.counts[study_id] = expected + 1


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
                    "datetime_start": _iso(t.datetime_start),
                    "distributions": {k: distribution_to_json(v)
                                      for k, v in t.distributions.items()},
                    "params": {k: t.distributions[k].to_internal_repr(v)
                               for k, v in t.params.items()},
                    "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
                    "intermediate_values": t.intermediate_values}
                if t.datetime_complete is not None:
                    record["datetime_complete"] = _iso(t.datetime_complete)
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
                    fields["datetime_start"] = _iso(t.datetime_start)
                elif t.state.is_finished():
                    fields["datetime_complete"] = _iso(t.datetime_complete)
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
                c.written = _Written(ids[c.trial.number], c.trial.state, set(), set(), {}, {})
        for c in rnd.changes:
            self.done(c, c.written.durable_id)  # type: ignore[union-attr]


def _make_writer(durable: BaseStorage) -> _Writer:
    if isinstance(durable, optuna.storages.RDBStorage):
        try:
            return _RDBWriter(durable)
        except (ImportError, AttributeError):  # pragma: no cover - another Optuna
            pass
    if isinstance(durable, optuna.storages.JournalStorage) and all(
            hasattr(durable, n) for n in ("_backend", "_replay_result", "_thread_lock")):
        try:
            return _JournalWriter(durable)
        except ImportError:  # pragma: no cover - another Optuna
            pass
    return _Writer(durable)


class MirroredStorage(BaseStorage, BaseHeartbeat):
    """An in-memory copy of study ``study_name`` of ``durable``, written back by group commit.

    Only this object may write the study while it is open (the hub's coordinator owns it);
    trials added to the durable study by anyone else make the mirror stop with
    :class:`MirrorError`. Studies other than ``study_name`` are invisible, except those created
    through the mirror. ``on_durable`` is called (in the writer thread) after each round.
    """

    def __init__(self, durable: BaseStorage, study_name: str,
                 on_durable: Callable[[], None] | None = None) -> None:
        self._durable = durable_storage(durable)
        self._writer = _make_writer(self._durable)
        self._memory = InMemoryStorage()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._study_ids: dict[int, int] = {}  # memory study id -> durable study id
        self._trial_study: dict[int, int] = {}  # memory trial id -> memory study id (unfinished)
        self._beats: dict[int, float] = {}  # memory trial id -> time.time() of last heartbeat
        self._dirty: dict[int, None] = {}  # memory trial ids changed since the last round
        self._study_ops: list[tuple] = []
        self._after: list[tuple] = []
        self._seq = 0  # changes made to memory
        self._durable_seq = 0  # changes the durable storage holds
        self._taken_seq = 0  # changes the writer has dealt with (written, or not after an error)
        self._queued_since: float | None = None  # oldest change not taken by a round
        self._inflight_since: float | None = None  # oldest change of the round being written
        self._on_durable = on_durable
        self._error: BaseException | None = None
        self._stopping = False
        self._closed = False
        self._idle = False  # the writer waits for a change
        self._flushing = 0  # callers of flush() waiting: no gathering window
        self.orphans: list[int] = []  # memory ids of trials RUNNING when loaded
        self._load(study_name)
        self._thread = threading.Thread(target=self._run, name=f"tunefleet-mirror-{study_name}",
                                        daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # -- loading --------------------------------------------------------------------------------
    def _load(self, study_name: str) -> None:
        durable = self._durable
        durable_id = durable.get_study_id_from_name(study_name)
        memory_id = self._memory.create_new_study(durable.get_study_directions(durable_id),
                                                  study_name)
        self._study_ids[memory_id] = durable_id
        for key, value in durable.get_study_user_attrs(durable_id).items():
            self._memory.set_study_user_attr(memory_id, key, value)
        for key, value in durable.get_study_system_attrs(durable_id).items():
            self._memory.set_study_system_attr(memory_id, key, value)
        stale = set(self._durable_stale_ids(durable_id))
        now = time.time()
        known = self._memory._studies[memory_id].param_distribution
        trials = sorted(durable.get_all_trials(durable_id, deepcopy=False),
                        key=lambda t: t.number)
        for index, trial in enumerate(trials):
            if trial.number != index:
                raise MirrorError(f"study {study_name!r}: trial numbers are not 0..n-1 "
                                  f"(found {trial.number} at position {index})")
            memory_trial_id = self._memory.create_new_trial(memory_id, template_trial=trial)
            self._writer.known(memory_trial_id, trial._trial_id, trial)
            if not trial.state.is_finished():
                self._trial_study[memory_trial_id] = memory_id
            known.update(trial.distributions)
            if trial.state == TrialState.RUNNING:
                self.orphans.append(memory_trial_id)
                # Stale now if the durable storage says so, else once nobody has beaten for
                # them for a grace period from now.
                self._beats[memory_trial_id] = 0.0 if trial._trial_id in stale else now
        self._writer.counts[durable_id] = len(trials)

    def _durable_stale_ids(self, durable_study_id: int) -> list[int]:
        if not self._durable_heartbeat():
            return []
        return list(self._durable._get_stale_trial_ids(durable_study_id))  # type: ignore[attr-defined]

    def _durable_heartbeat(self) -> bool:
        return (isinstance(self._durable, BaseHeartbeat)
                and self._durable.get_heartbeat_interval() is not None)

    # -- changes and rounds ---------------------------------------------------------------------
    def _changed(self, trial_id: int | None = None) -> None:
        """Note a change made to memory (the caller holds the lock)."""
        self._seq += 1
        if trial_id is not None:
            self._dirty[trial_id] = None
        if self._queued_since is None:
            self._queued_since = time.monotonic()
        if self._closed:
            self._write_round(self._take_round())  # no thread any more: write at once
            self._raise_error()
        elif self._idle:
            self._cond.notify_all()  # the writer waits for work (not while it gathers a round)

    def _take_round(self) -> _Round:
        """Everything changed since the last round, as memory has it now (the caller holds the
        lock; memory copies a trial on write, so the objects taken here do not change)."""
        changes = []
        writer = self._writer
        for memory_id in self._dirty:
            study = self._trial_study.get(memory_id)
            if study is None or study not in self._study_ids:
                continue  # its study was deleted since
            trial = _snapshot(self._memory._get_trial(memory_id))
            if trial.state.is_finished():
                del self._trial_study[memory_id]
            changes.append(_Change(memory_id, self._study_ids[study], trial,
                                   writer.open.get(memory_id)).diff())
        after = [(op[0], writer.ids[op[1]]) if op[0] == "heartbeat" else op
                 for op in self._after if op[0] != "heartbeat" or op[1] in writer.ids]
        rnd = _Round(self._seq, self._study_ops, changes, after)
        self._dirty, self._study_ops, self._after = {}, [], []
        self._inflight_since, self._queued_since = self._queued_since, None
        return rnd

    def _write_round(self, rnd: _Round) -> None:
        if self._error is None:
            try:
                self._writer.write(rnd)
            except BaseException as exc:  # kept for flush(); memory goes on without it
                self._error = exc
                _logger.error(f"tunefleet: the durable storage refused a write; it is no longer "
                              f"updated: {exc!r}")
        if self._error is None:
            self._durable_seq = rnd.seq
        self._taken_seq = rnd.seq
        self._inflight_since = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._seq == self._taken_seq and not self._stopping:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                if self._seq == self._taken_seq:
                    return
                # Group commit: let the changes of the next few milliseconds join this round
                # (one transaction instead of one per trial when trials end one by one, as
                # with a sampler-bound coordinator), unless someone waits for it.
                while (not self._stopping and not self._flushing and self._queued_since
                       is not None and time.monotonic() - self._queued_since < GROUP_WINDOW):
                    self._cond.wait(GROUP_WINDOW - (time.monotonic() - self._queued_since))
                rnd = self._take_round()
            self._write_round(rnd)
            with self._cond:
                self._cond.notify_all()
            if self._on_durable is not None:
                self._on_durable()

    # -- flushing and closing ---------------------------------------------------------------------
    @property
    def error(self) -> BaseException | None:
        """The first durable write that failed, if any (the mirror stopped writing there)."""
        return self._error

    @property
    def seq(self) -> int:
        """How many changes memory has had; compare with :attr:`durable_seq`."""
        return self._seq

    @property
    def durable_seq(self) -> int:
        """How many of those changes the durable storage holds (it stops at a failed write)."""
        return self._durable_seq

    @property
    def pending(self) -> int:
        """How many changes the writer has yet to deal with."""
        return self._seq - self._taken_seq

    def lag(self) -> float:
        """Seconds since the oldest change the durable storage does not hold yet was made."""
        since = self._inflight_since if self._inflight_since is not None else self._queued_since
        return 0.0 if since is None else time.monotonic() - since

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the durable storage holds every change made so far; raise
        :class:`MirrorError` (from the original exception) if one of them failed, and
        ``TimeoutError`` if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._seq
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._taken_seq < target and self._thread.is_alive():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"the durable storage is "
                                           f"{target - self._taken_seq} changes behind")
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        self._raise_error()

    def close(self) -> None:
        """Flush, stop the writer thread, and raise a durable write's error if there was one.
        Later writes go to memory and, in the calling thread, to the durable storage."""
        with self._cond:
            if self._closed:
                self._raise_error()
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            self._closed = True
        atexit.unregister(self._at_exit)
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise MirrorError(f"the durable storage {type(self._durable).__name__} missed writes "
                              f"and no longer matches the study: {self._error!r}") from self._error

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # already logged by the writer
            pass

    def __enter__(self) -> "MirroredStorage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a MirroredStorage lives in one process: send its durable storage "
                        "instead")

    # -- studies ----------------------------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection],
                         study_name: str | None = None) -> int:
        with self._lock:
            self.flush()
            durable_id = self._durable.create_new_study(directions, study_name)
            name = self._durable.get_study_name_from_id(durable_id)
            memory_id = self._memory.create_new_study(directions, name)
            self._study_ids[memory_id] = durable_id
            self._writer.counts[durable_id] = 0
            return memory_id

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self._memory.delete_study(study_id)
            self._after.append(("delete_study", self._study_ids.pop(study_id)))
            self._changed()

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_study_user_attr(study_id, key, value)
            self._study_ops.append(("user", self._study_ids[study_id], key, value))
            self._changed()

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_study_system_attr(study_id, key, value)
            self._study_ops.append(("system", self._study_ids[study_id], key, value))
            self._changed()

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._memory.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._memory.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._memory.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._memory.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._memory.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._memory.get_all_studies()

    # -- trials: writes ---------------------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with self._lock:
            trial_id = self._memory.create_new_trial(study_id, template_trial)
            self._trial_study[trial_id] = study_id
            self._changed(trial_id)
            return trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._lock:
            self._memory.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            self._changed(trial_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        with self._lock:
            changed = self._memory.set_trial_state_values(trial_id, state, values)
            if changed:
                if state.is_finished():
                    self._beats.pop(trial_id, None)
                self._changed(trial_id)
            return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        with self._lock:
            self._memory.set_trial_intermediate_value(trial_id, step, intermediate_value)
            self._changed(trial_id)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_trial_user_attr(trial_id, key, value)
            self._changed(trial_id)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        _check_json(key, value)
        with self._lock:
            self._memory.set_trial_system_attr(trial_id, key, value)
            self._changed(trial_id)

    def remove_session(self) -> None:
        with self._lock:
            self._after.append(("session",))
            self._changed()

    # -- trials: reads ----------------------------------------------------------------------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._memory.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._memory.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_n_trials(self, study_id: int,
                     state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._memory.get_n_trials(study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._memory.get_best_trial(study_id)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._memory.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._memory.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._memory.get_trial_param(trial_id, param_name)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._memory.get_trial_params(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._memory.get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._memory.get_trial_system_attrs(trial_id)

    # -- heartbeats (only when the durable storage has them enabled) -------------------------------
    def get_heartbeat_interval(self) -> int | None:
        if isinstance(self._durable, BaseHeartbeat):
            return self._durable.get_heartbeat_interval()
        return None

    def get_heartbeat_stale_trial_callback(
            self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        if isinstance(self._durable, BaseHeartbeat):
            return stale_trial_callback(self._durable)
        return None

    def get_failed_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        """Optuna < 4.9's name of the method above (abstract there, deprecated since)."""
        return self.get_heartbeat_stale_trial_callback()

    def record_heartbeat(self, trial_id: int) -> None:
        """Remember the beat here (staleness is judged from memory, which is never behind) and
        pass it on, so that other readers of the durable storage see the trial alive."""
        with self._lock:
            self._memory.get_trial(trial_id)  # KeyError for an unknown trial, as Optuna's
            self._beats[trial_id] = time.time()
            if self._durable_heartbeat():
                self._dirty[trial_id] = None  # the trial must exist there before its beat
                self._after.append(("heartbeat", trial_id))
                self._changed()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        interval = self.get_heartbeat_interval()
        if interval is None:
            return []
        grace = getattr(self._durable, "grace_period", None) or 2 * interval
        now = time.time()
        with self._lock:
            return [t._trial_id for t in self._memory.get_all_trials(
                        study_id, deepcopy=False, states=(TrialState.RUNNING,))
                    if t._trial_id in self._beats and now - self._beats[t._trial_id] > grace]


def _check_json(key: str, value: Any) -> None:
    """Refuse, in the caller's thread as the durable storage would, a value it cannot store."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"attribute {key!r}: value is not JSON serializable: {exc}") from None


def mirrored_study(study: optuna.Study, on_durable: Callable[[], None] | None = None
                   ) -> tuple[optuna.Study, MirroredStorage | None]:
    """``study`` on a :class:`MirroredStorage` of its RDB or journal storage, with the same
    name, sampler and pruner, and the mirror (call ``close()`` on it when done); ``(study,
    None)`` for any other storage (in memory already, or one the mirror does not know)."""
    durable = durable_storage(study._storage)
    if not isinstance(durable, (optuna.storages.RDBStorage, optuna.storages.JournalStorage)):
        return study, None
    if isinstance(durable, optuna.storages.RDBStorage) and durable.engine.url.database in (
            None, "", ":memory:") and durable.engine.url.get_backend_name() == "sqlite":
        return study, None  # SQLite in memory exists per connection: the writer would not see it
    mirror = MirroredStorage(durable, study.study_name, on_durable)
    try:
        mirrored = optuna.Study(study_name=study.study_name, storage=mirror,
                                sampler=study.sampler, pruner=study.pruner)
    except BaseException:
        mirror.close()
        raise
    return mirrored, mirror
