"""A journal file whose last record was cut mid-append, or that ends in garbage bytes, stays a
study: ``best`` and ``status`` read it, the rerun finishes the budget, and the study is still
readable afterwards. The torn bytes are set aside in a file beside it, said in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.cli.conftest import OBJECTIVES

pytestmark = pytest.mark.timeout(300)


def tf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunefleet", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=240)


def _trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name="torn", storage=storage).trials


@pytest.mark.parametrize("damage", ["cut", "garbage", "garbage-line"])
def test_a_torn_journal_tail_is_set_aside_and_the_study_goes_on(tmp_path, damage):
    journal = tmp_path / "study.log"
    run = ("run", f"{OBJECTIVES}:mixed", "--storage", str(journal), "--study", "torn",
           "--workers", "2", "--sampler", "random")
    first = tf(*run, "--n-trials", "10", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    whole = journal.read_bytes()
    damaged = {"cut": whole[:-25], "garbage": whole + b"\xff\xfe\x00 not json",
               "garbage-line": whole + b"garbage\n"}[damage]
    journal.write_bytes(damaged)

    best = tf("best", "--storage", str(journal), "--study", "torn", cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    said = [line for line in best.stderr.splitlines() if "set aside in" in line]
    assert len(said) == 1 and "not a whole record" in said[0], best.stderr
    aside = list(tmp_path.glob("study.log.torn-*"))
    assert len(aside) == 1 and damaged.endswith(aside[0].read_bytes())
    assert journal.read_bytes() + aside[0].read_bytes() == damaged  # nothing else was lost

    again = tf(*run, "--n-trials", "14", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    trials = _trials(journal)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # The cut record was the last trial's end (or part of it): that trial ran again.
    assert len(complete) == 14 and not [t for t in trials if t.state.name == "RUNNING"]
    status = tf("status", "--storage", str(journal), "--study", "torn", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["states"]["complete"] == 14


def test_a_whole_journal_is_left_untouched(tmp_path):
    journal = tmp_path / "study.log"
    result = tf("run", f"{OBJECTIVES}:mixed", "--storage", str(journal), "--study", "torn",
                "--workers", "1", "--n-trials", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before = journal.read_bytes()
    assert tf("best", "--storage", str(journal), "--study", "torn", cwd=tmp_path).returncode == 0
    assert journal.read_bytes() == before and not list(tmp_path.glob("*.torn-*"))
