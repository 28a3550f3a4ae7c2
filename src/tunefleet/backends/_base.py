"""The backend interface, in the spirit of joblib's parallel backends: a backend owns the
listener its workers talk through and knows how to start, replace and stop workers."""

from __future__ import annotations

import abc

from tunefleet.transport._base import Link, Listener


class Backend(abc.ABC):
    """Starts hub workers somewhere and keeps ``n_workers`` of them alive."""

    #: Where the workers' messages arrive.
    listener: Listener

    #: True when the backend starts its own workers; False when workers join by themselves
    #: (by hand with ``tunefleet worker --connect``), so the coordinator waits for them.
    starts_workers: bool = True

    @abc.abstractmethod
    def start(self, n_workers: int) -> None:
        """Start ``n_workers`` workers; they connect through ``listener``."""

    def replace(self, link: Link) -> None:
        """Start a worker in place of the one behind ``link``, which is gone."""

    def on_lost(self, link: Link) -> None:
        """The worker behind ``link`` is gone (called before ``replace``)."""

    @abc.abstractmethod
    def shutdown(self, grace: float = 2.0) -> None:
        """Make sure every worker has exited: wait ``grace`` seconds, then kill."""

    def default_workers(self) -> int:
        import os

        return os.cpu_count() or 1
