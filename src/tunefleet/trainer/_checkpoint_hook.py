"""The checkpoint hook: a trial whose worker died continues its training where it was saved."""

from __future__ import annotations

from typing import Any

import torch

from tunefleet import checkpoint
from tunefleet.errors import UsageError
from tunefleet.trainer._hooks import HookBase

STATE_FILE = "trainer.pt"


class CheckpointHook(HookBase):
    """Every ``every`` epochs, saves the trainer's state (``Trainer.state_dict``: model,
    optimizer, scheduler, epoch, metric history, random states, hook states) through
    ``tunefleet.checkpoint.save(trial)``. A trial that continues another (its worker was killed,
    preempted or went silent) restores the latest one before its first epoch, so it goes on at
    the epoch after the saved one with its history whole and the random numbers it would have
    drawn. Outside tunefleet (plain ``study.optimize``) there is nowhere to continue from, and
    the hook neither saves nor restores."""

    priority = 0  # first: the other hooks' before_train see the restored state

    def __init__(self, trial: Any, every: int = 1) -> None:
        if every < 1:
            raise UsageError(f"every must be at least 1 epoch, not {every}")
        self.trial = trial
        self.every = every
        self.resumed_from: int | None = None  # the epoch of the checkpoint restored, if any

    def before_train(self) -> None:
        folder = checkpoint.load(self.trial)
        if folder is None:
            return
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
        self.trainer.load_state_dict(state)
        self.resumed_from = state["epoch"]

    def after_epoch(self) -> None:
        if (self.trainer.current_epoch + 1) % self.every or checkpoint.current(self.trial) is None:
            return
        with checkpoint.save(self.trial) as folder:
            torch.save(self.trainer.state_dict(), folder / STATE_FILE)
