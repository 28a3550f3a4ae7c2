"""Which GPUs a fleet may use, how they are packed into worker slots (one GPU per worker,
several trials per GPU, or several GPUs per trial: ``gpu_layout``, used by every launcher), and
the environment a worker in a given slot starts with.

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

#: How CUDA_VISIBLE_DEVICES names a GPU or a MIG slice by UUID instead of by index.
_UUID_PREFIXES = ("GPU-", "MIG-")


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
        if not text.isdigit() and not text.startswith(_UUID_PREFIXES) \
                and (visible is None or text not in visible):
            raise UsageError(f"GPU {text!r} is neither an index (0, 1, ...) nor a GPU UUID "
                             f"(GPU-...){' (' + shown + ')' if shown else ''}")
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
    """``CUDA_VISIBLE_DEVICES`` for worker ``slot``: the slot's value of the layout ``gpus``
    (see ``gpu_layout``), round robin when there are more workers than slots; the objective
    then sees its first GPU as device 0. No ``gpus``: the environment is unchanged."""
    env = {"TUNEFLEET_WORKER_SLOT": str(slot)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    return env


def check_packing(trials_per_gpu: int | None, gpus_per_trial: int | None) -> None:
    """Several trials on one GPU or several GPUs for one trial, not both; whole counts >= 1."""
    if trials_per_gpu is not None and gpus_per_trial is not None:
        raise UsageError("give trials_per_gpu (--trials-per-gpu: several trials on one GPU) or "
                         "gpus_per_trial (--gpus-per-trial: several GPUs for one trial), "
                         "not both")
    for name, value in (("trials_per_gpu", trials_per_gpu), ("gpus_per_trial", gpus_per_trial)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise UsageError(f"{name}={value!r}: give a whole number, at least 1")


def gpu_share(trials_per_gpu: int | None = None, gpus_per_trial: int | None = None) -> float:
    """The GPUs one worker asks an engine for (Dask resources, Ray's ``num_gpus``):
    ``1 / trials_per_gpu`` or ``gpus_per_trial``; 1 when neither is given."""
    check_packing(trials_per_gpu, gpus_per_trial)
    if trials_per_gpu is not None:
        return 1 / trials_per_gpu
    return float(gpus_per_trial or 1)


def pack(ids: Sequence[str], trials_per_gpu: int | None = None,
         gpus_per_trial: int | None = None) -> list[str]:
    """The layout: one ``CUDA_VISIBLE_DEVICES`` value per worker slot, from GPU ids already
    resolved. ``trials_per_gpu=2`` on 0,1 gives 0, 0, 1, 1; ``gpus_per_trial=2`` on 0,1,2,3
    gives "0,1", "2,3"; neither gives one GPU per slot."""
    check_packing(trials_per_gpu, gpus_per_trial)
    ids = [str(g) for g in ids]
    if trials_per_gpu is not None:
        return [g for g in ids for _ in range(trials_per_gpu)]
    per = gpus_per_trial or 1
    if len(ids) % per:
        raise UsageError(f"gpus_per_trial={per} does not divide the {len(ids)} GPU(s) "
                         f"{','.join(ids)}: give a multiple of {per} GPUs")
    return [",".join(ids[i:i + per]) for i in range(0, len(ids), per)]


def gpu_layout(gpus: GpuSpec, trials_per_gpu: int | None = None,
               gpus_per_trial: int | None = None,
               env: Mapping[str, str] | None = None) -> list[str] | None:
    """What every launcher hands its workers: ``gpus`` resolved against the visible GPUs
    (``resolve_gpus``), then packed (``pack``); None when no GPU is asked for."""
    check_packing(trials_per_gpu, gpus_per_trial)
    if gpus is None:
        if trials_per_gpu is not None or gpus_per_trial is not None:
            given = "trials_per_gpu" if trials_per_gpu is not None else "gpus_per_trial"
            raise UsageError(f"{given} packs the GPUs of gpus= (--gpus): give them too, "
                             "e.g. gpus=2 or --gpus 0,1")
        return None
    ids = resolve_gpus(gpus, env)
    assert ids is not None
    return pack(ids, trials_per_gpu, gpus_per_trial)
