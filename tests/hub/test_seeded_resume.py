"""A study run with --seed and continued later draws what one uninterrupted run with that seed
draws: Random with any number of workers, TPE / CMA-ES / NSGA-II with one worker."""

from __future__ import annotations

import optuna
import pytest

from tests.conftest import EXAMPLES, run_cli

pytestmark = pytest.mark.timeout(600)
QUAD = EXAMPLES / "quadratic.py"


def params(folder) -> list[dict]:
    study = optuna.load_study(study_name="tunefleet", storage=f"sqlite:///{folder}/tunefleet.db")
    return [t.params for t in study.trials]


def run(folder, *args: str) -> None:
    r = run_cli("run", f"{QUAD}:objective", "--no-progress", *args, cwd=folder, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("sampler,workers,half,full", [
    ("random", ("3", "2"), 6, 14),
    ("tpe", ("1", "1"), 12, 24),
    ("cmaes", ("1", "1"), 8, 16),
    ("nsga2", ("1", "1"), 10, 20),
])
def test_two_halves_draw_what_one_run_draws(tmp_path, sampler, workers, half, full):
    halves, whole = tmp_path / "halves", tmp_path / "whole"
    halves.mkdir()
    whole.mkdir()
    run(halves, "--sampler", sampler, "--seed", "7", "--n-trials", str(half), "--workers",
        workers[0])
    run(halves, "--n-trials", str(full), "--workers", workers[0])  # the recorded spec and seed
    run(whole, "--sampler", sampler, "--seed", "7", "--n-trials", str(full), "--workers",
        workers[1])
    got, want = params(halves), params(whole)
    assert len(got) == len(want) == full
    assert got == want


def test_another_seed_draws_otherwise(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    run(a, "--sampler", "random", "--seed", "1", "--n-trials", "5", "--workers", "2")
    run(b, "--sampler", "random", "--seed", "2", "--n-trials", "5", "--workers", "2")
    assert params(a) != params(b)
