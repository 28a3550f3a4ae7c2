"""A full disk under the study's SQLite file ends ``tunefleet run`` with one line (issue 20): it
names the storage, says the disk is full and what to do, exit 1, no traceback; the same command
on a freed disk finishes the budget exactly, nothing left RUNNING.

Real: a 2 MB tmpfs mounted for the test (tests run as root), a real run that fills it."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest

from tests.conftest import run_cli
from tunefleet._unwritable import unwritable_cause

pytestmark = pytest.mark.timeout(240)

OBJECTIVE = '''
def objective(trial):
    trial.set_user_attr("blob", "y" * 20000)  # ~100 trials fill 2 MB
    return trial.suggest_float("x", 0, 1)
'''


def _states(url: str) -> Counter:
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name="tunefleet", storage=storage)
        return Counter(t.state.name for t in study.get_trials(deepcopy=False))
    finally:
        storage.engine.dispose()  # the disk is unmounted next: nothing may hold it open


def test_a_full_disk_is_one_line_and_the_rerun_finishes(tmp_path: Path):
    disk, bigger = tmp_path / "disk", tmp_path / "bigger"
    disk.mkdir()
    bigger.mkdir()
    (tmp_path / "obj.py").write_text(OBJECTIVE)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs: {mounted.stderr.strip()}"
    try:
        url = f"sqlite:///{disk / 's.db'}"
        full = run_cli("run", "obj.py:objective", "--storage", url, "--n-trials", "100000",
                       "--workers", "2", "--no-progress", cwd=tmp_path, timeout=180)
        lines = full.stderr.splitlines()
        assert full.returncode == 1, full.stderr
        assert "Traceback" not in full.stderr, full.stderr
        assert len(lines) == 1, full.stderr  # one line, and only one, says it
        assert "disk is full" in lines[0] and str(disk / "s.db") in lines[0], lines[0]
        assert "run the same command again" in lines[0], lines[0]
        held = _states(url)
        assert held["COMPLETE"] > 5, held  # the disk filled up during the run
        for f in disk.iterdir():  # the freed disk: the same files on a bigger one
            if f.is_file():
                shutil.copy(f, bigger / f.name)
    finally:
        gone = subprocess.run(["umount", str(disk)], capture_output=True, text=True)
        assert gone.returncode == 0, f"cannot unmount the tmpfs: {gone.stderr.strip()}"
    url = f"sqlite:///{bigger / 's.db'}"
    budget = held["COMPLETE"] + 5
    again = run_cli("run", "obj.py:objective", "--storage", url, "--n-trials", str(budget),
                    "--workers", "2", "--no-progress", cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr
    after = _states(url)
    assert after["COMPLETE"] == budget and after["RUNNING"] == 0, after


@pytest.mark.parametrize("exc, cause", [
    (OSError(28, "No space left on device"), "its disk is full"),
    (OSError(30, "Read-only file system"), "its file system is read-only"),
    (PermissionError(13, "Permission denied"), "permission denied"),
    (RuntimeError("(sqlite3.OperationalError) database or disk is full"), "its disk is full"),
    (RuntimeError("attempt to write a readonly database"), "permission denied"),
])
def test_the_causes_a_storage_cannot_be_written_for(exc, cause):
    wrapped = RuntimeError("the durable storage missed writes")
    wrapped.__cause__ = exc
    assert unwritable_cause(wrapped)[0] == cause
    assert unwritable_cause(RuntimeError("a bug")) is None
