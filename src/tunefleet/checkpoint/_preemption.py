"""SIGTERM to a worker (hub or storage mode) is a preemption, not a crash (Slurm's walltime
signal, ``scancel``, a spot VM or Kubernetes taking the node).

The running trial gets ``grace`` seconds to reach the end of its next ``checkpoint.save``
(``tunefleet.checkpoint.Preempted`` is raised there); when the grace period ends first, SIGALRM
raises ``Preempted`` in the objective. The worker loop then hands the trial back (FAIL with the
reason, a retry that uses up none of ``--max-retries``) and leaves. A process the objective
forked inherits the handler: there SIGTERM keeps its default meaning, so that
``Pool.terminate()`` still ends the pool's processes. SIGINT is not handled here.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from tunefleet.checkpoint._session import Preempted, request_stop, stop_deadline, stop_requested

_state: dict[str, Any] = {"pid": None, "grace": 20.0, "in_trial": False}


def install_preemption(grace: float) -> None:
    """Handle SIGTERM (and the grace period's SIGALRM) in this worker; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.update(pid=os.getpid(), grace=grace)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGALRM, _on_alarm)


def in_trial(running: bool) -> None:
    """The objective starts (True) or has returned (False: the grace period's alarm, if any,
    is no longer needed)."""
    _state["in_trial"] = running
    if not running and stop_requested() and os.getpid() == _state["pid"]:
        signal.setitimer(signal.ITIMER_REAL, 0)


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
    if os.getpid() == _state["pid"] and _state["in_trial"] and stop_deadline() is not None:
        raise Preempted(f"the grace period ({_state['grace']:g}s) ended before the trial's "
                        "next checkpoint.save")
