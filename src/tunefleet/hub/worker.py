"""The worker side of hub mode: ask for a trial, run the objective on a proxy trial, send the
result with the request for the next one. The same loop runs behind every transport."""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
import traceback
from typing import Any, Callable

import cloudpickle
import optuna

from tunefleet.errors import CoordinatorGone
from tunefleet.hub import protocol as P
from tunefleet.hub.proxy import ProxyTrial
from tunefleet.transport._base import Channel

_worker_data: Any = None


def worker_data() -> Any:
    """What the ``setup`` function given to ``optimize`` returned in this worker (once per
    worker, not per trial): a data set, a loaded model. ``None`` outside a worker."""
    return _worker_data


@dataclasses.dataclass
class WorkerConfig:
    """What a worker needs to run trials; shipped once per worker with cloudpickle, so
    closures, lambdas and objectives defined in ``__main__`` work."""

    objective: Callable[[optuna.Trial], Any]
    catch: tuple[type[BaseException], ...]
    n_objectives: int
    setup: Callable[[], Any] | None = None


def serve(channel: Channel, label: str | None = None) -> int:
    """Run trials for the coordinator behind ``channel`` until it says stop. Returns an exit
    code: 0 when the study is done or the coordinator is gone, 1 when the objective could not
    be loaded here."""
    global _worker_data
    try:
        channel.send((P.HELLO, {"pid": os.getpid(), "host": socket.gethostname(),
                                "label": label}))
        msg = channel.recv()
        if msg[0] == P.STOP:
            return 0
        try:
            config: WorkerConfig = cloudpickle.loads(msg[1])
            if config.setup is not None:
                _worker_data = config.setup()
        except Exception as exc:
            channel.send((P.FAILED, f"worker on {socket.gethostname()} (pid {os.getpid()}) "
                                    f"could not load the objective: {type(exc).__name__}: {exc}"))
            return 1
        return _trial_loop(channel, config)
    except CoordinatorGone:
        return 0
    finally:
        channel.close()


def _trial_loop(channel: Channel, config: WorkerConfig) -> int:
    def call(trial_id: int, ops: list, request: tuple) -> Any:
        channel.send((P.CALL, trial_id, ops, request))
        reply = channel.recv()
        if reply[0] != P.REPLY:
            raise CoordinatorGone(f"unexpected message {reply[0]!r} from the coordinator")
        if reply[1]:
            return reply[2]
        raise reply[2]

    def send_ops(trial_id: int, ops: list) -> None:
        channel.send((P.OPS, trial_id, ops))

    result = None
    space: dict = {}  # the search space known to the coordinator, sent when it changes
    while True:
        channel.send((P.NEXT, result))
        msg = channel.recv()
        if msg[0] != P.TRIAL:
            return 0
        _, trial_id, number, dt_start, fixed, presampled, new_space, user_attrs = msg
        if new_space is not None:
            space = new_space
        trial = ProxyTrial(call, send_ops, config.n_objectives, trial_id, number, dt_start,
                           fixed, presampled, space, user_attrs)
        result = run_objective(config, trial)


def run_objective(config: WorkerConfig, trial: ProxyTrial) -> tuple:
    """Run the objective once and describe the outcome as a protocol ``Result``."""
    try:
        value = config.objective(trial)
    except optuna.TrialPruned as exc:
        return (trial._trial_id, P.PRUNED, None, trial._take_ops(), (None, str(exc), None, True))
    except CoordinatorGone:
        raise
    except Exception as exc:
        error = (_picklable(exc), repr(exc), traceback.format_exc(), isinstance(exc, config.catch))
        return (trial._trial_id, P.FAIL, None, trial._take_ops(), error)
    return (trial._trial_id, P.COMPLETE, _plain_values(value), trial._take_ops(), None)


def _plain_values(value: Any) -> Any:
    """Floats travel as floats; anything else as itself if it pickles, or as text, so that
    the coordinator's ``tell`` fails the trial with Optuna's own message."""
    if isinstance(value, (list, tuple)):
        return [_plain_values(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        pickle.dumps(value)
        return value
    except Exception:
        return repr(value)


def _picklable(exc: BaseException) -> BaseException | None:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None
