"""PyTorch trainer with hooks, and a tuner that runs it on tunefleet workers.

Everything here is imported on first use (``from tunefleet.trainer import Trainer``), so that
``import tunefleet`` and the coordinator of a study never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": "tunefleet.trainer._base",
    "send_to_device": "tunefleet.trainer._base",
    "HookBase": "tunefleet.trainer._hooks",
    "TrackingHook": "tunefleet.trainer._hooks",
    "MetricHistory": "tunefleet.trainer._history",
    "LogHook": "tunefleet.trainer._log_hook",
    "TrialHook": "tunefleet.trainer._trial_hook",
    "CheckpointHook": "tunefleet.trainer._checkpoint_hook",
    "Tuner": "tunefleet.trainer._tuner",
    "direction_for": "tunefleet.trainer._tuner",
    "seed_everything": "tunefleet.trainer._seeding",
    "plot_metrics": "tunefleet.trainer._plots",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tunefleet.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
