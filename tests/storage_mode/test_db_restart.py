"""Storage-mode workers wait out a database that goes away (issue 20.1): PostgreSQL restarted
twice and killed once, MariaDB restarted once, under 4 ``tunefleet worker`` processes whose
objective reports every step; past ``--storage-timeout`` a worker exits 1 with one line and the
rerun finishes the budget.

Each module-scoped server is this file's own (the tests restart it); each test has its own
database on it. The tests wait for what the run did (finished trials in the storage), never a
fixed time; the ``down`` seconds of a restart are the outage itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.services import MariaDB, Postgres
from tests.storage_mode.test_fleet import trials_of
from tunefleet import _attrs as attrs
from tunefleet._studies import shown_url

HERE = Path(__file__).parent
REPORTING = f"{HERE / 'objectives.py'}:reporting"
LOG_LINE = re.compile(r"^\[tunefleet \d\d:\d\d:\d\d\] ")


@pytest.fixture(scope="module")
def pg(restartable_postgres):
    return restartable_postgres


@pytest.fixture(scope="module")
def maria(restartable_mariadb):
    return restartable_mariadb


def start(n: int, url: str, total: int, *extra: str) -> list[subprocess.Popen]:
    """N workers of study "s" on URL. Not quiet: each logs "trial N complete by WORKER"."""
    env = {**os.environ, "TF_STEPS": "3", "TF_SLEEP": "0.1"}
    cmd = [sys.executable, "-m", "tunefleet", "worker", REPORTING, "--storage", url, "--study",
           "s", "--n-trials", str(total), "--heartbeat-interval", "1", "--grace-period", "4",
           *extra]
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(n)]


def finished(url: str, procs: list[subprocess.Popen]) -> int:
    """Trials of the study that ended; fails at once when a worker exited early."""
    for p in procs:
        if p.poll() is not None:
            raise AssertionError(f"worker {p.pid} exited {p.returncode} before the budget: "
                                 f"{p.communicate()[1][-3000:]}")
    return sum(t.state.is_finished() for t in trials_of(url, "s"))


def outage_mid_run(server: Postgres | MariaDB, url: str, procs: list[subprocess.Popen],
                   after: int, kill: bool = False) -> None:
    """Once the study holds AFTER finished trials, stop the server (SIGKILL with KILL) while
    every worker is still at work, keep it down for a second, and start it again."""
    wait_until(lambda: finished(url, procs) >= after, 120,
               f"{after} finished trials before the outage")
    assert all(p.poll() is None for p in procs)  # the run is not over: the outage is mid-run
    server.restart(kill=kill, down=1.0)


def outputs(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """(exit code, stderr) of each worker."""
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("workers did not finish in time") from None
        out.append((p.returncode, err))
    return out


def check_exact(url: str, total: int, errs: list[str]) -> None:
    """The budget exactly, nothing RUNNING or WAITING, and every trial a worker logged as
    complete stored COMPLETE with that worker's name (and no other)."""
    trials = trials_of(url, "s")
    states = [t.state for t in trials]
    complete = {t.number: t for t in trials if t.state == TrialState.COMPLETE}
    assert len(complete) == total, [(t.number, t.state.name) for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    logged = [(int(n), w) for e in errs for n, w in re.findall(r"trial (\d+) complete by (\S+)", e)]
    assert sorted(n for n, _ in logged) == sorted(complete)
    for number, worker in logged:
        assert complete[number].system_attrs[attrs.WORKER] == worker


def check_waited_out(results: list[tuple[int, str]], outages: int, total: int) -> list[str]:
    """Each worker exited 0 without a traceback after waiting out at least one outage."""
    errs = []
    for rc, err in results:
        assert rc == 0 and "Traceback" not in err, err[-3000:]
        assert "storage unreachable during" in err and "storage back after" in err, err[-3000:]
        errs.append(err)
    assert sum(e.count("storage back after") for e in errs) >= outages
    return errs


@pytest.mark.timeout(240)
def test_postgres_restarted_twice_and_killed_once_under_four_workers(pg, cli):
    url, total = pg.new_database("restarts"), 48
    assert cli("init", "--storage", url, "--study", "s", "--sampler", "random").returncode == 0
    procs = start(4, url, total)
    try:
        outage_mid_run(pg, url, procs, 8)
        outage_mid_run(pg, url, procs, 18)
        outage_mid_run(pg, url, procs, 28, kill=True)
        results = outputs(procs, 150)
    finally:
        for p in procs:
            p.kill()
    check_exact(url, total, check_waited_out(results, 3, total))


@pytest.mark.timeout(240)
def test_mariadb_restarted_under_four_workers(maria, cli):
    url, total = maria.new_database("restarts"), 32
    assert cli("init", "--storage", url, "--study", "s", "--sampler", "random").returncode == 0
    procs = start(4, url, total)
    try:
        outage_mid_run(maria, url, procs, 10)
        results = outputs(procs, 150)
    finally:
        for p in procs:
            p.kill()
    check_exact(url, total, check_waited_out(results, 1, total))


@pytest.mark.timeout(240)
def test_a_database_gone_past_the_storage_timeout_is_one_line_and_the_rerun_finishes(maria,
                                                                                    cli):
    url, total = maria.new_database("gone"), 20
    assert ":tf@" in url  # a password, which the line must not show
    assert cli("init", "--storage", url, "--study", "s", "--sampler", "random").returncode == 0
    procs = start(2, url, total, "--storage-timeout", "4", "-q")
    try:
        wait_until(lambda: finished(url, procs) >= 4, 120, "4 finished trials")
        maria.halt()
        try:
            results = outputs(procs, 120)
        finally:
            maria.resume()
    finally:
        for p in procs:
            p.kill()
    for rc, err in results:
        assert rc == 1 and "Traceback" not in err, err[-3000:]
        said = [line for line in err.splitlines() if not LOG_LINE.match(line)]
        assert len(said) == 1, err
        assert shown_url(url) in said[0] and "run the same command again" in said[0], said
        assert ":tf@" not in err
    rerun = outputs(start(2, url, total), 150)
    for rc, err in rerun:
        assert rc == 0 and "Traceback" not in err, err[-3000:]
    trials = trials_of(url, "s")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == total
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.timeout(120)
def test_the_pool_says_nothing_of_a_connection_the_outage_broke(maria, caplog):
    """SQLAlchemy's pool rolls back each connection given back to it; when the server went
    away meanwhile that fails, and the pool logs "Exception during reset or similar" with a
    traceback (a worker printed it in CI). The wait is already said in one line: it is dropped
    for a storage that waits out outages, and only for the outage's error."""
    import logging

    import sqlalchemy as sa

    from tunefleet._outage import _OUTAGE_NOISE
    from tunefleet._studies import open_storage
    from tunefleet.storage_mode._patient import wait_out_outages

    url = maria.new_database("pool_noise")

    def given_back_after_a_restart(engine: sa.Engine) -> str:
        caplog.clear()
        fairy = engine.pool.connect()  # a pooled DBAPI connection, inside a transaction
        fairy.cursor().execute("SELECT 1")
        maria.restart()
        with caplog.at_level(logging.ERROR, logger="sqlalchemy.pool"):
            fairy.close()  # back to the pool: its rollback finds the server gone
        return caplog.text

    pool_logger = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
    pool_logger.removeFilter(_OUTAGE_NOISE)  # another test of this process may have added it
    assert "Exception during reset" in given_back_after_a_restart(sa.create_engine(url))

    storage = wait_out_outages(open_storage(url), storage_timeout=60)
    assert "Exception during reset" not in given_back_after_a_restart(storage.engine)
    assert _OUTAGE_NOISE in pool_logger.filters
