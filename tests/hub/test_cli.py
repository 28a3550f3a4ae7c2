"""``tunefleet run``, ``best`` and ``studies`` as a user types them."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import optuna
import pytest

from tests.conftest import EXAMPLES, run_cli
from tests.helpers import wait_until

QUAD = str(EXAMPLES / "quadratic.py")


def test_run_quadratic_prints_best_and_persists(tmp_path):
    r = run_cli("run", f"{QUAD}:objective", "--n-trials", "30", "--workers", "4", "--json",
                "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_trials"] == 30 and out["states"]["complete"] == 30
    assert set(out["best_params"]) == {"x", "y"}
    assert (tmp_path / "tunefleet.db").exists()  # the default storage, in this folder
    best = run_cli("best", "--study", "tunefleet", "--json", cwd=tmp_path)
    assert json.loads(best.stdout)["best_value"] == out["best_value"]
    listing = run_cli("studies", cwd=tmp_path)
    assert listing.stdout.startswith("tunefleet\tminimize")
    # --n-trials is the study's budget: the same study, continued up to 40 trials in all.
    again = run_cli("run", f"{QUAD}:Quadratic", "--n-trials", "40", "--workers", "2", "--json",
                    "--no-progress", cwd=tmp_path)
    assert "holds 30 of 40 trials; running 10 more" in again.stderr
    assert json.loads(again.stdout)["n_trials"] == 40


def test_run_class_target_and_options(tmp_path):
    storage = f"sqlite:///{tmp_path}/x.db"
    r = run_cli("run", "quadratic:Quadratic", "--n-trials", "12", "--workers", "2",
                "--storage", storage, "--study", "cls", "--direction", "minimize",
                "--sampler", "random", "--seed", "3", "--pruner", "none", cwd=EXAMPLES)
    assert r.returncode == 0, r.stderr
    assert "best value" in r.stdout
    study = optuna.load_study(study_name="cls", storage=storage)
    assert len(study.trials) == 12
    assert isinstance(study.sampler, optuna.samplers.TPESampler)  # load_study's default...
    spec = study._storage.get_study_system_attrs(study._study_id)["tunefleet:spec"]
    assert "random" in spec  # ...but the spec is recorded


@pytest.mark.parametrize("target, message", [
    ("nope.py:objective", "no such file"),
    ("QUAD:missing", "has no attribute 'missing'"),
    ("no_such_pkg.mod:f", "no module named"),
    ("justaname", "must look like"),
])
def test_bad_targets_are_one_line_and_exit_2(tmp_path, target, message):
    r = run_cli("run", target.replace("QUAD", QUAD), "--n-trials", "3", cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_syntax_error_in_target_file(tmp_path):
    (tmp_path / "broken.py").write_text("def objective(trial):\n    return (\n")
    r = run_cli("run", "broken.py:objective", "--n-trials", "3", cwd=tmp_path)
    assert r.returncode == 2
    assert "syntax error in" in r.stderr and "line 2" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("storage", ["nosuchdb://x", "sqlite:////no/such/folder/x.db",
                                     "not a url"])
def test_bad_storage_url(tmp_path, storage):
    r = run_cli("run", f"{QUAD}:objective", "--n-trials", "3", "--storage", storage, cwd=tmp_path)
    assert r.returncode == 2
    assert "storage" in r.stderr and "Traceback" not in r.stderr


def test_direction_mismatch(tmp_path):
    assert run_cli("run", f"{QUAD}:objective", "--n-trials", "2", "--no-progress",
                   cwd=tmp_path).returncode == 0
    r = run_cli("run", f"{QUAD}:objective", "--n-trials", "2", "--direction", "maximize",
                cwd=tmp_path)
    assert r.returncode == 2
    assert "exists with direction minimize" in r.stderr and "Traceback" not in r.stderr


SLOW = """
import time
def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    time.sleep(0.3)
    return x
"""


def count_states(db):
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select state, count(*) from trials group by state").fetchall())


def test_ctrl_c_closes_running_trials_and_says_how_to_resume(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW)
    cmd = [sys.executable, "-m", "tunefleet", "run", "slow.py:objective", "--n-trials", "200",
           "--workers", "3", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    db = tmp_path / "tunefleet.db"

    def some_complete() -> bool:
        try:
            return db.exists() and count_states(db).get("COMPLETE", 0) >= 3
        except sqlite3.OperationalError:  # the tables are not made yet
            return False

    wait_until(some_complete, 120, "3 complete trials", interval=0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Run the same command again to continue" in err
    states = count_states(db)
    assert "RUNNING" not in states
    assert states.get("FAIL", 0) == 0  # the trials running at Ctrl-C finished in the grace period
    done = sum(states.values())
    assert f"holds {done} finished trials" in err
    r = subprocess.run(cmd[:6] + [str(done + 2), "--no-progress", "--json"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout)["n_trials"] == done + 2


def test_progress_bar_shows_the_live_figures(tmp_path):
    r = run_cli("run", f"{QUAD}:objective", "--n-trials", "20", "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    last = [line for line in r.stderr.replace("\r", "\n").splitlines() if "|" in line][-1]
    assert "20/20" in last
    assert "best=" in last and "/min" in last and "busy=" in last
    assert "Trial 3 finished" not in r.stderr  # the bar replaces Optuna's per-trial lines
