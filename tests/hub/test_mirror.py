"""The hub's write-behind mirror: memory and the durable storage end up holding the same study."""

from __future__ import annotations

import logging
import os
import shutil

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet.errors import MirrorError
from tunefleet.hub._mirror import MirroredStorage, mirrored_study
from tunefleet._studies import open_storage
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mirror.db'}"


def journal_url(tmp_path) -> str:
    return f"journal:///{tmp_path / 'mirror.log'}"


def fresh(url: str) -> optuna.storages.BaseStorage:
    """A new connection to the durable storage, sharing no cache with the mirror (SQLite in
    WAL mode, as ``tunefleet run`` opens it)."""
    return open_storage(url, sqlite_wal=True)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    n = trial.suggest_int("n", 1, 4)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    trial.set_user_attr("label", f"{kind}{n}")
    trial.storage.set_trial_system_attr(trial._trial_id, "tunefleet:worker", "w0")
    for step in range(3):
        trial.report(x * x + step, step)
    if n == 4:
        raise optuna.TrialPruned()
    if kind == "b" and x > 8:
        raise ValueError("objective failed on purpose")
    return x * x + n


def fields(trial: optuna.trial.FrozenTrial) -> dict:
    return {"number": trial.number, "state": trial.state, "params": trial.params,
            "distributions": trial.distributions, "values": trial.values,
            "intermediate_values": trial.intermediate_values, "user_attrs": trial.user_attrs,
            "system_attrs": trial.system_attrs}


def durable_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=fresh(url)).trials


def assert_same(memory: list, durable: list) -> None:
    assert [fields(t) for t in durable] == [fields(t) for t in memory]


@pytest.mark.parametrize("make_url,n_jobs,chunk", [(sqlite_url, 1, None), (sqlite_url, 2, None),
                                                   (sqlite_url, 1, 7), (journal_url, 1, None)],
                         ids=["sqlite", "sqlite-2-threads", "sqlite-small-inserts", "journal"])
def test_optimize_leaves_the_same_trials_in_memory_and_durable(tmp_path, monkeypatch, make_url,
                                                               n_jobs, chunk):
    if chunk is not None:  # multi-row INSERTs split into many statements
        from tunefleet.hub._mirror._rdb import _RDBWriter

        monkeypatch.setattr(_RDBWriter, "MAX_VARIABLES", chunk)
    url = make_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=fresh(url),
                                sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=5))
    study.set_user_attr("owner", "me")
    mirrored, mirror = mirrored_study(study)
    assert isinstance(mirror, MirroredStorage)
    assert mirrored.study_name == "s" and mirrored.sampler is study.sampler
    assert mirrored.pruner is study.pruner
    mirrored.set_metric_names(["loss"])
    mirrored.optimize(objective, n_trials=30, n_jobs=n_jobs, catch=(ValueError,))
    mirror.close()

    memory = mirrored.trials
    assert [t.number for t in memory] == list(range(30))
    assert {t.state for t in memory} >= {TrialState.COMPLETE, TrialState.PRUNED}
    durable = durable_trials(url, "s")
    assert_same(memory, durable)
    # the times memory recorded, not those at which the writes reached the durable storage
    assert [(t.datetime_start, t.datetime_complete) for t in durable] == [
        (t.datetime_start, t.datetime_complete) for t in memory]
    reloaded = optuna.load_study(study_name="s", storage=fresh(url))
    assert reloaded.user_attrs == {"owner": "me"}
    assert reloaded.metric_names == ["loss"]
    assert reloaded.best_trial.number == mirrored.best_trial.number


@pytest.mark.parametrize("make_url", [sqlite_url, journal_url], ids=["sqlite", "journal"])
def test_existing_trials_are_loaded_and_numbering_goes_on(tmp_path, make_url):
    url = make_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=fresh(url),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=6, catch=(ValueError,))
    before = study.trials
    left_running = study.ask()  # an orphan of an earlier run stays RUNNING

    mirrored, mirror = mirrored_study(study)
    assert_same(before + [left_running._cached_frozen_trial], mirrored.trials)
    assert mirrored.best_trial.number == study.best_trial.number
    mirrored.optimize(objective, n_trials=5, catch=(ValueError,))
    mirror.close()

    memory = mirrored.trials
    assert [t.number for t in memory] == list(range(12))
    assert memory[6].state == TrialState.RUNNING
    assert_same(memory, durable_trials(url, "s"))


