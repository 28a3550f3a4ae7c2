"""Hooks: code that runs around the trainer's loop without the trainer knowing about it.

Hooks run in ``priority`` order (lower first). The log hook comes first so that a validation
line is written before the trial hook may stop the run by raising ``TrialPruned``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunefleet.trainer._base import Trainer

HOOK_POINTS = ("before_train", "before_epoch", "before_iter", "after_valid", "after_iter",
               "after_epoch", "after_train")


class HookBase:
    """Override any of the calls in ``HOOK_POINTS``; ``self.trainer`` is set when the hook is
    registered. A hook whose own state must survive a checkpoint (``CheckpointHook``) returns
    it from ``state_dict`` and takes it back in ``load_state_dict``, before ``before_train``."""

    priority = 50
    trainer: "Trainer"

    def before_train(self) -> None:
        """Once, before the first iteration."""

    def before_epoch(self) -> None:
        """At the start of each epoch (``trainer.current_epoch`` is already set)."""

    def before_iter(self) -> None:
        """Before each training iteration (``trainer.current_iter`` is already set)."""

    def after_valid(self) -> None:
        """After each validation; ``trainer.valid_out`` holds its metrics."""

    def after_iter(self) -> None:
        """After each training iteration (and its validation, if there was one)."""

    def after_epoch(self) -> None:
        """At the end of each epoch, after its last iteration's ``after_iter``."""

    def after_train(self) -> None:
        """Once, at the end, also when the run stops early; ``trainer.outcome`` says how."""

    def state_dict(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of this hook; None: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave (a resumed run)."""


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
