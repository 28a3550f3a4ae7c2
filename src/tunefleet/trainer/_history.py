"""Metric history of one training run, shared by the log hook, the trial hook and trackers."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

PREFIXES = {"train": "train_", "valid": "valid_"}


def to_float(value: Any) -> float | None:
    """A scalar (float, int, 0-d or 1-element tensor, numpy scalar) as float; None otherwise."""
    if isinstance(value, bool):
        return float(value)
    try:
        if hasattr(value, "numel") and value.numel() != 1:
            return None
        return float(value.detach() if hasattr(value, "detach") else value)
    except (TypeError, ValueError, RuntimeError):
        return None


class MetricHistory:
    """``name -> [(iteration, value), ...]``. Metric names carry their kind as a prefix:
    ``train_out["loss"]`` is ``train_loss``, ``valid_out["acc"]`` is ``valid_acc``."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[int, float]]] = {}

    def record(self, kind: str, out: Mapping[str, Any], step: int) -> None:
        prefix = PREFIXES[kind]
        for key, raw in out.items():
            value = to_float(raw)
            if value is None:
                continue
            name = key if key.startswith(prefix) else prefix + key
            self.series.setdefault(name, []).append((step, value))

    def names(self, kind: str | None = None) -> list[str]:
        if kind is None:
            return list(self.series)
        return [n for n in self.series if n.startswith(PREFIXES[kind])]

    def values(self, name: str) -> list[float]:
        return [v for _, v in self.series.get(name, [])]

    def at(self, step: int) -> dict[str, float]:
        """Every metric recorded at iteration ``step``."""
        return {n: pts[-1][1] for n, pts in self.series.items() if pts and pts[-1][0] == step}

    def state_dict(self) -> dict[str, list[tuple[int, float]]]:
        """Every series, for a checkpoint."""
        return {name: list(pts) for name, pts in self.series.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history with one from :meth:`state_dict` (a resumed run)."""
        self.series = {name: [(int(s), float(v)) for s, v in pts] for name, pts in state.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.series)

    def __contains__(self, name: object) -> bool:
        return name in self.series
