"""SIGTERM to a hub worker is a preemption, not a crash: what Slurm sends at the walltime or on
``scancel``, and spot VMs and Kubernetes before they take a node.

The running trial gets the grace period to reach the end of its next ``checkpoint.save``
(``tunefleet.checkpoint.Preempted`` is raised there); when the grace period ends first, the
trial is interrupted (SIGALRM raises ``Preempted`` in the objective). Either way the worker
hands the trial back, to continue elsewhere from its last checkpoint, and exits. A process the
objective forked inherits the handler: there SIGTERM keeps its default meaning, so that
``Pool.terminate()`` still ends the pool's processes.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from tunefleet.checkpoint import Preempted, request_stop, stop_requested

_state: dict[str, Any] = {"pid": None, "grace": 5.0, "in_trial": False}


def install(grace: float) -> None:
    """Handle SIGTERM (and the grace period's SIGALRM) in this worker; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.update(pid=os.getpid(), grace=grace)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGALRM, _on_alarm)


def in_trial(running: bool) -> None:
    """The objective starts (True) or has returned (False)."""
    _state["in_trial"] = running


def _on_sigterm(signum: int, frame: Any) -> None:
    if os.getpid() != _state["pid"]:  # a process the objective forked: die as it expects
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if stop_requested():
        return
    request_stop(_state["grace"])
    if _state["in_trial"]:
        signal.setitimer(signal.ITIMER_REAL, max(_state["grace"], 0.001))


def _on_alarm(signum: int, frame: Any) -> None:
    if os.getpid() == _state["pid"] and _state["in_trial"] and stop_requested():
        raise Preempted("the grace period ended before the next checkpoint.save")
