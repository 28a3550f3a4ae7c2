"""One owner, one message: two ``tunefleet run`` on one study, whatever their timing, on a new
or an existing file: one runs, the other exits 2 with one line naming the owner."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(900)


OBJECTIVE = Path(__file__).resolve().parent / "durable_objectives.py"


def _start(storage: str, cwd: Path, gate: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tunefleet", "run", f"{OBJECTIVE}:gated", "--storage", storage,
         "--study", "one", "--workers", "2", "--n-trials", "4", "--sampler", "random"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_GATE": str(gate)})


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_runs_on_one_study_one_runs_the_other_says_who_owns_it(tmp_path, kind):
    rng = random.Random(7)
    for i in range(10):
        folder = tmp_path / str(i)
        folder.mkdir()
        gate = folder / "gate"
        new = i % 2 == 0  # a new file, or one that already holds the study
        storage = (f"sqlite:///{folder / 's.db'}" if kind == "sqlite" else str(folder / "s.log"))
        if not new:
            optuna.create_study(study_name="one", storage=(
                storage if kind == "sqlite" else optuna.storages.JournalStorage(
                    optuna.storages.journal.JournalFileBackend(storage))))
        first = _start(storage, folder, gate)
        time.sleep(rng.uniform(0.0, 0.5))  # the delay between the two starts is the test
        second = _start(storage, folder, gate)
        procs = (first, second)
        wait_until(lambda: any(p.poll() is not None for p in procs), 240,
                   "one of the two runs to be refused")
        gate.touch()  # the owner's trials may end now
        results = [(p.returncode if p.poll() is not None else None, p.communicate(timeout=240))
                   for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], (i, results)
        refused = next(err for p, (_, (out, err)) in zip(procs, results) if p.returncode == 2)
        lines = [line for line in refused.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and "is being run by the coordinator with pid" in lines[0], (
            i, refused)
        assert "Traceback" not in refused
