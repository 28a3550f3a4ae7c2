"""The trial hook: reports a validation metric to an Optuna trial and prunes on its advice."""

from __future__ import annotations

from typing import Any

import optuna

from tunefleet.errors import UsageError
from tunefleet.trainer._hooks import HookBase


class TrialHook(HookBase):
    """After every validation, reports ``metric`` (or the mean of its last ``report_last_n``
    values, which smooths a noisy metric) at step ``current_iter``; raises ``TrialPruned``
    when ``allow_prune`` and the study's pruner says so. ``value`` is the last value reported,
    which is what the objective returns.

    A run resumed from a checkpoint reports again, to the trial that continues, what was
    reported before the checkpoint, so that its intermediate values (and the pruner) see the
    whole curve."""

    priority = 90  # last: a prune must not keep the other hooks from seeing this validation

    def __init__(self, trial: Any, metric: str = "valid_acc", report_last_n: int = 1,
                 allow_prune: bool = True) -> None:
        if report_last_n < 1:
            raise UsageError(f"report_last_n must be at least 1, not {report_last_n}")
        self.trial = trial
        self.metric = metric
        self.report_last_n = report_last_n
        self.allow_prune = allow_prune
        self.value: float | None = None
        self.reported: dict[int, float] = {}
        self._restored: dict[int, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"reported": dict(self.reported), "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = dict(state["reported"])
        self.value = state["value"]

    def before_train(self) -> None:
        for step, value in sorted(self._restored.items()):
            self.trial.report(value, step)
        self.reported.update(self._restored)
        self._restored = {}

    def after_valid(self) -> None:
        history = self.trainer.history
        if self.metric not in history:
            have = ", ".join(history.names("valid")) or "nothing"
            raise UsageError(f"metric {self.metric!r} is not in valid_out (valid() recorded "
                             f"{have}); valid_out['acc'] is reported as 'valid_acc'")
        recent = history.values(self.metric)[-self.report_last_n:]
        self.value = sum(recent) / len(recent)
        step = self.trainer.current_iter
        self.trial.report(self.value, step)
        self.reported[step] = self.value
        if self.allow_prune and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at iteration {step} with {self.metric}={self.value:.6g}")

    def final_value(self) -> float:
        """The value the objective returns; an error when the run never validated."""
        if self.value is None:
            raise UsageError(f"no validation ran, so there is no {self.metric!r} to return: "
                             "check valid_freq against the number of iterations")
        return self.value
