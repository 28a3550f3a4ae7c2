"""The transport interface: the coordinator's side (``Listener`` of ``Link``s) and the worker's
side (``Channel``). Messages are Python tuples; a transport decides how they are framed and,
for the network, authenticated before anything is unpickled."""

from __future__ import annotations

import abc
from typing import Any, Optional


class Link(abc.ABC):
    """The coordinator's handle on one connected worker."""

    #: A short label for logs and the report, e.g. "host/1234".
    name: str = "?"

    @abc.abstractmethod
    def send(self, msg: tuple) -> None:
        """Send one message; a link whose worker is gone drops it silently (its loss is
        reported by ``Listener.poll``)."""

    def close(self) -> None:
        """Forget the worker (it has been told to stop or it is gone)."""

    def exit_reason(self) -> str:
        """Why the worker went away, as precisely as the transport knows."""
        return "connection lost"


class Listener(abc.ABC):
    """The coordinator's side: every worker's messages arrive through ``poll``."""

    @abc.abstractmethod
    def poll(self, timeout: float | None) -> list[tuple[Link, Optional[tuple]]]:
        """Wait up to ``timeout`` seconds and return ``(link, message)`` pairs; a message of
        ``None`` means the worker behind ``link`` is gone."""

    @abc.abstractmethod
    def links(self) -> list[Link]:
        """The workers connected now."""

    def drop(self, link: Link) -> None:
        """Forget the worker behind ``link`` and close its connection: nothing more from it is
        reported, not even its loss (the caller has counted it lost)."""
        link.close()

    def close(self) -> None:
        """Stop listening; called once when the study is over."""


class Channel(abc.ABC):
    """A worker's side of its connection to the coordinator."""

    @abc.abstractmethod
    def send(self, msg: tuple) -> None:
        """Send one message (raises ``CoordinatorGone`` when the coordinator is gone)."""

    @abc.abstractmethod
    def recv(self) -> Any:
        """Wait for the next message (raises ``CoordinatorGone`` when the coordinator is gone)."""

    def close(self) -> None:
        """Release the connection."""
