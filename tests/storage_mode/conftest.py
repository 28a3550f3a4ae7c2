"""Real PostgreSQL and MariaDB servers for the storage-mode tests (started once per session)."""

from __future__ import annotations

import itertools

import pytest

from tests.services import MariaDB, Postgres

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb():
    server = MariaDB().start()
    yield server
    server.stop()


@pytest.fixture
def storage_url(request, tmp_path):
    """A fresh, empty storage of the kind the test is parametrized with."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if kind == "journal":
        return f"journal://{tmp_path / 'study.log'}"
    server = request.getfixturevalue("postgres" if kind == "postgresql" else "mariadb")
    return server.new_database(f"t{next(_names)}")
