"""SIGINT and SIGTERM in the coordinator: the first stops new trials and starts the grace
period of the running ones, a second ends the grace period at once. The handler only sets
flags; the coordinator's loop does the work."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable


class StopSignals:
    """The coordinator's view of the stop signals received during one run."""

    def __init__(self, grace: float, on_first: Callable[[int], None]) -> None:
        self.grace = grace
        self.signum: int | None = None  # the first SIGINT / SIGTERM received
        self.stop_at: float | None = None  # end of the grace period for running trials
        self._on_first = on_first
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """SIGINT always, SIGTERM unless the program set its own handler; main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if signum == signal.SIGTERM and current not in (signal.SIG_DFL, None):
                continue
            self._previous[signum] = current
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def grace_over(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            self.stop_at = time.monotonic() + self.grace
            self._on_first(signum)
        else:
            self.stop_at = time.monotonic()
