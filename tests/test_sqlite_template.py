"""A new SQLite study file starts as a copy of a file holding only Optuna's tables (made once,
from the first new file): the same tables and version stamp as Optuna makes, without the cost
of making them again."""

from __future__ import annotations

import sqlite3

import optuna

from tunefleet._studies import _schema_template, open_storage


def _tables(path) -> tuple[set[str], list]:
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return names, version


def test_new_sqlite_files_start_from_the_tables_template(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = _schema_template()
    assert not template.exists()
    first = tmp_path / "first.db"
    open_storage(f"sqlite:///{first}")  # made by Optuna: becomes the template
    assert template.is_file()
    second = tmp_path / "second.db"
    storage = open_storage(f"sqlite:///{second}")
    assert _tables(second) == _tables(first) == _tables(template)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{second}")
    assert len(again.trials) == 3
    assert _tables(template)[0] and not sqlite3.connect(template).execute(
        "SELECT COUNT(*) FROM studies").fetchone()[0]  # the template holds no study
