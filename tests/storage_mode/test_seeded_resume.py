"""Storage mode: a study run with --seed and continued later draws what one uninterrupted run
with that seed draws (Random with any number of workers, TPE / CMA-ES / NSGA-II with one
worker); parameters are compared exactly."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli
from tunefleet import _attrs as attrs
from tunefleet._studies import open_storage

pytestmark = pytest.mark.timeout(600)
SLOW = f"{Path(__file__).parent / 'objectives.py'}:slow"  # x float, y int; sleeps TF_SLEEP


def done(url: str) -> dict[int, dict]:
    """number -> params of the complete trials."""
    study = optuna.load_study(study_name="tunefleet", storage=open_storage(url))
    return {t.number: t.params for t in study.get_trials(states=(TrialState.COMPLETE,))}


def worker(url: str, *args: str, sleep: str = "0") -> None:
    r = run_cli("worker", SLOW, "--storage", url, "-q", *args, timeout=300,
                env={"TF_SLEEP": sleep})
    assert r.returncode == 0, r.stderr


def workers(n: int, url: str, total: int, folder: Path) -> set[str]:
    """N workers at once on the study until it holds TOTAL trials, each trial held until both
    have begun one (in FOLDER: a fresh one each time); the workers that ran one."""
    folder.mkdir()
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "TF_SLEEP": "0.3",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "tunefleet", "worker", f"{SLOW}_when_two_joined",
           "--storage", url, "-q", "--n-trials", str(total)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=folder) for _ in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="tunefleet", storage=url)
    return {t.system_attrs.get(attrs.WORKER) for t in study.get_trials()}


@pytest.mark.parametrize("sampler,half,full", [
    ("random", 5, 10),
    ("tpe", 12, 24),  # past TPE's 10 random start-up trials
    pytest.param("cmaes", 8, 16, marks=pytest.mark.skipif(
        importlib.util.find_spec("cmaes") is None, reason="needs the [cmaes] extra")),
    ("nsga2", 10, 20),
])
def test_two_halves_draw_what_one_run_draws(tmp_path, sampler, half, full):
    halves, whole = f"sqlite:///{tmp_path / 'halves.db'}", f"sqlite:///{tmp_path / 'whole.db'}"
    worker(halves, "--sampler", sampler, "--seed", "7", "--n-trials", str(half))
    worker(halves, "--sampler", sampler, "--seed", "7", "--n-trials", str(full))
    worker(whole, "--sampler", sampler, "--seed", "7", "--n-trials", str(full))
    got, want = done(halves), done(whole)
    assert sorted(want) == list(range(full))
    assert got == want


def test_journal_halves_draw_what_one_run_draws(tmp_path):
    halves, whole = f"journal:///{tmp_path / 'halves.log'}", f"sqlite:///{tmp_path / 'whole.db'}"
    worker(halves, "--sampler", "random", "--seed", "4", "--n-trials", "3")
    worker(halves, "--sampler", "random", "--seed", "4", "--n-trials", "7")
    worker(whole, "--sampler", "random", "--seed", "4", "--n-trials", "7")
    assert done(halves) == done(whole)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_hub_run_continued_by_storage_workers(tmp_path, sampler):
    """The hub draws with the same keys: a study begun with ``tunefleet run`` and continued by
    ``tunefleet worker`` draws what one storage-mode run draws (one worker each)."""
    mixed, whole = f"sqlite:///{tmp_path / 'mixed.db'}", f"sqlite:///{tmp_path / 'whole.db'}"
    r = run_cli("run", SLOW, "--storage", mixed, "--sampler", sampler, "--seed", "9",
                "--n-trials", "12", "--workers", "1", "--no-progress", timeout=300,
                env={"TF_SLEEP": "0"})
    assert r.returncode == 0, r.stderr
    worker(mixed, "--n-trials", "20")
    worker(whole, "--sampler", sampler, "--seed", "9", "--n-trials", "20")
    assert done(mixed) == done(whole)


def test_a_continued_run_uses_the_recorded_seed(tmp_path):
    """Continued with no --sampler / --seed: the spec recorded in the study, seed included."""
    thirds, whole = f"sqlite:///{tmp_path / 'thirds.db'}", f"sqlite:///{tmp_path / 'whole.db'}"
    worker(thirds, "--sampler", "tpe", "--seed", "3", "--n-trials", "4")
    worker(thirds, "--n-trials", "11")
    worker(thirds, "--n-trials", "15")
    worker(whole, "--sampler", "tpe", "--seed", "3", "--n-trials", "15")
    assert done(thirds) == done(whole)


def test_random_draws_by_trial_number_with_two_workers(tmp_path):
    """Two workers at a time, twice, draw what one worker draws in one go, trial by trial."""
    halves, whole = f"sqlite:///{tmp_path / 'halves.db'}", f"sqlite:///{tmp_path / 'whole.db'}"
    r = run_cli("init", "--storage", halves, "--sampler", "random", "--seed", "11")
    assert r.returncode == 0, r.stderr
    first = workers(2, halves, 8, tmp_path / "first")
    second = workers(2, halves, 16, tmp_path / "second")
    worker(whole, "--sampler", "random", "--seed", "11", "--n-trials", "16")
    got, want = done(halves), done(whole)
    assert sorted(want) == list(range(16))
    assert got == want
    assert len(first) >= 2 and len(second - first) >= 2  # both workers ran trials, each time


def test_another_seed_draws_otherwise(tmp_path):
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    worker(a, "--sampler", "random", "--seed", "1", "--n-trials", "4")
    worker(b, "--sampler", "random", "--seed", "2", "--n-trials", "4")
    got, other = done(a), done(b)
    assert len(got) == len(other) == 4
    assert all(got[n]["x"] != other[n]["x"] for n in range(4))


def test_seeded_grid_worker(tmp_path):
    """``--sampler grid --search-space FILE --seed N``: the worker keeps the grid."""
    grid = {"x": [-1.0, 0.0, 1.0], "y": [0, 2]}
    space = tmp_path / "space.json"
    space.write_text(json.dumps(grid))
    url = f"sqlite:///{tmp_path / 'g.db'}"
    worker(url, "--sampler", "grid", "--search-space", str(space), "--seed", "5",
           "--n-trials", "3")
    worker(url, "--sampler", "grid", "--search-space", str(space), "--seed", "5",
           "--n-trials", "6")
    seen = sorted((p["x"], p["y"]) for p in done(url).values())
    assert seen == sorted(itertools.product(grid["x"], grid["y"]))
