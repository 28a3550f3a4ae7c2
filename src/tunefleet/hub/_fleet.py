"""What the coordinator needs from whoever starts its workers.

The coordinator knows no engine: it is handed a ``Fleet`` (a backend of
:mod:`tunefleet.backends`, or any object that implements this) and talks to it through these
calls only. Engine events reach the coordinator here too: a worker that said hello
(``on_hello``), one that is gone (``on_lost``), and a fleet that cannot start workers at all
(``failure``), so no backend makes up protocol messages; a worker that fell silent is ended
through ``kill``. The arrow points one way:
``backends`` implements this interface, ``hub`` never imports ``backends``.
"""

from __future__ import annotations

import abc
import os

from tunefleet.transport import Link, Listener


class Fleet(abc.ABC):
    """Starts hub workers somewhere and keeps ``n_workers`` of them alive."""

    #: Where the workers' messages arrive.
    listener: Listener

    #: True when the fleet starts its own workers; False when workers join by themselves
    #: (by hand with ``tunefleet worker --connect``), so the coordinator waits for them.
    starts_workers: bool = True

    @abc.abstractmethod
    def start(self, n_workers: int) -> None:
        """Start ``n_workers`` workers; they connect through ``listener``."""

    def on_hello(self, link: Link) -> None:
        """The worker behind ``link`` said hello (``link.name`` is its label)."""

    def on_lost(self, link: Link) -> None:
        """The worker behind ``link`` is gone (called before ``replace``)."""

    def kill(self, link: Link) -> None:
        """End the worker behind ``link`` at once, without waiting for it: it stopped
        answering (SIGSTOP, a hang, a host cut off). The listener reports nothing more from
        ``link``; the coordinator counts the worker lost itself (``on_lost``, then
        ``replace``). Default: drop the connection (a worker that wakes up finds it closed)."""
        self.listener.drop(link)

    def replace(self, link: Link) -> None:
        """Start a worker in place of the one behind ``link``, which is gone."""

    def failure(self) -> str | None:
        """Why workers cannot start here, once the fleet has given up on them (engine tasks
        that keep failing before their worker says hello); None while all is well. Polled by
        the coordinator's loop, which then stops the study with ``WorkerStartError``."""
        return None

    @abc.abstractmethod
    def shutdown(self, grace: float = 2.0) -> None:
        """Make sure every worker has exited: wait ``grace`` seconds, then kill."""

    def default_workers(self) -> int:
        """How many workers a run gets when the user names no number."""
        return os.cpu_count() or 1
