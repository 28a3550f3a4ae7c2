"""Workers started at the same instant on a fresh storage all create its tables at once; the
losers of that race must open the storage anyway (it once killed workers on SQLite with
"table trials already exists"). Real processes, released together once all have started."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest

from tunefleet import _attrs as attrs
from tunefleet.storage_mode._backoff import is_schema_race
from tunefleet._studies import SPEC_ATTR, open_storage

OPEN_AT = r"""
import sys
import sqlalchemy, optuna.storages._rdb.models  # the imports, before the start line
from tunefleet.storage_mode._db import init_study
from tunefleet._studies import StudySpec
url = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
init_study(url, "race", StudySpec(sampler="random"), explicit=True)
print("opened")
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("storage_url", ["sqlite", "journal", "postgresql", "mysql"],
                         indirect=True, ids=["sqlite", "journal", "postgresql", "mariadb"])
def test_many_processes_open_a_fresh_storage_at_once(storage_url):
    n = 8
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT, storage_url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
             for _ in range(n)]
    for p in procs:  # all imported: release them together
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0 and "opened" in out, err[-2000:]
    store = open_storage(storage_url)
    studies = store.get_all_studies()
    assert [s.study_name for s in studies] == ["race"]  # one study, made once
    sys_attrs = studies[0].system_attrs
    assert '"sampler": "random"' in sys_attrs[SPEC_ATTR] and sys_attrs[attrs.MODE] == "storage"
    if isinstance(store, optuna.storages.RDBStorage):
        from sqlalchemy import text

        with store.engine.connect() as conn:  # Optuna's version rows were written once
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
            assert conn.execute(text("SELECT count(*) FROM version_info")).scalar() == 1


@pytest.mark.parametrize("message, race", [
    ("(sqlite3.OperationalError) table trials already exists", True),
    ('(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint '
     '"pg_type_typname_nsp_index"', True),
    ("(pymysql.err.OperationalError) (1050, \"Table 'studies' already exists\")", True),
    ("(pymysql.err.IntegrityError) (1062, \"Duplicate entry '1' for key 'PRIMARY'\")", True),
    ("(sqlite3.OperationalError) database is locked", True),
    ("(sqlite3.OperationalError) unable to open database file", False),
    ("(psycopg2.OperationalError) password authentication failed for user", False),
])
def test_what_counts_as_losing_the_schema_race(message, race):
    assert is_schema_race(RuntimeError(message)) is race
