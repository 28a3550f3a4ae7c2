"""Workers that behave like ``study.optimize`` around them: OpenMP/BLAS pools capped per worker,
pools shut down when the worker exits (``tunefleet run ... | cat`` returns), tracebacks that
name the user's file and line, ``gc_after_trial`` and ``n_jobs`` as Optuna means them, and
messages through Optuna's logger."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import textwrap
import weakref

import optuna
import pytest

import tunefleet
from tunefleet.errors import UsageError


def _pools(trial: optuna.Trial) -> float:
    """Report the thread count of every OpenMP/BLAS pool this worker has loaded."""
    import threadpoolctl

    trial.suggest_float("x", 0, 1)
    info = threadpoolctl.threadpool_info()
    trial.set_user_attr("pools", sorted({p["num_threads"] for p in info}))
    trial.set_user_attr("omp", os.environ.get("OMP_NUM_THREADS"))
    return 0.0


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_threads_per_worker_caps_every_pool(start_method):
    study = optuna.create_study()
    tunefleet.optimize(study, _pools, n_trials=2, n_workers=2, start_method=start_method,
                       threads_per_worker=3)
    for t in study.trials:
        assert t.user_attrs["omp"] == "3"
        assert t.user_attrs["pools"] == [3]  # numpy's BLAS at least, loaded by Optuna


def test_default_thread_limit_is_the_cpus_shared_among_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    study = optuna.create_study()
    tunefleet.optimize(study, _pools, n_trials=2, n_workers=2)
    assert all(t.user_attrs["omp"] == str(expected) for t in study.trials)
    assert all(t.user_attrs["pools"] == [expected] for t in study.trials)


def test_a_users_omp_num_threads_is_left_alone_and_zero_means_no_limit(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    study = optuna.create_study()
    tunefleet.optimize(study, _pools, n_trials=1, n_workers=2)
    assert study.trials[0].user_attrs["omp"] == "5"
    monkeypatch.delenv("OMP_NUM_THREADS")
    study = optuna.create_study()
    tunefleet.optimize(study, _pools, n_trials=1, n_workers=2, threads_per_worker=0)
    assert study.trials[0].user_attrs["omp"] is None


LOKY_OBJECTIVE = textwrap.dedent("""
    import joblib

    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        # A loky pool in the worker: it must not outlive the worker and hold stdout open.
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4))
        return x * x + sum(out)
""")


def test_tunefleet_run_piped_into_cat_returns_when_the_run_ends(tmp_path):
    """Before: the workers' loky pools kept the pipe open for their idle timeout (300 s);
    the run itself had ended long before. The timeout below guards against that hang."""
    (tmp_path / "loky_objective.py").write_text(LOKY_OBJECTIVE)
    command = (f"{sys.executable} -m tunefleet run loky_objective.py:objective --n-trials 4 "
               f"--workers 2 --no-progress | cat")
    proc = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True,
                          timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "best value" in proc.stdout
    assert "leaked" not in proc.stderr


TRACEBACK_SCRIPT = textwrap.dedent("""
    import linecache, sys
    import optuna, tunefleet

    def from_file(trial):
        trial.suggest_float("x", 0, 1)
        raise KeyError("raised in the user's file")

    # What a notebook does: the cell's source in linecache, under a name that is no file.
    cell = "def from_cell(trial):\\n    raise ValueError('raised in a cell')\\n"
    linecache.cache["<cell-7>"] = (len(cell), None, cell.splitlines(True), "<cell-7>")
    exec(compile(cell, "<cell-7>", "exec"))

    study = optuna.create_study()
    objective = from_file if sys.argv[1] == "file" else from_cell
    tunefleet.optimize(study, objective, n_trials=1, n_workers=1, catch=(Exception,),
                       start_method=sys.argv[2])
""")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_tracebacks_name_the_users_file_line_and_source(tmp_path, start_method):
    script = tmp_path / "user_objective.py"
    script.write_text(TRACEBACK_SCRIPT)
    file_run = subprocess.run([sys.executable, str(script), "file", start_method],
                              capture_output=True, text=True, timeout=120)
    err = file_run.stderr
    assert f'File "{script}", line 7, in from_file' in err, err[-2000:]
    assert 'raise KeyError("raised in the user\'s file")' in err
    assert "<dynamic-code>" not in err and "tunefleet/hub/_worker.py" not in err
    # In Optuna's format, through Optuna's logger.
    assert re.search(r"^\[W \d{4}-\d\d-\d\d .*\] Trial 0 failed with parameters", err, re.M)
    cell_run = subprocess.run([sys.executable, str(script), "cell", start_method],
                              capture_output=True, text=True, timeout=120)
    assert 'File "<cell-7>", line 2, in from_cell' in cell_run.stderr, cell_run.stderr[-2000:]
    assert "raise ValueError('raised in a cell')" in cell_run.stderr


def test_optuna_verbosity_governs_the_coordinators_trial_messages(tmp_path):
    script = tmp_path / "quiet.py"
    script.write_text(textwrap.dedent("""
        import optuna, tunefleet
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.create_study()
        tunefleet.optimize(study, lambda t: 1 / 0, n_trials=2, n_workers=1,
                           catch=(ZeroDivisionError,))
        print("states", [t.state.name for t in study.trials])
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert "states ['FAIL', 'FAIL']" in proc.stdout, proc.stderr[-2000:]
    assert "failed" not in proc.stderr


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _no_automatic_gc() -> None:
    gc.disable()  # in the worker: only an explicit gc.collect() frees a cycle


_last_cycle: list[weakref.ref] = []


def _leaves_a_cycle(trial: optuna.Trial) -> float:
    """Trial n+1 says whether trial n's garbage cycle was collected in between."""
    if _last_cycle:
        trial.set_user_attr("previous_cycle_freed", _last_cycle[-1]() is None)
    _last_cycle.append(weakref.ref(_Cycle()))
    return trial.suggest_float("x", 0, 1)


@pytest.mark.parametrize("gc_after_trial", [True, False])
def test_gc_after_trial_collects_in_the_worker(gc_after_trial):
    study = optuna.create_study()
    tunefleet.optimize(study, _leaves_a_cycle, n_trials=3, n_workers=1,
                       setup=_no_automatic_gc, gc_after_trial=gc_after_trial)
    freed = [t.user_attrs["previous_cycle_freed"] for t in study.trials[1:]]
    assert freed == [gc_after_trial] * 2


def test_n_jobs_says_to_use_n_workers():
    study = optuna.create_study()
    with pytest.raises(UsageError, match="use n_workers=4 instead of n_jobs=4"):
        tunefleet.optimize(study, lambda t: 0.0, n_trials=1, n_jobs=4)
    assert study.trials == []


def _raises_key_error(trial: optuna.Trial) -> float:
    return {"a": 1.0}["b"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_an_uncaught_objective_error_carries_the_workers_traceback():
    study = optuna.create_study()
    with pytest.raises(KeyError) as info:
        tunefleet.optimize(study, _raises_key_error, n_trials=1, n_workers=1)
    note = "\n".join(info.value.__notes__)
    line = _raises_key_error.__code__.co_firstlineno + 1
    assert f'File "{__file__}", line {line}, in _raises_key_error' in note
    assert 'return {"a": 1.0}["b"]' in note
