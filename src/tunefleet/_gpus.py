"""One GPU per worker: which GPUs a fleet may use, and the environment a worker in a given slot
starts with.

GPU ids given to tunefleet are indices into the GPUs this process can see: when a scheduler
(Slurm, a container runtime, a shell) already set ``CUDA_VISIBLE_DEVICES=5,6``, GPU 0 is the
physical GPU 5, as it is for CUDA itself inside the process. Without that variable, an index is
the physical id.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from tunefleet.errors import UsageError

GpuSpec = int | Sequence[int | str] | None


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The entries of the inherited ``CUDA_VISIBLE_DEVICES`` (ids or UUIDs), ``[]`` when it hides
    every GPU (empty or ``-1``), None when it is not set (every GPU of the machine)."""
    env = os.environ if env is None else env
    text = env.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    out = [g.strip() for g in text.split(",") if g.strip()]
    # CUDA stops at the first invalid entry; -1 is the usual way to hide all GPUs.
    for i, g in enumerate(out):
        if g.startswith("-"):
            return out[:i]
    return out


def resolve_gpus(gpus: GpuSpec, env: Mapping[str, str] | None = None) -> list[str] | None:
    """The device ids to hand out, one per worker, as ``CUDA_VISIBLE_DEVICES`` values.

    ``gpus`` is a count N (the first N visible GPUs) or a list of indices into the visible
    GPUs (see the module docstring). A count or an index beyond what is visible is an error,
    since a worker would otherwise run on a GPU its scheduler did not give it."""
    if gpus is None:
        return None
    visible = visible_gpus(env)
    if visible is None:
        shown = ""
    elif visible:
        shown = f"CUDA_VISIBLE_DEVICES={','.join(visible)} shows {len(visible)} GPU(s)"
    else:
        shown = "CUDA_VISIBLE_DEVICES hides every GPU"
    if isinstance(gpus, bool):
        raise UsageError(f"gpus={gpus!r}: give a count (gpus=2) or GPU indices (gpus=[0, 1])")
    if isinstance(gpus, int):
        if gpus < 1:
            raise UsageError(f"gpus={gpus}: a count of GPUs must be at least 1 "
                             "(to name GPU 0 alone, write --gpus 0, or gpus=[0])")
        if visible is None:
            return [str(i) for i in range(gpus)]
        if gpus > len(visible):
            raise UsageError(f"gpus={gpus}: more GPUs than visible ({shown})")
        return visible[:gpus]
    if isinstance(gpus, str):
        raise UsageError(f"gpus={gpus!r}: give a count or a list of indices, not a string "
                         "(the command line's --gpus 0,1 is parsed by parse_gpus)")
    out: list[str] = []
    for g in gpus:
        text = str(g).strip()
        if visible is None:
            out.append(text)
            continue
        if not text.isdigit():
            if text in visible:  # a UUID or an id already in the visible list
                out.append(text)
                continue
            raise UsageError(f"GPU {text!r} is not an index ({shown})")
        index = int(text)
        if index >= len(visible):
            raise UsageError(f"GPU index {index} is out of range: {shown}"
                             + (f", indices 0-{len(visible) - 1}" if visible else ""))
        out.append(visible[index])
    if not out:
        raise UsageError("gpus=[]: name at least one GPU, or leave gpus out")
    return out


def worker_env(slot: int, gpus: Sequence[int | str] | None) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for worker ``slot``: the slot's GPU, round robin over ``gpus``
    (already resolved, see ``resolve_gpus``); the objective then sees its GPU as device 0.
    No ``gpus``: the environment is unchanged."""
    env = {"TUNEFLEET_WORKER_SLOT": str(slot)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    return env
