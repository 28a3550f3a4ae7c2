"""How long ``tunefleet report`` takes on a 10,000-trial study (the issue asks for under 30 s).

Run: .venv/bin/python benchmarks/report_10k.py [--trials N] [--quick]

Builds a study of N trials (8 workers, 2% failed, 5% pruned, 8 running, 4 parameters of which
one categorical) as an Optuna journal file, then prints a table: the whole command as a user
runs it (process start and storage read included), and, in this process, the time of each
section and of writing the page. --quick uses 2,000 trials.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from tests.report.studies import journal_study  # noqa: E402
from tunefleet.report import _sections as S  # noqa: E402
from tunefleet.report._html import write_report  # noqa: E402
from tunefleet._studies import load_study  # noqa: E402


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="2,000 trials")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.trials
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        url, build = _timed(lambda: journal_study(
            os.path.join(tmp, "bench.log"), n, workers=8, fail_every=50, prune_every=20,
            running=8, duration=5.0))
        out = os.path.join(tmp, "report.html")
        proc, wall = _timed(lambda: subprocess.run(
            [sys.executable, "-m", "tunefleet", "report", "--storage", url, "--study", "demo",
             "-o", out], capture_output=True, text=True))
        if proc.returncode != 0:
            sys.exit(proc.stderr.strip())
        rows.append(("tunefleet report (whole command)", wall))
        study, load = _timed(lambda: load_study(url, "demo"))
        trials, read = _timed(lambda: study.get_trials(deepcopy=False))
        rows.append(("  load study + read trials", load + read))
        ctx = S.Context(study, trials)
        for key, _, build_section in S.BUILDERS:
            if key != "pareto":
                rows.append((f"  section {key}", _timed(lambda: build_section(ctx))[1]))
        info, total = _timed(lambda: write_report(study, os.path.join(tmp, "again.html")))
        rows.append(("  write_report in process", total))
        size = os.path.getsize(out)
    print(f"\n{n:,} trials (study built in {build:.1f} s), report {size / 1e6:.1f} MB\n")
    print(f"{'step':<36}{'seconds':>9}")
    for name, seconds in rows:
        print(f"{name:<36}{seconds:>9.2f}")
    print(f"\n{proc.stdout.strip()}")


if __name__ == "__main__":
    main()
