"""Storage URLs as the documents write them (postgresql://, mysql://) on real PostgreSQL and
MariaDB servers, the driver each needs, and commands that only read never creating a file."""

from __future__ import annotations

import uuid

import optuna
import pytest

from tests.cli.conftest import OBJECTIVES
from tunefleet._studies import driver_url, open_storage


def _name() -> str:
    return f"tf_{uuid.uuid4().hex[:8]}"


def _run_then_best(cli, url: str, cwd, env: dict | None = None) -> str:
    r = cli("run", f"{OBJECTIVES}:mixed", "--n-trials", "3", "--workers", "1", "--storage",
            url, "--no-progress", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    best = cli("best", "--storage", url, cwd=cwd, env=env)
    assert best.returncode == 0, best.stderr
    assert "3 trials (3 complete)" in best.stdout
    return best.stdout


def test_plain_postgresql_url_uses_psycopg3(postgres, cli, tmp_path):
    name = _name()
    postgres.new_database(name)
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
    assert driver_url(url).startswith("postgresql+psycopg://")
    _run_then_best(cli, url, tmp_path)
    # the Heroku-style scheme that SQLAlchemy no longer takes is the same database
    store = open_storage(url.replace("postgresql://", "postgres://"))
    assert [s.study_name for s in store.get_all_studies()] == ["tunefleet"]


def test_plain_postgresql_url_falls_back_to_psycopg2(postgres, cli, without, tmp_path):
    name = _name()
    postgres.new_database(name)
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
    _run_then_best(cli, url, tmp_path, env=without("psycopg"))


def test_mysql_url_uses_mysqlclient_as_the_spark_document_installs_it(mariadb, cli, tmp_path):
    name = _name()
    mariadb.new_database(name)
    url = f"mysql://tf:tf@127.0.0.1:{mariadb.port}/{name}"
    assert driver_url(url).startswith("mysql+mysqldb://")
    import MySQLdb  # noqa: F401  (the test extra installs mysqlclient: a missing one fails here)

    _run_then_best(cli, url, tmp_path)
    assert len(optuna.load_study(study_name="tunefleet", storage=driver_url(url)).trials) == 3


def test_mysql_url_falls_back_to_pymysql(mariadb, cli, without, tmp_path):
    name = _name()
    mariadb.new_database(name)
    url = f"mysql://tf:tf@127.0.0.1:{mariadb.port}/{name}"
    _run_then_best(cli, url, tmp_path, env=without("MySQLdb"))


@pytest.mark.parametrize("url,hidden,words", [
    ("mysql://tf:secret@127.0.0.1:1/db", ("MySQLdb", "pymysql"),
     ["pip install mysqlclient", "'tunefleet[mysql]'"]),
    ("postgresql://u@127.0.0.1:1/db", ("psycopg", "psycopg2"), ["'tunefleet[postgres]'"]),
    ("mysql+pymysql://tf:secret@127.0.0.1:1/db", ("pymysql",), ["'tunefleet[mysql]'"]),
    ("postgresql+psycopg2://u@127.0.0.1:1/db", ("psycopg2",), ["psycopg2-binary"]),
])
def test_missing_driver_is_named_in_one_line(url, hidden, words, cli, without, tmp_path):
    r = cli("best", "--storage", url, cwd=tmp_path, env=without(*hidden))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert "secret" not in r.stderr  # passwords stay out of messages


@pytest.mark.parametrize("command", [("best",), ("studies",), ("status",),
                                     ("report", "--output", "r.html")])
@pytest.mark.parametrize("url", ["sqlite:///typo.db", "journal:///typo.log"])
def test_reading_a_missing_file_is_an_error_not_a_new_database(command, url, cli, tmp_path):
    r = cli(*command, "--storage", url, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr, r.stderr
    assert not (tmp_path / url.rsplit("/", 1)[1]).exists()


def test_no_progress_keeps_optunas_per_trial_lines_off_stderr(cli, tmp_path):
    args = ("run", f"{OBJECTIVES}:mixed", "--n-trials", "5", "--workers", "1", "--no-progress")
    quiet = cli(*args, "--storage", "sqlite:///q.db", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "finished with value" not in quiet.stderr and "[I " not in quiet.stderr
    loud = cli("-v", *args, "--storage", "sqlite:///l.db", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr.count("finished with value") == 5
