"""Local transport: one OS pipe per worker process on this machine.

Pipes are the cheapest way to move a message between two processes (tens of microseconds),
and they tell the coordinator at once when a worker dies: its end of the pipe closes.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

from tunefleet.errors import CoordinatorGone
from tunefleet.transport._base import Channel, Link, Listener

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class PipeLink(Link):
    """The coordinator's end of one worker's pipe, with a way to ask why the worker died."""

    def __init__(self, conn: Connection, name: str, exit_reason: Callable[[], str]) -> None:
        self.conn = conn
        self._fd = conn.fileno()
        self.name = name
        self._exit_reason = exit_reason
        self.closed = False

    def send(self, msg: tuple) -> None:
        if self.closed:
            return
        try:
            self.conn.send_bytes(pickle.dumps(msg, _PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the loss shows up as EOF in poll()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close()

    def exit_reason(self) -> str:
        return self._exit_reason()

    def fileno(self) -> int:
        return self._fd


class PipeListener(Listener):
    """Waits on the pipes of all local workers at once."""

    def __init__(self) -> None:
        self._links: dict[int, PipeLink] = {}
        self._sel = selectors.DefaultSelector()  # kept: building one per poll is measurable

    def add(self, link: PipeLink) -> None:
        self._links[link.fileno()] = link
        self._sel.register(link.fileno(), selectors.EVENT_READ, link)

    def links(self) -> list[Link]:
        return list(self._links.values())

    def poll(self, timeout: float | None) -> list[tuple[Link, Optional[tuple]]]:
        if not self._links:
            if timeout:
                time.sleep(timeout)
            return []
        out: list[tuple[Link, Optional[tuple]]] = []
        for key, _ in self._sel.select(timeout):
            link: PipeLink = key.data
            conn = link.conn
            try:
                while True:
                    out.append((link, pickle.loads(conn.recv_bytes())))
                    if not conn.poll():
                        break
            except (EOFError, OSError):
                self._forget(link)
                out.append((link, None))
        return out

    def drop(self, link: Link) -> None:
        self._forget(link)  # type: ignore[arg-type]

    def _forget(self, link: PipeLink) -> None:
        fd = link.fileno()
        if self._links.pop(fd, None) is not None:
            self._sel.unregister(fd)
        link.close()

    def close(self) -> None:
        for link in list(self._links.values()):
            self._forget(link)
        self._sel.close()


class PipeChannel(Channel):
    """A worker's end of its pipe. The coordinator is its parent process: if the parent goes
    away the worker is told by the kernel (parent-death signal) or notices a new parent."""

    def __init__(self, conn: Connection, parent_pid: int) -> None:
        self.conn = conn
        self.parent_pid = parent_pid
        _die_with_parent()

    def send(self, msg: tuple) -> None:
        try:
            self.conn.send_bytes(pickle.dumps(msg, _PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise CoordinatorGone(f"coordinator gone: {exc}") from None

    def recv(self) -> Any:
        while True:
            try:
                if self.conn.poll(1.0):
                    return pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError) as exc:
                raise CoordinatorGone(f"coordinator gone: {exc or 'pipe closed'}") from None
            if os.getppid() != self.parent_pid:
                raise CoordinatorGone("coordinator process exited")

    def close(self) -> None:
        self.conn.close()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the coordinator dies, even mid-trial."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass  # not Linux: the worker still notices at its next message
