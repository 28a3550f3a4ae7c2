"""Where checkpoints live: a folder, one subfolder per trial lineage, each checkpoint a whole
directory made visible by one rename.

A lineage is a trial and the retries that continue it (keyed by the first trial's number, as
Optuna's ``RetryFailedTrialCallback`` keys them). A checkpoint is written into a hidden
temporary directory beside its final place and renamed into place when the writer's block
ends: a writer killed halfway leaves the previous checkpoint as the latest. Names sort by
(trial number, time), so a late save from a worker whose trial was already handed on never
hides a save of the trial that continues it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunefleet.checkpoint._session import Session

_TMP = ".tmp-"


class FolderStore:
    """Checkpoints under ``root``: ``root/<lineage>/<trial number>-<time>/``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def session(self, number: int, lineage: int) -> Session:
        """The checkpoints of trial ``number`` (of ``lineage``) for a worker that reaches this
        folder."""
        from tunefleet.checkpoint._session import LocalSession

        return LocalSession(self, number, lineage)

    def _dir(self, lineage: int) -> Path:
        return self.root / str(int(lineage))

    def latest(self, lineage: int) -> Path | None:
        """The newest whole checkpoint of ``lineage``, or None."""
        folder = self._dir(lineage)
        try:
            names = [n for n in os.listdir(folder) if not n.startswith(_TMP)]
        except FileNotFoundError:
            return None
        return folder / max(names) if names else None

    def begin(self, lineage: int) -> Path:
        """A new, empty directory to write a checkpoint of ``lineage`` into."""
        path = self._dir(lineage) / f"{_TMP}{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def commit(self, lineage: int, tmp: Path, number: int) -> Path:
        """Make the checkpoint written in ``tmp`` (from :meth:`begin`) the latest of
        ``lineage``, written by trial ``number``; older ones are removed."""
        final = self._dir(lineage) / f"{int(number):09d}-{time.time_ns():020d}"
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        for name in os.listdir(final.parent):
            if name < final.name and not name.startswith(_TMP):
                shutil.rmtree(final.parent / name, ignore_errors=True)
        return final

    def abort(self, tmp: Path) -> None:
        """Forget a checkpoint that was not finished."""
        shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, lineage: int) -> None:
        """Remove every checkpoint of ``lineage`` (its trial has finished)."""
        shutil.rmtree(self._dir(lineage), ignore_errors=True)

    def remove_many(self, lineages: set[int]) -> None:
        """Remove every checkpoint of ``lineages``: one listing of the folder, then a removal
        for those that have any (most trials never save one)."""
        try:
            names = os.listdir(self.root)
        except OSError:  # no folder: nothing was ever saved
            return
        for name in names:
            if name.isdigit() and int(name) in lineages:
                self.remove(int(name))

    def manifest(self, lineage: int) -> tuple[str, list[tuple[str, int]]] | None:
        """The latest checkpoint of ``lineage``: its version (the directory's name) and its
        files (paths relative to it, POSIX) with their sizes; None when it has none."""
        latest = self.latest(lineage)
        if latest is None:
            return None
        return latest.name, [(p.relative_to(latest).as_posix(), p.stat().st_size)
                             for p in sorted(latest.rglob("*")) if p.is_file()]

    def read(self, lineage: int, version: str, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of file ``path`` (relative, already checked) of
        checkpoint ``version`` of ``lineage``."""
        with open(self._dir(lineage) / version / path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def close(self) -> None:
        """Nothing is held open between calls."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_root(location: str | None, study_name: str,
                 folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder of a study's checkpoints: in ``folder`` when the user gives one, else beside
    the study's storage file, from the storage's location (``sqlite:///x.db`` or a journal
    file's path); one subfolder per study, so studies may share a folder. None for a storage
    without a file (a server, memory) and no ``folder``: the caller picks one."""
    if folder is not None:
        return Path(folder) / _safe(study_name)
    if not location:
        return None
    path: str | None = None
    if location.startswith("sqlite:///"):
        path = location[len("sqlite:///"):].split("?", 1)[0]
    elif "://" not in location:  # a journal file
        path = location
    if not path or path == ":memory:":
        return None
    return Path(f"{path}.checkpoints") / _safe(study_name)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "study"
