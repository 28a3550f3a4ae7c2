"""How hub messages move between the coordinator and its workers.

One interface (``Link`` and ``Listener`` on the coordinator's side, ``Channel`` on a worker's),
several implementations: OS pipes to processes this machine started (``PipeListener``) and
authenticated TCP for workers anywhere (``TcpListener``). The coordinator and the worker
loop only see the interface, so the same wire protocol serves both. The shared key and the
``tcp://HOST:PORT`` addresses of hub TCP and P2P are read and checked by one module
(``load_key``, ``read_key``, ``split_address``, ...), which imports no network library. The
TCP transport is imported on first use, so that a run with local processes never imports it.
"""

from __future__ import annotations

import importlib
from typing import Any

from tunefleet.transport._base import Channel, Link, Listener
from tunefleet.transport._local import PipeChannel, PipeLink, PipeListener
from tunefleet.transport._security import (HUB_KEY_ENV, LOOPBACK_HOSTS, P2P_KEY_ENV, Address,
                                          is_loopback, load_key, parse_address, read_key,
                                          split_address)

_LAZY = {
    "TcpListener": "tunefleet.transport._tcp",
    "TcpChannel": "tunefleet.transport._tcp",
}

__all__ = ["Channel", "Link", "Listener", "PipeChannel", "PipeLink", "PipeListener",
           "Address", "HUB_KEY_ENV", "LOOPBACK_HOSTS", "P2P_KEY_ENV", "is_loopback", "load_key",
           "parse_address", "read_key", "split_address", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tunefleet.transport' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
