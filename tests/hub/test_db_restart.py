"""A database server that goes away mid-run is waited out (issue 20): PostgreSQL restarted
twice and killed once, MariaDB restarted, under the hub (``tunefleet run``). Running trials go
on, their results wait in the coordinator's memory, no new trial starts while the storage lags,
and everything is written once the server is back: the exact budget, nothing RUNNING, nothing
failed. Past ``--storage-timeout`` the run stops with one line, and the rerun finishes.

The module has servers of its own (they are restarted), on loopback, with real clients.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.hub.test_durable import Run, cli_args, states

pytestmark = pytest.mark.timeout(600)


def _assert_exact(url: str, run: Run, n_trials: int) -> None:
    counts = states(url)
    assert counts[TrialState.COMPLETE] == n_trials, (counts, run.err[-3000:])
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0, counts
    assert counts[TrialState.FAIL] == 0, (counts, run.err[-3000:])  # no trial lost its work
    assert run.shown() == n_trials  # what the progress bar counted is what the storage holds


def test_postgres_restarted_twice_and_killed_once_under_the_hub(restartable_postgres, tmp_path: Path):
    url = restartable_postgres.new_database("hub_restarts")
    n_trials = 48
    run = Run(tmp_path, *cli_args(url, n_trials, "steady", 4))
    for shown, kill in ((6, False), (18, True), (30, False)):
        run.wait_shown(shown)
        restartable_postgres.restart(kill=kill, down=2)
    assert run.finish() == 0, run.err[-3000:]
    _assert_exact(url, run, n_trials)
    assert run.err.count("the durable storage is unreachable") >= 3, run.err[-3000:]
    assert "the durable storage is back after" in run.err
    assert "Traceback" not in run.err


def test_mariadb_restarted_under_the_hub(restartable_mariadb, tmp_path: Path):
    url = restartable_mariadb.new_database("hub_restart")
    n_trials = 24
    run = Run(tmp_path, *cli_args(url, n_trials, "steady", 4))
    run.wait_shown(6)
    restartable_mariadb.restart(down=2)
    assert run.finish() == 0, run.err[-3000:]
    _assert_exact(url, run, n_trials)
    assert "the durable storage is unreachable" in run.err, run.err[-3000:]
    assert "Traceback" not in run.err


def test_a_database_away_past_the_storage_timeout_stops_the_run_in_one_line(
        restartable_postgres, tmp_path: Path):
    url = restartable_postgres.new_database("hub_gone")
    n_trials = 24
    run = Run(tmp_path, *cli_args(url, n_trials, "steady", 2), "--storage-timeout", "5")
    run.wait_shown(4)
    restartable_postgres.halt()
    try:
        assert run.finish(timeout=120) == 1, run.err[-3000:]
    finally:
        restartable_postgres.resume()
    last = run.err.strip().splitlines()[-1]
    assert last.startswith("tunefleet: the run stopped: the storage postgresql") and \
        "could not be reached for" in last and "run the same command again" in last, run.err
    assert "Traceback" not in run.err
    assert states(url)[TrialState.COMPLETE] >= run.shown()  # what was shown is stored
    rerun = Run(tmp_path, *cli_args(url, n_trials, "steady", 2), "--no-progress")
    assert rerun.finish() == 0, rerun.err[-3000:]
    counts = states(url)
    assert counts[TrialState.COMPLETE] == n_trials, counts
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0, counts
