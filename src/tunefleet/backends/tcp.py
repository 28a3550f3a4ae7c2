"""Workers that reach the coordinator over TCP: by hand (``tunefleet worker --connect``), or
started by an engine (Dask, Ray, Spark) whose backends build on ``TcpBackend``."""

from __future__ import annotations

import logging
import secrets
from typing import Any, Sequence

from tunefleet.backends._base import Backend
from tunefleet.transport.tcp import TcpListener, load_key, parse_address

_logger = logging.getLogger("tunefleet")


class TcpBackend(Backend):
    """Owns the authenticated TCP listener; engines subclass it to start workers that connect.

    Args:
        listen: where the coordinator listens (loopback and a free port by default).
        advertise: the address workers connect to, when it differs from ``listen`` (a
            coordinator listening on ``tcp://0.0.0.0:5555`` is reached as ``tcp://myhost:5555``).
        key: the shared secret; a fresh random one is made when not given (engine-started
            workers receive it with their task).
    """

    def __init__(self, listen: str = "tcp://127.0.0.1:0", advertise: str | None = None,
                 key: bytes | None = None, gpus: Sequence[int | str] | None = None,
                 max_message: int | None = None) -> None:
        self.key = key or secrets.token_hex(32).encode()
        kwargs = {"max_message": max_message} if max_message else {}
        self.listener = TcpListener(listen, self.key, **kwargs)
        if advertise:
            parse_address(advertise)
            self.address = advertise
        else:
            host, port = parse_address(self.listener.address)
            self.address = f"tcp://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        self.gpus = list(gpus) if gpus else None

    def shutdown(self, grace: float = 2.0) -> None:
        self.listener.close()


class ManualBackend(TcpBackend):
    """Starts no worker: workers join by hand, at any time, and may leave (elastic). Those
    workers must hold the key, so it is never made up here: ``key=`` or ``$TUNEFLEET_KEY``."""

    starts_workers = False

    def __init__(self, listen: str = "tcp://127.0.0.1:5555", advertise: str | None = None,
                 key: bytes | None = None, **options: Any) -> None:
        super().__init__(listen, advertise, key or load_key(None), **options)

    def start(self, n_workers: int) -> None:
        _logger.warning(f"tunefleet: waiting for workers on {self.listener.address}")
