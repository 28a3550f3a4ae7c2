"""Worker liveness: a worker that has said nothing for a while says BEAT, so the coordinator
can tell a long trial from a worker that is stopped (SIGSTOP), hung or cut off by the network,
and fail and retry the trial of a silent one after ``worker_timeout``."""

from __future__ import annotations

import threading
import time
from typing import Any

from tunefleet.errors import CoordinatorGone
from tunefleet.hub import _protocol as P

#: Seconds of silence after which a worker beats; the coordinator's worker_timeout must be a
#: few of these.
BEAT_INTERVAL = 1.0


class BeatingChannel:
    """A worker's channel whose sends are serialized, with a daemon thread that sends
    ``(BEAT,)`` when nothing was sent for ``interval`` seconds (no cost while trials are short:
    the thread only wakes up, sees a recent send and sleeps again)."""

    def __init__(self, channel: Any, interval: float = BEAT_INTERVAL) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tunefleet-beat", daemon=True)
        self._thread.start()

    def send(self, msg: tuple) -> None:
        with self._lock:
            self._channel.send(msg)
            self._last = time.monotonic()

    def recv(self) -> Any:
        return self._channel.recv()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._channel.close()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval / 2):
            if time.monotonic() - self._last >= self._interval:
                try:
                    self.send(P.encode(P.Beat()))
                except (CoordinatorGone, OSError, ValueError):
                    return  # the main thread finds out on its own next send or receive
