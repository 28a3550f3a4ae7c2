"""One GPU per worker: the environment a worker in a given slot starts with."""

from __future__ import annotations

from typing import Sequence


def worker_env(slot: int, gpus: Sequence[int | str] | None) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for worker ``slot``: the slot's GPU, round robin over ``gpus``;
    the objective then sees its GPU as device 0. No ``gpus``: the environment is unchanged."""
    env = {"TUNEFLEET_WORKER_SLOT": str(slot)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    return env
