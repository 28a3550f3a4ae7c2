"""One process at a time for a short step on a file (creating a SQLite file's tables, claiming
a study): an advisory ``flock`` that the kernel drops when its holder dies, so a SIGKILLed
holder never blocks the next one. It does not touch SQLite's own locks (POSIX record locks),
which are independent of ``flock`` on Linux."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator

from tunefleet.errors import UsageError


@contextlib.contextmanager
def file_mutex(path: str, what: str, timeout: float = 120.0) -> Iterator[None]:
    """Hold the advisory lock of ``path`` (created if missing) for the block; ``what`` names
    the step in the error raised when another process holds it for over ``timeout`` s."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(f"{what}: another process has held {path} for over "
                                     f"{timeout:g} s") from None
                time.sleep(0.05)  # a lock's holder releases it by itself: poll until then
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
