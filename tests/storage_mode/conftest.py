"""Storages for the storage-mode tests (the PostgreSQL and MariaDB servers are in tests/conftest.py)."""

from __future__ import annotations

import itertools

import pytest


_names = itertools.count()


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
