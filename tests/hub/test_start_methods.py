"""Workers forked from the coordinator, or started as fresh interpreters when the parent has
loaded a library that is not fork-safe (PyTorch's OpenMP pool hangs a forked child)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

import tunefleet
from tunefleet.backends._processes import ProcessBackend

SCRIPT = textwrap.dedent("""
    import torch, optuna, tunefleet

    torch.set_num_threads(2)
    a = torch.randn(300, 300)
    (a @ a).sum()                      # the parent's OpenMP pool now exists

    def objective(trial):              # defined in __main__, no `if __name__` guard
        x = trial.suggest_float("x", -1, 1)
        b = torch.randn(200, 200)
        for _ in range(3):
            b = torch.tanh(b @ b)      # multi-threaded in the worker
        return x * x + 0 * float(b.sum())

    study = optuna.create_study()
    tunefleet.optimize(study, objective, n_trials=6, n_workers=2)
    print("trials", sum(t.state.name == "COMPLETE" for t in study.trials), "end")
""")


def test_a_parent_that_ran_torch_gets_fresh_workers_that_do_not_hang(tmp_path):
    script = tmp_path / "torch_objective.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trials 6 " in proc.stdout


def test_default_start_method_is_fork_without_torch_and_spawn_with_it():
    code = ("from tunefleet.backends._processes import default_start_method as d; a = d(); "
            "import torch; print(a, d())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout.split()
    assert out == ["fork", "spawn"]


def test_spawned_workers_are_separate_interpreters_and_replace_dead_ones():
    def dies_once(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 2:
            os._exit(3)
        return x

    study = optuna.create_study()
    tunefleet.optimize(study, dies_once, n_trials=8, n_workers=2, start_method="spawn")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 8 and states.count("FAIL") == 1
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert "exited with code 3" in failed.system_attrs["tunefleet:fail_reason"]


def test_unknown_start_method_is_a_usage_error():
    with pytest.raises(tunefleet.errors.UsageError, match="start_method"):
        ProcessBackend(start_method="telepathy")


LOKY_SCRIPT = textwrap.dedent("""
    import joblib, optuna, tunefleet
    from tunefleet.backends._processes import default_start_method

    # The parent has used loky (what scikit-learn's n_jobs>1 does): its executor exists now.
    joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4))
    print("start method", default_start_method())

    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4))
        return x * x + sum(out)

    study = optuna.create_study()
    tunefleet.optimize(study, objective, n_trials=4, n_workers=2)
    print("trials", sum(t.state.name == "COMPLETE" for t in study.trials), "end")
""")


def run_loky_script(script: Path, text: str) -> subprocess.CompletedProcess:
    """Run TEXT as the script SCRIPT (in its folder); it must end well, and in time: the
    timeout guards against workers that hang in joblib.Parallel."""
    script.write_text(text)
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=150, cwd=script.parent)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"workers hung in joblib.Parallel: {(exc.stderr or b'')[-1000:]!r}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_workers_of_a_parent_that_used_loky_do_not_hang_in_joblib(tmp_path):
    """Forked from a parent whose loky executor exists, a worker's first joblib.Parallel
    waited forever on the parent's executor (its manager thread is not in the child). The
    timeout guards against that hang; the run itself takes seconds."""
    proc = run_loky_script(tmp_path / "loky_parent.py", LOKY_SCRIPT)
    assert "start method spawn" in proc.stdout
    assert "trials 4 end" in proc.stdout


def test_forked_worker_forgets_the_parents_loky_executor(tmp_path):
    """start_method="fork" forced after loky: the worker drops the inherited executor and
    joblib makes its own instead of waiting on the parent's."""
    proc = run_loky_script(tmp_path / "loky_fork.py", LOKY_SCRIPT.replace(
        "n_workers=2)", "n_workers=2, start_method='fork')"))
    assert "trials 4 end" in proc.stdout
