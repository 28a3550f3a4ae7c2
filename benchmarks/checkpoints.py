"""What checkpoints save when workers die, and how fast they travel (issue 19).

    .venv/bin/python benchmarks/checkpoints.py               # both parts
    .venv/bin/python benchmarks/checkpoints.py --part kills  # the killed-workers run only
    .venv/bin/python benchmarks/checkpoints.py --part transfer --mib 1024

kills: hub mode, 3 local workers, 9 trials of 20 steps x 0.1 s, a random worker SIGKILLed
every 1.5 s (6 kills at most: the run may end first), once with a checkpoint after every step
and once without (each retry starts again from step 0). It prints the steps run (as the
objective recorded them; 180 is the work without kills), the kills made and the seconds.

transfer: ``tunefleet serve`` and a ``tunefleet worker --connect`` on loopback; the worker
saves a checkpoint of ``--mib`` MiB (streamed up to the coordinator), dies, and a second worker
loads it back (streamed down). It prints MB/s each way and the peak resident memory of the
coordinator and of each worker (tests/remote/test_checkpoints_tcp.py asserts < 200 MB).

The objectives are those of the tests (tests/hub/checkpoint_objectives.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna

from tests.hub import checkpoint_objectives as co
from tests.remote.conftest import Procs


def kills(every: float) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"hub, 3 workers, 9 trials x 20 steps x 0.1 s, a worker SIGKILLed every {every} s")
    print(f"{'checkpoints':<12} {'steps run':>9} {'x ideal':>8} {'kills':>6} {'failed':>7} "
          f"{'seconds':>8}")
    for save in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            study, killed, seconds = co.run_with_kills(Path(tmp), save=save, every=every)
            ran = len(co.recorded(Path(tmp) / "log"))
            failed = sum(t.state.name == "FAIL" for t in study.trials)
            complete = sum(t.state.name == "COMPLETE" for t in study.trials)
            assert complete == 9, complete
        print(f"{'yes' if save else 'no':<12} {ran:>9} {ran / 180:>8.2f} {len(killed):>6} "
              f"{failed:>7} {seconds:>8.1f}")


def transfer(mib: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log = folder / "log"
        log.mkdir()
        procs = Procs(folder)
        watch = co.RssWatch()
        watch.start()
        try:
            serve = procs.serve(f"{co.__file__}:big", 0, "--n-trials", "1")
            watch.pids["coordinator"] = serve.pid
            port = procs.port_of(serve)

            def worker(name: str):
                (folder / name).mkdir()
                env = {"TF_CK_LOG": str(log), "TF_CK_MIB": str(mib), "TMPDIR": str(folder / name)}
                proc = procs.tunefleet("worker", "--connect", f"tcp://127.0.0.1:{port}",
                                       "--key-file", "hub.key", env=env)
                watch.pids[f"worker {name}"] = proc.pid
                return proc

            first = worker("a")
            assert first.wait(600) == -signal.SIGKILL, first.communicate()[1][-2000:]
            shutil.rmtree(folder / "a")  # the dead worker's local copy: disk is short
            second = worker("b")
            _, err = serve.communicate(timeout=600)
            assert serve.returncode == 0, err[-2000:]
            second.wait(60)
        finally:
            watch.stopped.set()
            watch.join(10)
            procs.stop_all()
        sent = json.loads((log / "sent.json").read_text())
        received = json.loads((log / "received.json").read_text())
        assert sent["sha256"] == received["sha256"]
    mb = sent["size"] / 1e6
    print(f"checkpoint of {mib} MiB over loopback (4 MiB chunks, one round trip each)")
    print(f"  worker -> coordinator: {mb / sent['seconds']:8.0f} MB/s ({sent['seconds']:.1f} s)")
    print(f"  coordinator -> worker: {mb / received['seconds']:8.0f} MB/s "
          f"({received['seconds']:.1f} s)")
    for name, peak in sorted(watch.peak.items()):
        print(f"  peak RSS {name:<12} {peak / 1e6:6.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["kills", "transfer", "all"], default="all")
    parser.add_argument("--every", type=float, default=1.5, help="seconds between kills")
    parser.add_argument("--mib", type=int, default=1024, help="checkpoint size (MiB)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    if args.part in ("kills", "all"):
        started = time.monotonic()
        kills(args.every)
        print(f"({time.monotonic() - started:.0f} s)\n")
    if args.part in ("transfer", "all"):
        transfer(args.mib)


if __name__ == "__main__":
    main()