def test_enqueued_trials_round_trip(tmp_path):
    url = sqlite_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=fresh(url),
                                directions=["minimize", "maximize"])
    study.enqueue_trial({"x": 1.5, "n": 2, "kind": "a"}, user_attrs={"from": "before"})
    mirrored, mirror = mirrored_study(study)
    mirrored.enqueue_trial({"x": -2.0, "n": 3, "kind": "b"}, user_attrs={"from": "mirror"})
    mirror.flush()

    waiting = durable_trials(url, "s")
    assert [t.state for t in waiting] == [TrialState.WAITING, TrialState.WAITING]
    assert_same(mirrored.trials, waiting)
    assert waiting[1].system_attrs["fixed_params"] == {"x": -2.0, "n": 3, "kind": "b"}

    def two(trial):
        x = trial.suggest_float("x", -10, 10)
        trial.suggest_int("n", 1, 4)
        trial.suggest_categorical("kind", ["a", "b"])
        return x * x, -x

    mirrored.optimize(two, n_trials=3)
    mirror.close()
    done = durable_trials(url, "s")
    assert [t.state for t in done] == [TrialState.COMPLETE] * 3
    assert [t.params["x"] for t in done[:2]] == [1.5, -2.0]
    assert [t.datetime_start for t in done] == [t.datetime_start for t in mirrored.trials]
    assert done[1].values == [4.0, 2.0] and done[1].user_attrs == {"from": "mirror"}
    assert_same(mirrored.trials, done)


@pytest.mark.parametrize("make_url", [sqlite_url, journal_url], ids=["sqlite", "journal"])
def test_a_trial_written_piece_by_piece_matches_memory(tmp_path, make_url):
    """A trial that is in the storage before it ends gets each later change as an addition or
    an update: parameters, reports, new and changed attributes, and its end."""
    url = make_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=fresh(url))
    mirrored, mirror = mirrored_study(study)
    trial = mirrored.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("phase", "start")
    mirrored._storage.set_trial_system_attr(trial._trial_id, "tunefleet:worker", "w0")
    mirror.flush()
    assert durable_trials(url, "s")[0].state == TrialState.RUNNING
    trial.suggest_int("n", 1, 3)
    trial.report(0.5, 0)
    trial.set_user_attr("phase", "middle")
    trial.set_user_attr("extra", [1, 2])
    mirrored._storage.set_trial_system_attr(trial._trial_id, "tunefleet:worker", "w1")
    mirror.flush()
    assert_same(mirrored.trials, durable_trials(url, "s"))
    trial.report(0.25, 1)
    trial.set_user_attr("phase", "end")
    mirrored.tell(trial, 0.125)
    mirror.close()
    durable = durable_trials(url, "s")
    assert_same(mirrored.trials, durable)
    assert durable[0].state == TrialState.COMPLETE and durable[0].value == 0.125
    assert durable[0].user_attrs == {"phase": "end", "extra": [1, 2]}
    assert durable[0].system_attrs["tunefleet:worker"] == "w1"
    assert durable[0].intermediate_values == {0: 0.5, 1: 0.25}
    assert durable[0].datetime_complete == mirrored.trials[0].datetime_complete


def test_sqlite_rounds_take_the_direct_path(tmp_path):
    """On SQLite the writer runs its statements compiled once on the DBAPI cursor (fewer
    hand-offs of the GIL with the sampler); a SQLAlchemy without the compiled parts it reads would
    silently fall back to the slower path, so check it is taken."""
    from tunefleet.hub._mirror._commit import _make_writer

    writer = _make_writer(fresh(sqlite_url(tmp_path)))
    assert writer.raw and writer.plans["trials"][0].startswith("INSERT INTO trials")


def test_a_writer_that_fell_behind_writes_finished_trials_whole(tmp_path):
    """Group commit: whatever finished while the storage stalled goes in one append, each trial
    as one record, not one record per parameter, report and attribute."""
    import json

    from optuna.storages.journal._storage import JournalOperation

    url = journal_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=fresh(url))
    mirrored, mirror = mirrored_study(study)
    with mirror._durable._thread_lock:  # the durable storage stalls: the writer waits
        mirrored.optimize(objective, n_trials=8, catch=(ValueError,))
        assert mirror.pending > 8 * 5
        assert mirror.lag() > 0
    mirror.close()
    assert mirror.pending == 0 and mirror.lag() == 0
    ops = [json.loads(line)["op_code"] for line in open(tmp_path / "mirror.log")]
    assert ops.count(JournalOperation.CREATE_TRIAL) == 8
    # At most the first trial (taken by the round in flight when the stall began) was written
    # in pieces; its later parameters, reports and attributes are the only other records.
    assert len(ops) - ops.count(JournalOperation.CREATE_TRIAL) - 2 <= 3 + 3 + 2 + 1
    assert_same(mirrored.trials, durable_trials(url, "s"))


