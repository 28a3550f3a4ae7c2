"""Hub mode: one coordinator owns the study, workers run the objective through a proxy trial.

The map (docs/architecture.md has it whole): ``_protocol`` the messages; ``_run`` checks the
options and runs ``_coordinator``, the event loop, which draws values through ``_drawing``,
handles stop signals in ``_signals``, owns the study through ``_ownership`` and writes it
through ``_mirror``; ``_fleet`` is what it needs from whoever starts workers (the backends of
``tunefleet.backends`` implement it). On the other side ``_worker`` runs the objective on a
``_proxy`` trial, ``_beat`` tells the coordinator it is alive, ``_remote`` joins over TCP.

Names are imported on first use, so that a worker process does not import the coordinator.
"""

from __future__ import annotations

import importlib
from typing import Any

from tunefleet.hub._fleet import Fleet

_EXPORTS = {
    "run_hub": "tunefleet.hub._run",
    "last_run_end": "tunefleet.hub._run",
    "was_stopped": "tunefleet.hub._run",
    "RunEnd": "tunefleet.hub._run",
    "Coordinator": "tunefleet.hub._coordinator",
    "Limits": "tunefleet.hub._coordinator",
    "mirrored_study": "tunefleet.hub._mirror",
    "worker_data": "tunefleet.hub._worker",
    "set_worker_data": "tunefleet.hub._worker",
    "serve": "tunefleet.hub._worker",
    "limit_threads": "tunefleet.hub._worker",
    "forget_parent_pools": "tunefleet.hub._worker",
    "THREAD_VARS": "tunefleet.hub._worker",
    "GcAfterTrial": "tunefleet.hub._worker",
    "parse_size": "tunefleet.hub._worker",
    "WorkerConfig": "tunefleet.hub._worker",
    "run_engine_worker": "tunefleet.hub._remote",
}

__all__ = ["Fleet", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tunefleet.hub' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
