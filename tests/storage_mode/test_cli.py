"""init / worker on the command line: idempotence, one-line errors, failures, SQLite back-off."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet import _attrs as attrs
from tunefleet.storage_mode._backoff import with_backoff
from tunefleet._studies import SPEC_ATTR

HERE = Path(__file__).parent


def test_init_is_idempotent_and_keeps_its_settings(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = cli("init", "--storage", url, "--study", "s", "--direction", "maximize",
                "--sampler", "random", "--seed", "3", "--pruner", "none")
    assert first.returncode == 0 and "created" in first.stdout
    again = cli("init", "--storage", url, "--study", "s")
    assert again.returncode == 0 and "exists" in again.stdout and "RandomSampler" in again.stdout
    other = cli("init", "--storage", url, "--study", "s", "--sampler", "tpe")
    assert other.returncode == 2 and "keeps them" in other.stderr
    assert other.stderr.strip().count("\n") == 0
    study = optuna.load_study(study_name="s", storage=url)
    assert study.direction.name == "MAXIMIZE"
    sys_attrs = study._storage.get_study_system_attrs(study._study_id)
    assert '"sampler": "random"' in sys_attrs[SPEC_ATTR] and sys_attrs[attrs.MODE] == "storage"


@pytest.mark.parametrize("args, words", [
    ((), "needs a TARGET"),
    ((f"{HERE / 'objectives.py'}:slow",), "--n-trials"),
    ((f"{HERE / 'objectives.py'}:slow", "--n-trials", "3", "--storage", "nope"), "not a URL"),
    (("x.py:f", "--connect", "tcp://127.0.0.1:1"), "drop TARGET"),
    ((f"{HERE / 'objectives.py'}:slow", "--n-trials", "3", "--heartbeat-interval", "5",
      "--grace-period", "5"), "must be longer than --heartbeat-interval"),
])
def test_worker_bad_input_is_one_line(cli, tmp_path, args, words):
    r = cli("worker", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_objective_error_stops_the_worker_unless_catch(cli, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    target = f"{HERE / 'objectives.py'}:flaky"
    r = cli("worker", target, "--storage", url, "--study", "f", "--n-trials", "6")
    assert r.returncode == 1 and "boom on trial 0" in r.stderr and "--catch" in r.stderr
    first = optuna.load_study(study_name="f", storage=url).trials[0]
    assert first.state == TrialState.FAIL
    assert first.system_attrs[attrs.FAIL_REASON] == "RuntimeError: boom on trial 0"
    r = cli("worker", target, "--storage", url, "--study", "f", "--n-trials", "6", "--catch")
    assert r.returncode == 0, r.stderr
    trials = optuna.load_study(study_name="f", storage=url).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6  # failures did not count
    assert sum(t.state == TrialState.FAIL for t in trials) >= 3


def _hold_lock(path: Path, seconds: float, ready: threading.Event) -> None:
    con = sqlite3.connect(path, timeout=5)
    con.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    con.rollback()
    con.close()


def test_backoff_outlasts_a_locked_sqlite_database(tmp_path):
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (v INTEGER)").connection.commit()
    ready = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(path, 1.5, ready))
    holder.start()
    ready.wait()

    def write() -> None:
        con = sqlite3.connect(path, timeout=0.05)  # gives up on the lock almost at once
        try:
            con.execute("INSERT INTO t VALUES (1)")
            con.commit()
        finally:
            con.close()

    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        write()
    with_backoff(write, what="test write")  # retried until the lock is gone
    holder.join()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_worker_waits_out_a_locked_study_file(cli, tmp_path):
    """SQLite's own busy wait is cut to 0.1 s, so "database is locked" reaches the worker: it
    must back off and go on, not die."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert cli("init", "--storage", url, "--study", "l").returncode == 0
    ready = threading.Event()
    # Held long enough that the worker meets it however slowly it starts; it waits it out.
    holder = threading.Thread(target=_hold_lock, args=(tmp_path / "s.db", 20, ready))
    holder.start()
    ready.wait()
    r = cli("worker", f"{HERE / 'objectives.py'}:slow", "--storage", f"{url}?timeout=0.1",
            "--study", "l", "--n-trials", "3", env={"TF_SLEEP": "0"})
    holder.join()
    assert r.returncode == 0, r.stderr
    assert "database is locked" in r.stderr and "retrying with back-off" in r.stderr
    assert "3/3" in r.stdout
