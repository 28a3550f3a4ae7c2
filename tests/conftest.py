"""Shared fixtures. Each mode's own fixtures live in its own tests/<mode>/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tunefleet ARGS`` as a user would, and capture its output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tunefleet", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback, private to this test run (tests/services.py)."""
    from tests.services import Postgres

    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb():
    """A real MariaDB server on loopback, private to this test run (tests/services.py)."""
    from tests.services import MariaDB

    server = MariaDB().start()
    yield server
    server.stop()


_databases = iter(range(10**6))


@pytest.fixture
def storage_url(request, tmp_path):
    """A fresh, empty storage of the kind the test is parametrized with (indirect=True):
    "sqlite", "journal", "postgresql" or "mariadb" (a new database on the session's server)."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if kind == "journal":
        return f"journal://{tmp_path / 'study.log'}"
    server = request.getfixturevalue("postgres" if kind == "postgresql" else "mariadb")
    return server.new_database(f"t{next(_databases)}")


@pytest.fixture
def cli():
    return run_cli
