"""The writer of rounds to a database: one transaction per round, SQLite's rows by multi-row
INSERTs on the DBAPI cursor."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution as Categorical
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from tunefleet._optuna import rdb_models, rdb_time
from tunefleet._outage import quiet_outage_noise
from tunefleet.errors import MirrorError
from tunefleet.hub._mirror._rounds import _Change, _Round, _Written
from tunefleet.hub._mirror._writer import _Writer


#: Each statement's values, in the order the rows below are built (tuples, not dicts: a fast
#: fleet's rounds hold thousands of rows, and each dict was work and a count towards the
#: garbage collector's next run).
KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("number", "study_id", "state", "datetime_start", "datetime_complete"),
    "params": ("trial_id", "param_name", "param_value", "distribution_json"),
    "inter": ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
    "user": ("trial_id", "key", "value_json"), "system": ("trial_id", "key", "value_json"),
    "values": ("trial_id", "objective", "value", "value_type"),
    "state": ("b_id", "b_state", "b_start", "b_complete"),
    "user-update": ("b_id", "b_key", "b_json"), "system-update": ("b_id", "b_key", "b_json"),
    "ids": ("s", "f")}


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
        # The enums the tables store by name, which a lookup converts (see _faster).
        self.enums = (TrialState, models.TrialValueModel.TrialValueType,
                      models.TrialIntermediateValueModel.TrialIntermediateValueType)
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
        # A database server may be away for a while (restart, failover): a round is one
        # transaction, so it is written again once it is back. SQLite is a file: no outage.
        self.retry_safe = dialect.name != "sqlite"
        if self.retry_safe:
            quiet_outage_noise(self.engine)
        self.plans: dict[str, tuple[str, list[tuple[str, Any]]]] = {}
        # A parameter's distribution as its rows store it, made once per distribution: the
        # same few distributions come back in every trial (its JSON was a fifth of the
        # writer's time).
        self.dist_json: dict[Any, str] = {}
        # Each parameter's last distribution and its JSON: one comparison instead of a hash
        # (which sorts the distribution's fields) and a comparison.
        self.last_dist: dict[str, tuple[Any, str]] = {}
        if self.raw:
            try:  # the compiled form's parts used are SQLAlchemy's, not public API
                self._plan("trials")
            except AttributeError:  # pragma: no cover - another SQLAlchemy
                self.raw = False

    def _plan(self, name: str) -> tuple[str, list[tuple[int, Any]]]:
        """Statement ``name`` compiled for this database once: its SQL and, in bind order, the
        place of each bind's value in a row of ``KEYS[name]`` and SQLAlchemy's conversion of
        it (enums, datetimes), or a faster one that gives the same text."""
        plan = self.plans.get(name)
        if plan is None:
            keys = KEYS[name]
            compiled = self.stmts[name].compile(dialect=self.engine.dialect,
                                                column_keys=list(keys))
            procs = compiled._bind_processors
            plan = self.plans[name] = (compiled.string,
                                       [(keys.index(k), _faster(procs.get(k), self.enums))
                                        for k in compiled.positiontup])
        return plan

    def _many(self, conn: Any, name: str, rows: list[tuple]) -> list[Any]:
        """Execute statement ``name`` once per row of ``rows`` (tuples in the order of
        ``KEYS[name]``) in the round's transaction; return the rows of a query."""
        if not self.raw:
            keys = KEYS[name]
            dicts = [dict(zip(keys, row)) for row in rows]
            result = conn.execute(self.stmts[name], dicts if len(dicts) > 1 else dicts[0])
            return list(result) if result.returns_rows else []
        sql, order = self._plan(name)

        def values(rows: list[tuple]) -> list[Any]:
            """The rows' values in bind order, in one flat list (no list per row)."""
            return [row[i] if p is None else p(row[i]) for row in rows for i, p in order]

        cursor = conn.connection.cursor()
        try:
            if not sql.startswith("INSERT"):
                if len(rows) == 1:
                    return cursor.execute(sql, values(rows)).fetchall()
                cursor.executemany(sql, [values([row]) for row in rows])
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
                cursor.execute(f"{head} VALUES {', '.join([one] * size)}",
                               values(rows[start:start + size]))
                start += size
            return []
        finally:
            cursor.close()

    def _write(self, rnd: _Round) -> None:
        rows: dict[str, list[tuple]] = {"params": [], "values": [], "inter": [], "user": [],
                                        "system": []}
        updates: dict[str, list[tuple]] = {"user": [], "system": []}
        state_rows: list[tuple] = []
        new = [c for c in rnd.changes if c.written is None]
        counts = dict(self.counts)
        try:
            self._transaction(rnd, new, rows, updates, state_rows)
        except BaseException:
            # Rolled back: the round is written again whole after an outage.
            for c in new:
                c.written = None
            self.counts = counts
            raise
        for c in rnd.changes:
            self.done(c, c.written.durable_id)  # type: ignore[union-attr]

    def _transaction(self, rnd: _Round, new: list[_Change], rows: dict[str, list[tuple]],
                     updates: dict[str, list[tuple]], state_rows: list[tuple]) -> None:
        with self.engine.begin() as conn:
            for kind, study_id, key, value in rnd.study_ops:
                table = self.study_user if kind == "user" else self.study_system
                conn.execute(table.delete().where(table.c.study_id == study_id,
                                                  table.c.key == key))
                conn.execute(table.insert(), [{"study_id": study_id, "key": key,
                                               "value_json": json.dumps(value)}])
            if new:
                self._check_numbers(conn, new)
                trial_rows = [(c.trial.number, c.study_id, c.trial.state,
                               rdb_time(c.trial.datetime_start),
                               rdb_time(c.trial.datetime_complete)) for c in new]
                self._many(conn, "trials", trial_rows)
                # Numbers are unique in a study (checked above), so they give the new ids:
                # one query instead of one INSERT ... RETURNING per row.
                ids: dict[tuple[int, int], int] = {}
                for study_id in {c.study_id for c in new}:
                    first = min(c.trial.number for c in new if c.study_id == study_id)
                    for trial_id, number in self._many(conn, "ids", [(study_id, first)]):
                        ids[(study_id, number)] = trial_id
                new_ids = [ids[(c.study_id, c.trial.number)] for c in new]
                for c, durable_id in zip(new, new_ids):
                    self._children(c, durable_id, rows, whole=True)
                    c.written = _Written.new(durable_id, c.trial.state)
            fresh = set(new)
            for c in rnd.changes:
                if c in fresh:
                    continue
                durable_id = c.written.durable_id  # type: ignore[union-attr]
                self._children(c, durable_id, rows, whole=False, updates=updates)
                if c.state:
                    t = c.trial
                    state_rows.append((durable_id, t.state, rdb_time(t.datetime_start),
                                       rdb_time(t.datetime_complete)))
            for name in ("params", "inter", "user", "system", "values"):
                if rows[name]:
                    self._many(conn, name, rows[name])
            for name in ("user", "system"):
                if updates[name]:
                    self._many(conn, f"{name}-update", updates[name])
            if state_rows:
                self._many(conn, "state", state_rows)

    def _children(self, c: _Change, durable_id: int, rows: dict[str, list[tuple]], *,
                  whole: bool, updates: dict[str, list[tuple]] | None = None) -> None:
        t = c.trial
        m = self.m
        for k in (t.params if whole else c.params):
            dist = t.distributions[k]
            last = self.last_dist.get(k)
            if last is not None and type(dist) is not Categorical and last[0] == dist:
                text = last[1]  # the usual case: the parameter's distribution of last time
            else:
                # (Equal choices may differ in type: True == 1, and JSON keeps them apart.)
                key = ((dist, tuple(map(type, dist.choices))) if type(dist) is Categorical
                       else dist)
                text = self.dist_json.get(key)
                if text is None:
                    text = self.dist_json[key] = distribution_to_json(dist)
                self.last_dist[k] = (dist, text)
            rows["params"].append((durable_id, k, dist.to_internal_repr(t.params[k]), text))
        for s in (t.intermediate_values if whole else c.steps):
            value, kind = m.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                t.intermediate_values[s])
            rows["inter"].append((durable_id, s, value, kind))
        for name, attrs, old in (("user", t.user_attrs if whole else c.user,
                                  None if whole else c.written.user),  # type: ignore[union-attr]
                                 ("system", t.system_attrs if whole else c.system,
                                  None if whole else c.written.system)):  # type: ignore[union-attr]
            for k, v in attrs.items():
                if old is not None and k in old:
                    updates[name].append((durable_id, k, json.dumps(v)))  # type: ignore[index]
                else:
                    rows[name].append((durable_id, k, json.dumps(v)))
        if (whole or c.state) and t.state.is_finished() and t.values is not None:
            for objective, v in enumerate(t.values):
                value, kind = m.TrialValueModel.value_to_stored_repr(v)
                rows["values"].append((durable_id, objective, value, kind))

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


_SAMPLE_TIMES = (datetime(2026, 12, 6, 7, 5, 3, 12), datetime(1999, 1, 2, 3, 4, 5))


def _sqlite_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(" ", "microseconds")


def _faster(proc: Callable[[Any], Any] | None,
            enums: tuple[type[enum.Enum], ...] = ()) -> Callable[[Any], Any] | None:
    """SQLAlchemy's conversion of a bound value, or one that gives the same result for every
    value it will get, faster: a lookup for the enums of ``enums`` (the trial states, the
    value types: each member's name), the datetime's own ``isoformat`` for SQLite's text times
    (SQLAlchemy builds a dict per value). Each is checked against SQLAlchemy's own first."""
    if proc is None:
        return None
    for kind in enums:
        try:
            names = {member: proc(member) for member in kind}
        except Exception:  # not this enum's conversion
            continue
        if all(name == member.name for member, name in names.items()):
            return names.__getitem__
    try:
        if proc(None) is None and all(proc(t) == _sqlite_time(t) for t in _SAMPLE_TIMES):
            return _sqlite_time
    except Exception:  # not a datetime's conversion
        pass
    return proc
