"""A new SQLite study file starts as a copy of a file holding only Optuna's tables (made once,
from the first new file): the same tables and version stamp as Optuna makes, without the cost
of making them again."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

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


def test_a_copy_of_the_template_opens_without_importing_alembic(tmp_path):
    """Optuna reads the version stamp through alembic, whose import takes about 0.5 s of every
    fresh study's start; a copy of the template is known stamped. Plain Optuna still opens the
    file, with its own compatibility check."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    open_cmd = ("import sys, optuna; from tunefleet._studies import open_storage; "
                "s = open_storage(sys.argv[1]); "
                "optuna.create_study(storage=s, study_name='s').optimize("
                "lambda t: t.suggest_float('x', 0, 1), n_trials=2); "
                "print('alembic' in sys.modules)")

    def opened(name: str) -> str:
        result = subprocess.run([sys.executable, "-c", open_cmd, f"sqlite:///{tmp_path / name}"],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, **env})
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert opened("first.db") == "True"  # no template yet: Optuna makes the tables
    assert opened("second.db") == "False"  # a copy of the template
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'second.db'}")
    assert len(again.trials) == 2
