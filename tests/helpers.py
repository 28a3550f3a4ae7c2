"""Small helpers every test folder shares: a free port, and waiting for a condition.

Tests synchronise on what they wait for (a file, a line of output, a trial's state), never on
a fixed ``time.sleep``: a loaded machine makes any fixed delay too short sooner or later.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A loopback port the kernel just handed out (bound to port 0, then closed).

    Another process may take it before the test's server binds it: where the server can bind
    port 0 itself and say which port it got (``tunefleet serve --listen tcp://127.0.0.1:0``),
    prefer that. This is for what must know its port before the server starts (workers
    started first, peers that name each other)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], T], timeout: float, what: str | Callable[[], str],
               interval: float = 0.1) -> T:
    """Poll CONDITION until it returns something true, and return that.

    After TIMEOUT seconds fail with an ``AssertionError`` naming WHAT (a string, or a
    function called then, e.g. to add a process's output). CONDITION may raise to fail at
    once (a process it waits on has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {said}")
        time.sleep(interval)
