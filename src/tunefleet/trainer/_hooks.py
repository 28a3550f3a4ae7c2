"""Hooks: code that runs around the trainer's loop without the trainer knowing about it.

Hooks run in ``priority`` order (lower first). The log hook comes first so that a validation
line is written before the trial hook may stop the run by raising ``TrialPruned``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunefleet.trainer._base import Trainer

HOOK_POINTS = ("before_train", "before_iter", "after_valid", "after_iter", "after_train")


class HookBase:
    """Override any of the five calls; ``self.trainer`` is set when the hook is registered."""

    priority = 50
    trainer: "Trainer"

    def before_train(self) -> None:
        """Once, before the first iteration."""

    def before_iter(self) -> None:
        """Before each training iteration (``trainer.current_iter`` is already set)."""

    def after_valid(self) -> None:
        """After each validation; ``trainer.valid_out`` holds its metrics."""

    def after_iter(self) -> None:
        """After each training iteration (and its validation, if there was one)."""

    def after_train(self) -> None:
        """Once, at the end, also when the run stops early; ``trainer.outcome`` says how."""


class TrackingHook(HookBase):
    """Sends the metrics of each iteration to the trial's tracker runs (W&B, MLflow), one call
    per iteration; the last one also when the run stops in the middle (a prune)."""

    priority = 20

    def __init__(self) -> None:
        self.logged_step = -1

    def after_iter(self) -> None:
        self._send()

    def after_train(self) -> None:
        self._send()

    def _send(self) -> None:
        from tunefleet.tracking import log

        step = self.trainer.current_iter
        metrics = self.trainer.history.at(step)
        if metrics and step != self.logged_step:
            log(metrics, step=step)
            self.logged_step = step
