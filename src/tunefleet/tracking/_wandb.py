"""Weights & Biases: one run per trial, grouped by study, opened in the worker that trains.

W&B's own environment variables keep their meaning (``WANDB_MODE=offline``, ``WANDB_DIR``,
``WANDB_PROJECT``, ``WANDB_ENTITY``), so the same script runs on a laptop without an account
and on a cluster that syncs.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from tunefleet.tracking._base import Tracker, TrackerRun


class WandbTracker(Tracker):
    """Each trial becomes a W&B run named ``<study>-trial-<n>`` in group ``<study>``; its config
    holds the trial's parameters and the fixed config, its history the trainer's metrics, its
    summary the final ``value`` and ``state``."""

    name = "wandb"

    def __init__(self, project: str | None = None, entity: str | None = None,
                 dir: str | None = None, mode: str | None = None, tags: list[str] | None = None,
                 **init_kwargs: Any) -> None:
        self.project = project  # else WANDB_PROJECT, else the study's name
        self.dir = dir  # else WANDB_DIR
        # The rest goes to wandb.init as given.
        self.init_kwargs = {"entity": entity, "mode": mode, "tags": tags, **init_kwargs}

    def open(self, study_name: str, trial_number: int, config: Mapping[str, Any]) -> TrackerRun:
        try:
            import wandb
        except ImportError:
            raise ImportError("wandb is not installed: pip install 'tunefleet[wandb]'") from None
        folder = self.dir or os.environ.get("WANDB_DIR")
        if folder:
            os.makedirs(folder, exist_ok=True)
        run = wandb.init(
            project=self.project or os.environ.get("WANDB_PROJECT") or study_name,
            group=study_name,
            job_type="trial",
            name=f"{study_name}-trial-{trial_number}",
            config={**config, "trial_number": trial_number, "study": study_name},
            dir=folder,
            reinit="create_new",  # several trials (threads) may share a worker process
            **{"settings": wandb.Settings(console="off", quiet=True), **self.init_kwargs},
        )
        return _WandbRun(run)


class _WandbRun(TrackerRun):
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, value: float | None, state: str, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)
        if value is not None:
            self.run.summary["value"] = value
        self.run.summary["state"] = state
        self.run.finish(exit_code=1 if state == "FAIL" else 0)
