"""``tunefleet report`` through the command line: a self-contained page, one-line errors, studies
left by real runs, and 10,000 trials."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tunefleet.report._sections import build_sections
from tests.conftest import EXAMPLES
from tests.report.studies import fill, journal_study, new_study


def _sections_of(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-section="(\w+)" data-kind="(\w+)"', page))


def assert_offline(page: str) -> None:
    """Every script is inline (plotly.js included once), nothing is loaded from a network."""
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert not re.search(r"""<link[^>]*href=["']?(https?:)?//""", page, re.I)
    assert page.count("* plotly.js v") == 1
    assert not re.search(r"""\bsrc=["']?(https?:)?//""", page, re.I)  # no remote image, frame


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report')}/small.db"
    fill(new_study(storage=url, name="small"), 15, workers=2, fail_every=5, running=1)
    return url


def test_report_writes_one_offline_page(cli, small_db, tmp_path):
    out = tmp_path / "r.html"
    proc = cli("report", "--storage", small_db, "--study", "small", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert re.match(rf"wrote {re.escape(str(out))}: 16 trials, 7 charts, 0 notes, ", proc.stdout)
    page = out.read_text(encoding="utf-8")
    assert_offline(page)
    assert _sections_of(page) == {"best": "table", **{k: "chart" for k in (
        "history", "importances", "parallel", "slice", "contour", "timeline", "utilisation")}}
    assert "Study small" in page and "workers seen: 2" in page


def test_report_study_may_be_left_out_when_the_storage_holds_one(cli, small_db, tmp_path):
    proc = cli("report", "--storage", small_db, "-o", str(tmp_path / "r.html"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r.html").stat().st_size > 1_000_000  # plotly.js is inside


@pytest.mark.parametrize("args, words", [
    (["--storage", "not-a-url"], "is not a URL"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot be opened"),
    (["--storage", "sqlite:////no/such/folder/x.db"], "does not exist"),
    (["--study", "nope"], "no study 'nope'"),
    (["--study", "small", "-o", "/no/such/folder/r.html"], "folder /no/such/folder does not exist"),
    (["--study", "small", "--objective", "2"], "objective 2 does not exist"),
])
def test_report_bad_input_is_one_line_exit_2(cli, small_db, tmp_path, args, words):
    full = args if args[0] == "--storage" else ["--storage", small_db, *args]
    if "-o" not in full:
        full += ["-o", str(tmp_path / "r.html")]
    proc = cli("report", *full, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("tunefleet: error: ") and proc.stderr.count("\n") == 1
    assert words in proc.stderr, proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_of_a_hub_run_shows_each_worker(cli, tmp_path):
    """A study left by ``tunefleet run`` (hub mode): the timeline has one row per worker."""
    url = f"sqlite:///{tmp_path}/hub.db"
    proc = cli("run", f"{EXAMPLES / 'quadratic.py'}:objective", "--n-trials", "12",
               "--workers", "2", "--storage", url, "--study", "q", cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr
    proc = cli("report", "--storage", url, "--study", "q", "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="q", storage=url)
    secs = {s.key: s for s in build_sections(study)}
    workers = {w for trace in secs["timeline"].figure.data for w in trace.y}
    assert len(workers) == 2 and "unknown worker" not in workers, workers
    assert sum(len(trace.y) for trace in secs["timeline"].figure.data) == 12
    assert [r[2] for r in secs["utilisation"].table.rows] and \
        sum(r[2] for r in secs["utilisation"].table.rows) == 12


def test_report_of_storage_mode_workers_shows_each_worker(cli, tmp_path):
    """Two ``tunefleet worker`` processes on one storage: their hosts and times are recorded."""
    url = f"sqlite:///{tmp_path}/sm.db"
    target = f"{EXAMPLES / 'quadratic.py'}:objective"
    assert cli("init", "--storage", url, "--study", "sm", cwd=tmp_path).returncode == 0
    procs = [subprocess.Popen([sys.executable, "-m", "tunefleet", "worker", target, "--storage",
                               url, "--study", "sm", "--n-trials", "10"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="sm", storage=url)
    secs = {s.key: s for s in build_sections(study)}
    rows = secs["utilisation"].table.rows
    assert all(r[1] for r in rows), rows  # the host is known
    assert "unknown worker" not in {r[0] for r in rows}
    assert sum(r[2] for r in rows) == len([t for t in study.trials if t.state.is_finished()])


def test_report_of_10000_trials(cli, tmp_path, artifacts):
    """The issue asks for under 30 s; the timing itself is in benchmarks/report_10k.py."""
    url = journal_study(str(tmp_path / "big.log"), 10_000, workers=8, fail_every=50,
                        prune_every=20, running=8, duration=5.0)
    out = tmp_path / "big.html"
    proc = cli("report", "--storage", url, "--study", "demo", "-o", str(out), timeout=280)
    assert proc.returncode == 0, proc.stderr
    assert "10008 trials, 7 charts, 0 notes" in proc.stdout
    page = out.read_text(encoding="utf-8")
    assert_offline(page)
    assert set(_sections_of(page).values()) == {"table", "chart"}
    assert page.count("completed trials (the best") == 4  # importances, parallel, slice, contour
    assert "could not be drawn" not in page
    shutil.copy(out, artifacts / "report-10k.html")
    assert Path(artifacts / "report-10k.html").stat().st_size < 50_000_000
