"""Read W&B offline run files (``wandb/offline-run-*/run-*.wandb``) back into plain dicts.

The file is a LevelDB-style log (7-byte W&B header, 32 KiB blocks, records with a
crc/length/type header) of ``wandb_internal_pb2.Record`` messages; wandb itself no longer ships
a Python reader, and these few lines keep the test independent of a network sync.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

from tests.helpers import wait_until

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if len(data) < 7:  # being written
        return
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if pos + length > len(data):  # the last record is being written
            return
        if length == 0 and kind == 0:
            pos += left - 7
            continue
        chunks += data[pos:pos + length]
        pos += length
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(chunks)
            chunks = b""
            yield rec


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def read_run(run_dir: Path) -> dict[str, Any]:
    """``{"name", "group", "config", "history": [rows], "summary", "exit_code"}`` of one run."""
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exit_code": None}
    paths = list(run_dir.glob("run-*.wandb"))
    if not paths:  # not written yet
        return out
    (path,) = paths
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["group"] = rec.run.display_name, rec.run.run_group
            out["project"] = rec.run.project
            out["config"].update({_key(u): json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            out["config"].update({_key(u): json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({_key(u): json.loads(u.value_json) for u in rec.summary.update})
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    out["config"].pop("_wandb", None)
    return out


def read_runs(wandb_dir: Path, timeout: float = 240.0) -> dict[str, dict[str, Any]]:
    """Every offline run under ``wandb_dir``, by run name.

    ``run.finish()`` returns before wandb's service process has written the whole file, so
    this waits (up to ``timeout`` s) until each run holds its closing ``exit`` record."""
    runs: list[dict[str, Any]] = []

    def written() -> bool:
        runs[:] = [read_run(d) for d in sorted(Path(wandb_dir).glob("wandb/offline-run-*"))]
        return all(r["exit_code"] is not None and "name" in r for r in runs)

    wait_until(written, timeout,
               lambda: f"wandb to finish writing its runs: {[sorted(r) for r in runs]}")
    return {r["name"]: r for r in runs}