def test_a_durable_failure_surfaces_on_flush_and_close(tmp_path, caplog):
    folder = tmp_path / "disk"
    folder.mkdir()
    url = f"journal:///{folder / 'study.log'}"
    study = optuna.create_study(study_name="s", storage=fresh(url))
    mirrored, mirror = mirrored_study(study)
    mirrored.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    mirror.flush()  # nothing failed yet

    shutil.rmtree(folder)  # the disk holding the journal is gone
    with caplog.at_level(logging.ERROR, logger="tunefleet.mirror"):
        mirrored.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        assert len(mirrored.trials) == 5  # memory carries on
        with pytest.raises(MirrorError, match="no longer matches"):
            mirror.flush()
        with pytest.raises(MirrorError):
            mirror.close()
    assert len([r for r in caplog.records if r.name == "tunefleet.mirror"]) == 1
    assert isinstance(mirror.error, OSError)
    assert not mirror._thread.is_alive()


def test_someone_else_writing_is_detected(tmp_path):
    url = sqlite_url(tmp_path)
    study = optuna.create_study(study_name="s", storage=fresh(url))
    mirrored, mirror = mirrored_study(study)
    study.ask()  # another writer takes number 0 in the durable storage
    mirrored.ask()
    with pytest.raises(MirrorError, match="someone else wrote"):
        mirror.close()


def test_non_json_attributes_are_refused_at_once(tmp_path):
    url = sqlite_url(tmp_path)
    mirrored, mirror = mirrored_study(optuna.create_study(study_name="s", storage=fresh(url)))
    trial = mirrored.ask()
    with pytest.raises(TypeError, match="JSON"):
        trial.set_user_attr("bad", object())
    trial.set_user_attr("good", [1, 2])
    mirrored.tell(trial, 1.0)
    mirror.close()
    assert durable_trials(url, "s")[0].user_attrs == {"good": [1, 2]}


def test_writes_after_close_still_reach_the_durable_storage(tmp_path):
    url = sqlite_url(tmp_path)
    mirrored, mirror = mirrored_study(optuna.create_study(study_name="s", storage=fresh(url)))
    mirror.close()
    mirrored.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    mirrored.set_user_attr("after", True)
    assert_same(mirrored.trials, durable_trials(url, "s"))
    assert optuna.load_study(study_name="s", storage=fresh(url)).user_attrs == {"after": True}


def test_new_studies_through_the_mirror(tmp_path):
    url = sqlite_url(tmp_path)
    optuna.create_study(study_name="s", storage=fresh(url))
    mirror = MirroredStorage(fresh(url), "s")
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        mirror.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    other = optuna.create_study(study_name="t", storage=mirror, direction="maximize")
    other.optimize(lambda t: t.suggest_int("k", 0, 9), n_trials=4)
    mirror.close()
    assert_same(other.trials, durable_trials(url, "t"))
    assert sorted(s.study_name for s in mirror.get_all_studies()) == ["s", "t"]


def test_heartbeats_fail_stale_trials_in_both(tmp_path):
    url = sqlite_url(tmp_path)
    durable = open_storage(url, heartbeat_interval=1, grace_period=1, sqlite_wal=True)
    study = optuna.create_study(study_name="s", storage=durable)
    mirrored, mirror = mirrored_study(study)
    assert optuna.storages._heartbeat.is_heartbeat_enabled(mirror)
    alive, dead = mirrored.ask(), mirrored.ask()
    mirror.record_heartbeat(dead._trial_id)
    wait_until(lambda: mirror._get_stale_trial_ids(mirrored._study_id) == [dead._trial_id], 30,
               "the trial whose heartbeat stopped to be stale")
    mirror.record_heartbeat(alive._trial_id)
    optuna.storages.fail_stale_trials(mirrored)
    assert [t.state for t in mirrored.trials] == [TrialState.RUNNING, TrialState.FAIL]
    mirror.close()
    assert [t.state for t in durable_trials(url, "s")] == [TrialState.RUNNING, TrialState.FAIL]


def test_only_rdb_and_journal_studies_are_mirrored(tmp_path):
    study = optuna.create_study()
    assert mirrored_study(study) == (study, None)
    url = sqlite_url(tmp_path)
    cached = optuna.create_study(study_name="s", storage=url)  # Optuna wraps it in a cache
    mirrored, mirror = mirrored_study(cached)
    assert mirror is not None and mirror._durable is cached._storage._backend
    assert mirrored._storage is mirror
    mirror.close()


def test_a_missing_study_is_a_key_error(tmp_path):
    url = sqlite_url(tmp_path)
    optuna.create_study(study_name="s", storage=fresh(url))
    with pytest.raises(KeyError):
        MirroredStorage(fresh(url), "nope")
    assert os.path.exists(tmp_path / "mirror.db")


