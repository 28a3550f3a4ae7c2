"""How long ``tunefleet report`` takes on a 10,000-trial study (the issue asks for under 30 s).

Run: .venv/bin/python benchmarks/report_10k.py [N_TRIALS]
Prints the time to load the study from SQLite and write the report, and the file size.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from tests.report.studies import fill, new_study  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        study = new_study(storage=url)
        fill(study, n, workers=8, fail_every=50, prune_every=20, running=8, duration=5.0)
        out = os.path.join(tmp, "report.html")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tunefleet", "report", "--storage", url,
                               "--study", "demo", "-o", out], capture_output=True, text=True)
        wall = time.perf_counter() - started
        print(proc.stdout.strip() or proc.stderr.strip())
        print(f"{n} trials: tunefleet report took {wall:.1f} s wall (process start included), "
              f"{os.path.getsize(out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
