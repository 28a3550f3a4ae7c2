"""Checkpoints in an Optuna artifact store (``FileSystemArtifactStore``, ``Boto3ArtifactStore``,
``GCSArtifactStore``, ...): for users whose models belong in a bucket, not beside the study's
storage file.

An artifact store writes, reads and removes an artifact by id, and can neither list nor rename.
So each file of a checkpoint is one artifact under a fresh id, and the index of a lineage's
latest checkpoint (its version and its files' ids) is a study system attribute,
``tunefleet:checkpoint:<lineage>``, set only once every file is written: a checkpoint is whole
or absent, and a rerun of the study finds it in the storage. The artifacts of the checkpoint it
replaces are removed only once the storage holds the new index (``seq``): a coordinator killed
in between leaves an index whose files all exist.

In hub mode the coordinator is the index's one writer and keeps it in memory. In storage mode
(``shared``) every worker reads a lineage's entry from the storage when it needs it, and the
worker that continues a lineage first takes it over (:meth:`ArtifactCheckpoints.adopt`): what
the lineage's earlier attempts left behind (replaced files, cut uploads) goes, and a late save
of an earlier attempt is dropped, as the entry names the later trial.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

from tunefleet.checkpoint._session import Session
from tunefleet.errors import OptionError

#: The study system attribute of a lineage's latest checkpoint (its first trial's number).
INDEX_KEY = "tunefleet:checkpoint:"
#: Bytes per read or write of a file's copy.
_COPY = 4 * 1024 * 1024


def check_artifact_store(store: Any) -> Any:
    """``store`` if it is an Optuna artifact store; else one line (``OptionError``) that says
    what it lacks."""
    missing = [m for m in ("open_reader", "write", "remove")
               if not callable(getattr(store, m, None))]
    if missing:
        raise OptionError(f"checkpoint_store must be an Optuna artifact store (such as "
                          f"optuna.artifacts.FileSystemArtifactStore); "
                          f"{type(store).__name__} has no {', '.join(missing)}")
    return store


class ArtifactCheckpoints:
    """A lineage's checkpoints in ``artifacts`` (any Optuna artifact store), indexed in the
    study ``study_id`` of ``storage``. The same calls as :class:`.FolderStore` (``begin``,
    ``commit``, ``abort``, ``remove``, ``manifest``, ``read``), so the hub's keeper serves
    either.

    Args:
        seq: ``() -> (changes made, changes the durable storage holds)`` when ``storage`` is
            written through to a durable one later (the hub's mirror); None when a write to
            ``storage`` is already durable.
        shared: other processes write the index too (storage-mode workers): entries are read
            from the storage when needed, and what a stopped run left is cleaned lineage by
            lineage as workers take them over, not at the start.
    """

    def __init__(self, artifacts: Any, storage: Any, study_id: int,
                 seq: Callable[[], tuple[int, int]] | None = None,
                 shared: bool = False) -> None:
        self.artifacts = check_artifact_store(artifacts)
        self._storage = storage
        self._study_id = study_id
        self._seq = seq
        self._shared = shared
        self._doomed: list[tuple[int, list[str]]] = []  # (change, artifact ids) to remove
        self._readers: dict[str, tuple[BinaryIO, int]] = {}  # artifact id: (reader, position)
        # A save's folder: its lineage and the prefix of its artifacts' ids.
        self._uploads: dict[Path, tuple[int, str]] = {}
        # Every lineage's entry, as stored; one with files names its latest checkpoint.
        self._entries: dict[int, dict[str, Any]] = {}
        if shared:
            return
        stale: list[str] = []
        for key, value in storage.get_study_system_attrs(study_id).items():
            if key.startswith(INDEX_KEY) and value:
                # What a previous run, stopped, left: the files of checkpoints it replaced,
                # and those of uploads it had begun.
                stale += self._stale(value)
                self._entries[int(key[len(INDEX_KEY):])] = _entry(value)
        self._remove_now(stale)

    def session(self, number: int, lineage: int) -> Session:
        """The checkpoints of trial ``number`` (of ``lineage``) for a worker that runs it here
        (storage mode): copied down on ``load``, up on ``save``."""
        return ArtifactSession(self, number, lineage)

    def adopt(self, lineage: int, number: int) -> None:
        """Trial ``number`` continues ``lineage`` in this process (storage mode): the files the
        lineage's earlier attempts left (replaced, or cut uploads) are removed, and the entry
        names ``number``, so that a late save of an earlier attempt is dropped."""
        stored = self._stored(lineage)
        if not stored or stored.get("trial", -1) >= number:
            return  # nothing yet, taken already, or a later trial owns it (this one is late)
        stale = self._stale(stored)
        self._set(lineage, {**_entry(stored), "trial": number})
        self._remove_now(stale)

    def download(self, lineage: int, into: Path) -> Path | None:
        """The latest checkpoint of ``lineage`` copied into the new folder ``into`` (file by
        file, a chunk at a time); None when it has none."""
        entry = self._latest(lineage)
        if entry is None:
            return None
        into.mkdir(parents=True)
        for path, _, artifact_id in entry["files"]:
            target = into / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.artifacts.open_reader(artifact_id) as reader, open(target, "wb") as f:
                shutil.copyfileobj(reader, f, _COPY)
        return into

    def begin(self, lineage: int) -> Path:
        """A local, empty directory the next checkpoint is written into before its upload.
        The prefix of its artifacts' ids goes into the index now: a run stopped during the
        upload leaves no file that a rerun cannot find and remove."""
        tmp = Path(tempfile.mkdtemp(prefix=f"tunefleet-checkpoint-{int(lineage)}-"))
        self._uploads[tmp] = lineage, f"tunefleet-checkpoint-{uuid.uuid4().hex}"
        if self._shared:
            self._latest(lineage)  # the entry as stored now
        self._set(lineage, dict(self._entries.get(lineage, {"version": None, "files": []})))
        return tmp

    def abort(self, tmp: Path) -> None:
        self._uploads.pop(tmp, None)
        shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, lineage: int, tmp: Path, number: int) -> None:
        """Upload the checkpoint written in ``tmp`` (from :meth:`begin`), one artifact per
        file, then make it the latest of ``lineage`` in the index."""
        self.index(lineage, tmp, number, self.upload(tmp))

    def upload(self, tmp: Path) -> list[list[Any]]:
        """Upload the files of the save written in ``tmp`` (from :meth:`begin`), one artifact
        each, streamed; ``tmp`` goes. Safe on a thread of its own (the hub's keeper uploads
        there); what a failed upload wrote is removed. Returns the files for :meth:`index`."""
        _, prefix = self._uploads[tmp]
        files: list[list[Any]] = []
        try:
            for i, file in enumerate(sorted(p for p in tmp.rglob("*") if p.is_file())):
                artifact_id = f"{prefix}-{i}"
                with open(file, "rb") as f:  # streamed: never whole in memory
                    self.artifacts.write(artifact_id, f)
                files.append([file.relative_to(tmp).as_posix(), file.stat().st_size,
                              artifact_id])
        except BaseException:
            self.discard(files)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return files

    def index(self, lineage: int, tmp: Path, number: int, files: list[list[Any]]) -> None:
        """Make the uploaded ``files`` of the save begun as ``tmp`` the latest checkpoint of
        ``lineage``, written by trial ``number``; the one it replaces goes."""
        self._uploads.pop(tmp, None)
        version = f"{int(number):09d}-{time.time_ns():020d}"
        old = self._latest(lineage)
        owner = self._entries.get(lineage, {}).get("trial", -1)
        if owner > number or (old is not None and old["version"] > version):
            self.discard(files)  # a late save of a trial handed on
            return
        # The replaced checkpoint's files are named in the new entry until they are removed:
        # a run killed before that removes them when the study is run again.
        entry = {"version": version, "files": files,
                 "replaced": _ids(old) if old is not None else []}
        if self._shared:
            entry["trial"] = number
        self._set(lineage, entry)
        if old is not None:
            self._drop(old)

    def discard(self, files: list[list[Any]]) -> None:
        """Remove uploaded ``files`` that no index names."""
        self._remove_now(_ids({"files": files}))

    def remove(self, lineage: int) -> None:
        """Remove every checkpoint of ``lineage`` (its trial has finished)."""
        old = self._latest(lineage)
        if old is not None:
            entry = {"version": None, "files": [], "replaced": _ids(old)}
            if "trial" in old:  # shared: a late save of an earlier attempt stays dropped
                entry["trial"] = old["trial"]
            self._set(lineage, entry)
            self._drop(old)

    def manifest(self, lineage: int) -> tuple[str, list[tuple[str, int]]] | None:
        """The latest checkpoint of ``lineage``: its version and its files with their sizes."""
        entry = self._latest(lineage)
        if entry is None:
            return None
        return entry["version"], [(path, size) for path, size, _ in entry["files"]]

    def read(self, lineage: int, version: str, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of file ``path`` of checkpoint ``version``. A
        file is read from start to end by one reader kept between calls (an S3 body cannot
        seek)."""
        entry = self._latest(lineage)
        found = [a for p, _, a in (entry["files"] if entry and entry["version"] == version
                                   else []) if p == path]
        if not found:
            raise FileNotFoundError(f"no file {path} in checkpoint {version} of trial "
                                    f"{lineage}: a newer checkpoint replaced it")
        artifact_id = found[0]
        reader, position = self._readers.pop(artifact_id, (None, 0))
        if reader is not None and position != offset:
            reader.close()
            reader = None
        if reader is None:
            reader, position = self.artifacts.open_reader(artifact_id), 0
            try:
                reader.seek(offset)
                position = offset
            except (AttributeError, OSError, io.UnsupportedOperation):
                pass
            while position < offset:  # skip forward
                skipped = reader.read(min(offset - position, 1 << 20))
                if not skipped:
                    break
                position += len(skipped)
        data = reader.read(size)
        if len(data) < size:
            reader.close()  # the end of the file
        else:
            self._readers[artifact_id] = (reader, position + len(data))
        return data

    def close(self) -> None:
        """The run ends: readers close, and replaced checkpoints whose replacement the storage
        now holds are removed (the rest stay, still indexed in what the storage holds)."""
        for reader, _ in self._readers.values():
            reader.close()
        self._readers.clear()
        self._collect()

    def _latest(self, lineage: int) -> dict[str, Any] | None:
        """The entry of ``lineage``'s latest checkpoint, or None when it has none (shared:
        as the storage holds it now)."""
        if self._shared:
            stored = self._stored(lineage)
            if stored:
                self._entries[lineage] = _entry(stored)
            else:
                self._entries.pop(lineage, None)
        entry = self._entries.get(lineage)
        return entry if entry is not None and entry["files"] else None

    def _stored(self, lineage: int) -> dict[str, Any] | None:
        return self._storage.get_study_system_attrs(self._study_id).get(
            f"{INDEX_KEY}{int(lineage)}")

    def _stale(self, stored: dict[str, Any]) -> list[str]:
        """The files a stored entry names that no checkpoint uses: those of checkpoints it
        replaced, and of uploads begun by a process that did not finish them."""
        stale = list(stored.get("replaced", []))
        for prefix in stored.get("uploading", []):
            stale += self._uploaded(prefix)
        return stale

    def _set(self, lineage: int, entry: dict[str, Any]) -> None:
        self._entries[lineage] = entry
        uploading = [prefix for of, prefix in self._uploads.values() if of == lineage]
        self._storage.set_study_system_attr(self._study_id, f"{INDEX_KEY}{int(lineage)}",
                                            {**entry, "uploading": uploading})

    def _uploaded(self, prefix: str) -> list[str]:
        """The ids of the files an upload under ``prefix`` wrote (numbered from 0)."""
        ids = []
        while True:
            artifact_id = f"{prefix}-{len(ids)}"
            try:
                self.artifacts.open_reader(artifact_id).close()
            except Exception:  # ArtifactNotFound: the upload wrote no more
                return ids
            ids.append(artifact_id)

    def _drop(self, entry: dict[str, Any]) -> None:
        ids = _ids(entry)
        for artifact_id in ids:
            reader = self._readers.pop(artifact_id, None)
            if reader is not None:
                reader[0].close()
        if self._seq is None:
            self._remove_now(ids)
        else:
            self._doomed.append((self._seq()[0], ids))
            self._collect()

    def _collect(self) -> None:
        if not self._doomed:
            return
        durable = self._seq()[1] if self._seq is not None else None
        keep = []
        for change, ids in self._doomed:
            if durable is None or change <= durable:
                self._remove_now(ids)
            else:
                keep.append((change, ids))
        self._doomed = keep

    def _remove_now(self, ids: list[str]) -> None:
        for artifact_id in ids:
            try:
                self.artifacts.remove(artifact_id)
            except Exception:
                pass  # already gone (ArtifactNotFound), or the store is away: an orphan file


class ArtifactSession(Session):
    """A storage-mode worker's session on an artifact store: the latest checkpoint is copied
    into a temporary folder on the first ``load``, a save is uploaded when its block ends, and
    the lineage is taken over (:meth:`ArtifactCheckpoints.adopt`) before either."""

    def __init__(self, store: ArtifactCheckpoints, number: int, lineage: int) -> None:
        self.store = store
        self.number = number
        self.lineage = lineage
        self._adopted = False
        self._copy: Path | None = None  # the downloaded latest checkpoint
        self._fetched = False

    def _adopt(self) -> None:
        if not self._adopted:
            self._adopted = True
            self.store.adopt(self.lineage, self.number)

    def latest(self) -> Path | None:
        self._adopt()
        if not self._fetched:
            self._fetched = True
            folder = Path(tempfile.mkdtemp(prefix=f"tunefleet-checkpoint-{self.number}-"))
            try:
                self._copy = self.store.download(self.lineage, folder / "latest")
            finally:
                if self._copy is None:
                    shutil.rmtree(folder, ignore_errors=True)
        return self._copy

    def begin(self) -> Path:
        self._adopt()
        return self.store.begin(self.lineage)

    def commit(self, path: Path) -> None:
        self.store.commit(self.lineage, path, self.number)
        self._drop_copy()  # a later load copies what was just saved

    def abort(self, path: Path) -> None:
        self.store.abort(path)

    def close(self) -> None:
        self._drop_copy()

    def _drop_copy(self) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy.parent, ignore_errors=True)
        self._copy, self._fetched = None, False


def _entry(stored: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored index entry that names its checkpoint (and, shared, its owner)."""
    entry = {"version": stored.get("version"), "files": stored.get("files", [])}
    if "trial" in stored:
        entry["trial"] = stored["trial"]
    return entry


def _ids(entry: dict[str, Any]) -> list[str]:
    """The artifact ids of an index entry's files."""
    return [f[2] for f in entry["files"]]