def test_equal_choices_of_other_types_keep_their_own_distribution(tmp_path):
    """The writer makes each distribution's JSON once: True == 1, yet [True, False] and [1, 0]
    are different choices and the durable storage gets each as it is."""
    url = sqlite_url(tmp_path)
    study = optuna.create_study(study_name="kinds", storage=fresh(url))
    mirrored, mirror = mirrored_study(study)

    def both(trial: optuna.Trial) -> float:
        a = trial.suggest_categorical("a", [True, False])
        b = trial.suggest_categorical("b", [1, 0])
        return float(a) + b

    mirrored.optimize(both, n_trials=6)
    mirror.close()
    for t in durable_trials(url, "kinds"):
        assert t.distributions["a"].choices == (True, False)
        assert [type(c) for c in t.distributions["a"].choices] == [bool, bool]
        assert [type(c) for c in t.distributions["b"].choices] == [int, int]
        assert type(t.params["a"]) is bool and type(t.params["b"]) is int


def test_the_writers_snapshot_of_a_trial_does_not_make_its_dict():
    """The writer's thread copies memory's trials attribute by attribute: making an object's
    ``__dict__`` there, while the coordinator's thread may make the same one (``copy.copy``),
    crashed Python 3.11 now and then (a dict left on freed values). Python keeps an object's
    attributes without a dict until something asks for ``__dict__``; the garbage collector
    shows which (a made dict is one of the object's referents)."""
    import gc

    from tunefleet.hub._mirror._rounds import _snapshot

    trial = optuna.trial.FrozenTrial(3, TrialState.RUNNING, None, None, None, {"x": 0.5},
                                     {"x": optuna.distributions.FloatDistribution(0, 1)},
                                     {"u": 1}, {"s": 2}, {0: 1.0}, 7)

    def made(trial: optuna.trial.FrozenTrial) -> bool:
        return any(isinstance(r, dict) and "_trial_id" in r for r in gc.get_referents(trial))

    assert not made(trial)
    copy = _snapshot(trial)
    assert not made(trial)
    assert copy == trial and copy is not trial and copy.params is not trial.params
    trial.__dict__  # noqa: B018  (what the check sees once the dict is made)
    assert made(trial)
    # A finished trial is taken as it is: nothing changes it any more, and a copy per trial
    # made the garbage collector run sooner.
    ended = optuna.trial.FrozenTrial(4, TrialState.COMPLETE, 1.5, None, None, {"x": 0.5},
                                     {"x": optuna.distributions.FloatDistribution(0, 1)},
                                     {}, {}, {}, 8)
    assert _snapshot(ended) is ended and not made(ended)


def test_the_direct_paths_conversions_give_sqlalchemys_text(tmp_path):
    """The SQLite rounds convert states and times themselves (a lookup, ``isoformat``) where
    SQLAlchemy's own conversion gives the same text: for every state, and times with and
    without microseconds, before 1000 and at the end of a day, the stored text is the same."""
    import datetime

    from tunefleet._optuna import rdb_models
    from tunefleet.hub._mirror._rdb import KEYS, _RDBWriter

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db")
    writer = _RDBWriter(storage)
    for name in ("trials", "state"):
        writer._plan(name)
        compiled = writer.stmts[name].compile(dialect=storage.engine.dialect)
        procs = compiled._bind_processors
        fast = [p for _, p in writer.plans[name][1] if p is not None]
        assert len(fast) == len([k for k in compiled.positiontup if procs.get(k)]) == 3
        assert all(p not in procs.values() for p in fast)  # each replaced by a faster one
    models = rdb_models()
    for name, key, kind in (("values", "value_type", models.TrialValueModel.TrialValueType),
                            ("inter", "intermediate_value_type",
                             models.TrialIntermediateValueModel.TrialIntermediateValueType)):
        by_key = {KEYS[name][i]: p for i, p in writer._plan(name)[1]}
        slow = writer.stmts[name].compile(dialect=storage.engine.dialect)._bind_processors
        assert by_key[key] is not slow[key]
        assert [by_key[key](m) for m in kind] == [slow[key](m) for m in kind]
    by_key = {KEYS["state"][i]: p for i, p in writer.plans["state"][1]}
    state_of, time_of = by_key["b_state"], by_key["b_start"]
    slow = writer.stmts["state"].compile(dialect=storage.engine.dialect)._bind_processors
    assert [state_of(s) for s in TrialState] == [slow["b_state"](s) for s in TrialState]
    times = [None, datetime.datetime(2026, 12, 6, 23, 59, 59, 999999),
             datetime.datetime(2026, 1, 1), datetime.datetime(999, 3, 4, 5, 6, 7, 80)]
    assert [time_of(t) for t in times] == [slow["b_start"](t) for t in times]
