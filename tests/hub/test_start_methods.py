"""Workers forked from the coordinator, or, when the parent has loaded a library that is not
fork-safe (PyTorch's OpenMP pool hangs a forked child), forked from a fork server that imported
tunefleet and torch once (or started as fresh interpreters with ``start_method="spawn"``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
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


def test_a_parent_that_ran_torch_gets_workers_that_do_not_hang(tmp_path):
    script = tmp_path / "torch_objective.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trials 6 " in proc.stdout


def test_default_start_method_forks_a_torch_parent_only_for_one_thread_per_worker():
    code = ("from tunefleet.backends._processes import default_start_method as d; a = d(2); "
            "import torch; print(a, d(1), d(2), d(None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout.split()
    assert out == ["fork", "fork", "forkserver", "forkserver"]


def test_a_parent_that_ran_torch_on_two_threads_gets_workers_that_run_two(tmp_path):
    """Workers of two threads each: from the fork server (forked from the parent, whose pool
    exists, they hung in their first parallel region)."""
    script = tmp_path / "two_threads.py"
    script.write_text(SCRIPT.replace("n_workers=2)", "n_workers=2, threads_per_worker=2)")
                      .replace("return x * x", "trial.set_user_attr('t', torch.get_num_threads()); "
                               "return x * x")
                      .replace('"end")', '"end", {t.user_attrs["t"] for t in study.trials})'))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trials 6 end {2}" in proc.stdout


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_workers_not_forked_from_the_parent_replace_dead_ones(start_method):
    def dies_once(trial):
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 2:
            os._exit(3)
        return x

    study = optuna.create_study()
    tunefleet.optimize(study, dies_once, n_trials=8, n_workers=2, start_method=start_method)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 8 and states.count("FAIL") == 1
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert "exited with code 3" in failed.system_attrs["tunefleet:fail_reason"]


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_a_coordinator_slow_to_answer_is_waited_for(start_method):
    """A worker waits for its coordinator as long as the coordinator lives: here a callback
    holds the coordinator 1.5 s after each trial, as a slow MLflow callback or the first TPE
    sampling on a loaded machine does. Workers of the fork server took a silence of 1 s for
    their coordinator's death (they compared their parent, the server, with the coordinator's
    pid), left with exit code 0, and their trials failed."""
    def slow(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        time.sleep(1.5)

    study = optuna.create_study()
    tunefleet.optimize(study, lambda t: t.suggest_float("x", 0, 1), n_trials=4, n_workers=2,
                       start_method=start_method, callbacks=[slow])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


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
    assert "start method forkserver" in proc.stdout
    assert "trials 4 end" in proc.stdout


def test_forked_worker_forgets_the_parents_loky_executor(tmp_path):
    """start_method="fork" forced after loky: the worker drops the inherited executor and
    joblib makes its own instead of waiting on the parent's."""
    proc = run_loky_script(tmp_path / "loky_fork.py", LOKY_SCRIPT.replace(
        "n_workers=2)", "n_workers=2, start_method='fork')"))
    assert "trials 4 end" in proc.stdout


WARM_SCRIPT = textwrap.dedent("""
    import os, sys, torch, optuna, tunefleet

    def objective(trial):              # what the worker had imported before its first trial
        trial.set_user_attr("warm", "torch._dynamo" in sys.modules)
        trial.set_user_attr("ppid", os.getppid())
        trial.set_user_attr("threads", torch.get_num_threads())
        trial.set_user_attr("cwd", os.getcwd())
        return trial.suggest_float("x", -1, 1) ** 2

    os.chdir("elsewhere")               # after the fork server may have started: followed
    study = optuna.create_study()
    torch.randn(300, 300).sum()        # a torch operation in the parent
    tunefleet.optimize(study, objective, n_trials=6, n_workers=2, threads_per_worker=1)
    tunefleet.optimize(study, objective, n_trials=4, n_workers=2, threads_per_worker=2)
    tunefleet.optimize(study, objective, n_trials=2, n_workers=2, threads_per_worker=2)
    for t in study.trials:
        a = t.user_attrs
        parent = "parent" if a["ppid"] == os.getpid() else a["ppid"]
        print(t.state.name, a["warm"], parent, a["threads"], a["cwd"] == os.getcwd())
    print("end")
""")


def test_workers_of_a_torch_parent_start_warm(tmp_path):
    """The workers of a parent that imported torch find torch._dynamo (which PyTorch 2 imports
    when the first optimizer is built) imported before their first trial: forked from the
    parent when they run one thread each, else from a fork server that imported torch and
    torch._dynamo once (the second run of two threads uses the same server). The thread limit
    and the coordinator's folder hold either way."""
    (tmp_path / "elsewhere").mkdir()
    script = tmp_path / "warm.py"
    script.write_text(WARM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split("end")[0].split("\n")
    rows = [line.split() for line in lines if line]
    assert len(rows) == 12, proc.stdout
    assert all(r[0] == "COMPLETE" and r[1] == "True" and r[4] == "True" for r in rows), proc.stdout
    forked, served = rows[:6], rows[6:]
    assert {(r[2], r[3]) for r in forked} == {("parent", "1")}, proc.stdout
    assert len({r[2] for r in served}) == 1 and served[0][2] != "parent", proc.stdout  # one server
    assert {r[3] for r in served} == {"2"}, proc.stdout


def _env_var(trial: optuna.Trial) -> float:
    trial.set_user_attr("var", os.environ.get("TF_TEST_VAR"))
    return trial.suggest_float("x", 0, 1)


def test_fork_server_workers_see_the_coordinators_environment_of_now(monkeypatch):
    """The fork server keeps the environment of its start: a variable the coordinator has
    since removed must not reach the workers of a later run."""
    monkeypatch.setenv("TF_TEST_VAR", "then")
    study = optuna.create_study()
    tunefleet.optimize(study, _env_var, n_trials=2, n_workers=2, start_method="forkserver")
    monkeypatch.delenv("TF_TEST_VAR")
    tunefleet.optimize(study, _env_var, n_trials=2, n_workers=2, start_method="forkserver")
    assert [t.user_attrs["var"] for t in study.trials] == ["then", "then", None, None]
