"""Workers that go bad are replaced (issue 20, part 5): a worker whose memory passed
``--max-worker-memory`` after a trial, or whose objective raised ``MemoryError``, gives way to a
fresh process; with ``--keep-going`` the budget of ``--n-trials`` is reached even though trials
fail, and an objective that always fails ends the run instead of looping. Real runs of
``python -m tunefleet run``; the objectives are in ``bad_worker_objectives.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli
from tests.hub.bad_worker_objectives import LEAK

OBJECTIVES = str(Path(__file__).with_name("bad_worker_objectives.py"))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the objectives read /proc/self/statm")


def run(tmp_path: Path, objective: str, *args: str):
    storage = f"sqlite:///{tmp_path}/study.db"
    r = run_cli("run", f"{OBJECTIVES}:{objective}", "--storage", storage, "--no-progress",
                *args, cwd=tmp_path, timeout=240)
    try:
        return r, optuna.load_study(study_name="tunefleet", storage=storage).trials
    except KeyError:  # no study: the command refused its options; the test says why
        return r, []


def states(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def test_a_leaking_worker_is_replaced_before_it_passes_the_limit(tmp_path):
    limit = 350_000_000
    r, trials = run(tmp_path, "leaky", "--max-worker-memory", "350MB", "--n-trials", "12",
                    "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert states(trials) == {"COMPLETE": 12}, r.stderr
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) > 2, f"workers were not replaced: {pids}\n{r.stderr}"
    # Each trial's RSS is what its worker had after the previous trial (at most the limit, or
    # it would have been replaced) plus one trial's leak; 10 MB for what the worker does
    # between trials (messages, the proxy trial).
    worst = max(t.user_attrs["rss"] for t in trials)
    assert worst <= limit + LEAK + 10_000_000, worst
    assert "replaced after trial" in r.stderr
    assert "passed --max-worker-memory 350 MB" in r.stderr


def test_memory_error_replaces_the_worker_and_keep_going_reaches_the_budget(tmp_path):
    r, trials = run(tmp_path, "memory_error_third", "--keep-going", "--n-trials", "20",
                    "--workers", "2")
    assert r.returncode == 0, r.stderr
    count = states(trials)
    assert count["COMPLETE"] == 20 and set(count) == {"COMPLETE", "FAIL"}, count
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        pid = failed.user_attrs["pid"]
        later = [t.number for t in trials if t.user_attrs["pid"] == pid
                 and t.number > failed.number]
        assert not later, f"worker {pid} ran trials {later} after its MemoryError"
    assert "its objective raised MemoryError" in r.stderr
    assert "more to reach --n-trials 20" in r.stderr  # a second round, said in one line


def test_memory_error_without_keep_going_stops_the_run(tmp_path):
    r, trials = run(tmp_path, "memory_error_third", "--n-trials", "20", "--workers", "2")
    assert r.returncode == 1, r.stderr
    stopped = [line for line in r.stderr.splitlines()
               if line.startswith("tunefleet: the run stopped:")]
    assert stopped == [stopped[0]] and "MemoryError." in stopped[0], r.stderr
    assert "Traceback" not in r.stderr.split(stopped[0])[1]  # no traceback of tunefleet's own
    assert "raised MemoryError" not in r.stderr  # the study stopped: nobody is replaced
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_an_objective_that_always_fails_ends_with_keep_going(tmp_path):
    """The rounds of --keep-going stop after one that completed no trial: exit 1, with the
    summary and one line that says why the budget was not reached."""
    r, trials = run(tmp_path, "always_fails", "--keep-going", "--n-trials", "6",
                    "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert states(trials) == {"FAIL": 6}  # one round, not another
    assert "6 trials (6 fail)" in r.stdout
    assert "tunefleet: stopping short of --n-trials 6 (the study holds 0)" in r.stderr


@pytest.mark.parametrize("size", ["35XB", "-5MB", "0", "lots"])
def test_a_bad_size_is_one_line(tmp_path, size):
    r = run_cli("run", f"{OBJECTIVES}:leaky", "--n-trials", "1", "--max-worker-memory", size,
                cwd=tmp_path)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--max-worker-memory" in errors[0], r.stderr
    assert not (tmp_path / "tunefleet.db").exists()


def test_sizes_and_the_environment_variable(tmp_path):
    from tunefleet.hub import parse_size

    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("500MB") == parse_size("500 mb") == 500_000_000
    assert parse_size("1.5GiB") == 3 * 2**29
    assert parse_size(1234) == parse_size("1234") == 1234
    r = run_cli("run", f"{OBJECTIVES}:leaky", "--n-trials", "1", cwd=tmp_path,
                env={"TUNEFLEET_RUN_MAX_WORKER_MEMORY": "nonsense"})
    assert r.returncode == 2 and "TUNEFLEET_RUN_MAX_WORKER_MEMORY" in r.stderr, r.stderr


def test_optimize_takes_the_size_and_refuses_what_it_cannot_replace():
    import tunefleet
    from tunefleet.errors import OptionError, UsageError

    study = optuna.create_study()
    with pytest.raises(OptionError, match="max_worker_memory"):
        tunefleet.optimize(study, lambda t: 0.0, n_trials=1, max_worker_memory="2 bananas")
    with pytest.raises(UsageError, match="backend='processes'"):
        tunefleet.optimize(study, lambda t: 0.0, n_trials=1, backend="tcp",
                           max_worker_memory="2GB")
    tunefleet.optimize(study, lambda t: 1.0, n_trials=2, n_workers=1, max_worker_memory=10**12)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
