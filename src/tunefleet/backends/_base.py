"""The backend interface, in the spirit of joblib's parallel backends: a backend is the hub's
``Fleet`` (it owns the listener its workers talk through and starts, replaces and stops
workers), chosen by name with ``make_backend``."""

from __future__ import annotations

from tunefleet.hub import Fleet


class Backend(Fleet):
    """A ``Fleet`` that ``make_backend`` builds by name (``"processes"``, ``"dask"``, ...):
    the interface is ``Fleet``'s, so the coordinator never needs to know this package."""
