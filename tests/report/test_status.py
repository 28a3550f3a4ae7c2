"""``tunefleet status``: the figures, and the command on a study with RUNNING trials."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import threading
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState

from tunefleet.report._status import format_status, status_figures
from tests.helpers import wait_until
from tests.report.studies import fill, new_study

NOW = 1_800_000_000.0
DURATION = 60.0  # running trial j started (j + 1) * DURATION before NOW


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    s = new_study()
    fill(s, 30, workers=3, fail_every=10, prune_every=7, running=4, duration=DURATION,
         end=NOW, seed=2)
    return s


def _median_complete(trials) -> float:
    return statistics.median(t.system_attrs["tunefleet:finished"]
                             - t.system_attrs["tunefleet:started"]
                             for t in trials if t.state == TrialState.COMPLETE)


def test_figures_by_state_best_rate_running_and_slow(study):
    fig = status_figures(study, now=NOW)
    trials = study.trials
    for state in TrialState:
        assert fig.states[state.name.lower()] == sum(t.state == state for t in trials)
    assert fig.n_trials == 34 and fig.n_running == 4
    assert (fig.best_number, fig.best_value) == (study.best_trial.number, study.best_value)
    first = min(t.system_attrs["tunefleet:started"] for t in trials)
    finished = sum(t.state.is_finished() for t in trials)
    assert fig.per_minute_overall == pytest.approx(finished / ((NOW - first) / 60))
    assert fig.per_minute == pytest.approx(fig.per_minute_overall)  # the study is < 10 min old
    median = _median_complete(trials)
    assert fig.expected_duration == pytest.approx(median)
    # running trials per worker: j -> node{j % 3}
    assert {w: sorted(r.number for r in runs) for w, runs in fig.running.items()} == {
        "node0/1000": [30, 33], "node1/1001": [31], "node2/1002": [32]}
    elapsed = {r.number: r.elapsed for runs in fig.running.values() for r in runs}
    assert elapsed == pytest.approx({30 + j: (j + 1) * DURATION for j in range(4)})
    assert [r.number for r in fig.slow] == [n for n in (33, 32, 31, 30)
                                            if elapsed[n] > 3 * median]
    assert 33 in [r.number for r in fig.slow] and 30 not in [r.number for r in fig.slow]
    text = format_status(fig)
    assert "running: 4 on 3 workers" in text and "node0/1000: #30" in text
    assert "running longer than expected" in text and "#33 on node0/1000" in text
    assert f"best {study.best_value:.6g} (trial {study.best_trial.number})" in text
    assert "3 running" not in fig.short() and "4 running" in fig.short()


def test_empty_and_multi_objective_figures():
    empty = status_figures(new_study(), now=NOW)
    text = format_status(empty)
    assert "no trial yet" in text and "no completed trial yet" in text
    assert "no finished trial yet" in text and "running: none" in text
    multi = new_study(("minimize", "maximize"))
    fill(multi, 15, seed=1, end=NOW)
    fig = status_figures(multi, now=NOW)
    assert fig.best_value is None and fig.n_pareto == len(multi.best_trials)
    assert f"Pareto front: {fig.n_pareto} trials" in format_status(fig)
    json.dumps(fig.as_dict(), default=str)  # JSON-ready


# --- through the command line ----------------------------------------------------------------
@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('status')}/status.db"
    s = new_study(storage=url, name="live")
    fill(s, 12, workers=3, running=4, duration=DURATION, seed=2)
    return url


def test_status_command_on_running_trials(cli, db):
    proc = cli("status", "--storage", db, "--study", "live")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("study live (minimize): 16 trials - ")
    assert "12 complete" in out and "4 running" in out
    assert "running: 4 on 3 workers" in out
    for worker in ("node0/1000", "node1/1001", "node2/1002"):
        assert f"  {worker}: #" in out
    assert "running longer than expected" in out and "#15 on node0/1000" in out
    assert "trials/min recently" in out
    proc = cli("status", "--storage", db, "--study", "live", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["states"]["running"] == 4 and data["states"]["complete"] == 12
    slow = {r["number"] for r in data["slow"]}
    assert 15 in slow and 12 not in slow  # 4 and 1 durations old; median < 0.85 durations
    assert all(r["elapsed"] > 3 * data["expected_duration"] for r in data["slow"])


def test_status_watch_refreshes_until_ctrl_c(db):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "status", "--storage", db, "--study", "live",
         "--watch", "--interval", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    def shown(what) -> Callable[[], bool]:
        def check() -> bool:
            assert proc.poll() is None, "".join(lines)  # still refreshing
            return what()
        return check

    try:
        wait_until(shown(lambda: sum(line.startswith("--- ") for line in lines) >= 2), 120,
                   lambda: "two refreshes: " + "".join(lines), interval=0.2)
        # a trial ends meanwhile: a later refresh shows it
        study = optuna.load_study(study_name="live", storage=db)
        running = [t for t in study.trials if t.state == TrialState.RUNNING][0]
        study.tell(running.number, 0.5)
        wait_until(shown(lambda: any("3 running, 13 complete" in line for line in lines)), 120,
                   lambda: "a refresh that shows the ended trial: " + "".join(lines),
                   interval=0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    assert "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize("args, words", [
    (["--storage", "not-a-url"], "is not a URL"),
    (["--storage", "sqlite:////no/such/folder/x.db"], "does not exist"),
    (["--study", "nope"], "no study 'nope'"),
])
def test_status_bad_input_is_one_line_exit_2(cli, db, args, words):
    full = ["--storage", db, *args] if args[0] == "--study" else args
    proc = cli("status", *full)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_interval_must_be_positive(cli, db):
    proc = cli("status", "--storage", db, "--watch", "--interval", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
