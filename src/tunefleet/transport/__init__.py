"""How hub messages move between the coordinator and its workers.

One interface (``Link`` and ``Listener`` on the coordinator's side, ``Channel`` on a worker's),
several implementations: OS pipes to processes this machine started (``PipeListener``) and
authenticated ZeroMQ for workers anywhere (``TcpListener``). The coordinator and the worker
loop only see the interface, so the same wire protocol serves both. The TCP names are imported
on first use, so that a run with local processes never imports ZeroMQ.
"""

from __future__ import annotations

import importlib
from typing import Any

from tunefleet.transport._base import Channel, Link, Listener
from tunefleet.transport._local import PipeChannel, PipeLink, PipeListener

_LAZY = {
    "TcpListener": "tunefleet.transport._tcp",
    "TcpChannel": "tunefleet.transport._tcp",
    "load_key": "tunefleet.transport._tcp",
    "parse_address": "tunefleet.transport._tcp",
}

__all__ = ["Channel", "Link", "Listener", "PipeChannel", "PipeLink", "PipeListener", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tunefleet.transport' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
