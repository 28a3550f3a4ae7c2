"""Shared fixtures. Each mode's own fixtures live in its own tests/<mode>/conftest.py; the
engines (Dask, Spark, Ray) are here because tests of several folders run on them."""

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


@pytest.fixture(scope="module")
def restartable_postgres():
    """A PostgreSQL server of the test module's own, for tests that restart, kill or stop it.
    Synchronous commits (``fsync=True``): a server killed with SIGKILL keeps every commit it
    acknowledged; with ``synchronous_commit=off`` it may lose the last ones, which no client can
    wait out (it was told its trial is stored)."""
    from tests.services import Postgres

    server = Postgres(fsync=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def restartable_mariadb():
    """A MariaDB server of the test module's own, for tests that restart or stop it."""
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


@pytest.fixture(scope="module")
def dask_client():
    """A client of a real Dask LocalCluster (2 worker processes), for the module's tests."""
    import distributed  # tunefleet[dask], installed by scripts/test

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def spark():
    """A Spark session in local[2] mode, for the module's tests."""
    from pyspark.sql import SparkSession

    # Python workers run the interpreter where tunefleet is installed (local mode reads the
    # environment variable, not spark.pyspark.python).
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (SparkSession.builder.master("local[2]").appName("tunefleet-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.python.worker.reuse", "true")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) started for the module's tests; tunefleet finds it running."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# -- running in parallel (pytest-xdist, ``--dist loadfile``: a file's tests in one process, so
# that its module fixtures, such as a Dask cluster, Spark or Ray, start once). The folders of
# the longest files go first, so that no long one starts last.
_FIRST = ("tests/lab/", "tests/storage_mode/", "tests/remote/", "tests/hub/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = Path(item.fspath).resolve().relative_to(ROOT).as_posix()
        return next((i for i, p in enumerate(_FIRST) if path.startswith(p)), len(_FIRST))

    items.sort(key=rank)  # stable: a file's tests keep their order
