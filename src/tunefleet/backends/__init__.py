"""How hub workers are started: local processes, or an engine (Dask, Ray, Spark) that only
starts and keeps workers alive while trials flow over the hub's own channel."""

from __future__ import annotations

import importlib
from typing import Any

from tunefleet.backends._base import Backend
from tunefleet.errors import UsageError

__all__ = ["Backend", "BACKENDS", "make_backend"]

#: backend name -> "module:factory"; each engine module is imported only when asked for.
BACKENDS = {
    "processes": "tunefleet.backends._processes:ProcessBackend",
    "tcp": "tunefleet.backends._tcp:ManualBackend",
    "dask": "tunefleet.backends._dask:DaskBackend",
    "ray": "tunefleet.backends._ray:RayBackend",
    "spark": "tunefleet.backends._spark:SparkBackend",
    "joblib": "tunefleet.backends._joblib:JoblibBackend",
}


def make_backend(name: str, **options: Any) -> Backend:
    """Build the backend called ``name`` with its options (``gpus``, ``client``, ...)."""
    path = BACKENDS.get(name)
    if path is None:
        raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("tunefleet"):
            raise UsageError(f"backend {name!r} is not available in this version") from None
        raise UsageError(f"backend {name!r} needs {exc.name!r}: "
                         f"pip install 'tunefleet[{name}]'") from None
    return getattr(module, attr)(**options)
