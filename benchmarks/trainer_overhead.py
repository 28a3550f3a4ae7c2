"""What the trainer's extras cost per trial, and the digits example end to end.

    python benchmarks/trainer_overhead.py          # about two minutes on 2 cores

Per trial, in one process (after a warm-up run): one digits trial (3 epochs) bare, with the
log hook (log.txt + 2 plots in PNG and PDF), with a W&B offline run, with an MLflow run in a
SQLite store. Then ``examples/digits/tune.py`` (8 trials, 3 epochs, 2 workers, both trackers)
as a subprocess, wall time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "digits"))
optuna.logging.set_verbosity(optuna.logging.WARNING)


def per_trial(label: str, tuner, repeats: int = 3) -> None:
    times = []
    for _ in range(repeats):
        study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
        study.enqueue_trial({"lr": 3e-3, "hidden": 64})
        start = time.perf_counter()
        study.optimize(tuner.objective, n_trials=1)
        times.append(time.perf_counter() - start)
    print(f"{label:<28} {statistics.median(times):6.2f} s per trial (median of {repeats})")


def main() -> None:
    from tune import DigitsTuner

    from tunefleet.tracking import MlflowTracker, WandbTracker

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")

        def tuner(trackers=(), log=True):
            t = DigitsTuner("bench", "valid_acc", storage=":memory:", trackers=list(trackers),
                            verbose=False)
            t.epochs = 3
            if not log:
                build = t.load_items

                def no_log(**cfg):
                    trainer = build(**cfg)
                    trainer.hooks.remove(trainer.log_hook)
                    trainer.log_hook = None
                    return trainer

                t.load_items = no_log
            return t

        per_trial("warm-up", tuner(log=False), repeats=1)
        per_trial("bare training", tuner(log=False))
        per_trial("+ log hook (plots)", tuner())
        per_trial("+ W&B offline", tuner([WandbTracker()], log=False))
        mlflow = MlflowTracker(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        mlflow.prepare("bench")
        per_trial("+ MLflow (SQLite)", tuner([mlflow], log=False))

        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/example.db"}
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "examples" / "digits" / "tune.py")], cwd=tmp,
                       env=env, check=True, capture_output=True)
        print(f"{'digits example (8 trials)':<28} {time.perf_counter() - start:6.2f} s wall")


if __name__ == "__main__":
    main()
