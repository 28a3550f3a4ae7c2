"""Checkpoints in hub mode: the coordinator keeps them, workers reach them.

Workers on the coordinator's machine (local processes) read and write the checkpoint folder
themselves (``tunefleet.checkpoint.LocalSession``). A worker anywhere else has no disk in
common with the coordinator: its session (:class:`RemoteSession`) streams checkpoints through
its authenticated connection, one chunk per round trip (back-pressure: nothing is sent before
the previous chunk is written), and the coordinator's :class:`CheckpointKeeper` writes them
into the same folder. Checkpoints of a trial that ended for good are removed, unless the user
keeps them.

With an Optuna artifact store every worker streams its checkpoints here, and the keeper uploads
each save on a thread of its own: a save of gigabytes does not stop the coordinator. The save
is indexed (a study attribute) on the coordinator's thread once uploaded, and its worker gets
the reply once the storage holds the index.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tunefleet.checkpoint import ArtifactCheckpoints, FolderStore, Session
from tunefleet.hub import _protocol as P

#: Bytes per round trip of a streamed checkpoint.
CHUNK = 4 * 1024 * 1024
#: Seconds the end of a run waits for uploads still running (of workers that are gone).
CLOSE_WAIT = 30.0
#: Seconds between two removals of the folders of trials that ended for good.
SWEEP_EVERY = 1.0


def _relative(path: str) -> PurePosixPath:
    """A file's place inside a checkpoint, as sent over the network: never absolute, never
    above the checkpoint (``..``)."""
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or ".." in rel.parts or "\\" in path:
        raise ValueError(f"not a path inside a checkpoint: {path!r}")
    return rel


class _Upload:
    def __init__(self, lineage: int, number: int, trial_id: int, tmp: Path) -> None:
        self.lineage = lineage
        self.number = number
        self.trial_id = trial_id
        self.tmp = tmp
        self.files: dict[str, BinaryIO] = {}

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


@dataclass
class _Pending:
    """A save being uploaded to an artifact store, and the worker waiting for its reply."""

    upload: _Upload
    files: concurrent.futures.Future
    worker: Any = None


class CheckpointKeeper:
    """The coordinator's side: answers the checkpoint requests of remote workers, and removes
    the checkpoints of trials that ended for good.

    Args:
        root: the folder (made by the first save; removed at :meth:`close` when empty), which
            workers on this machine write themselves; None with ``store``.
        keep: keep the checkpoints of finished trials.
        temporary: the folder was made for this run only: removed at :meth:`close`.
        store: checkpoints in an Optuna artifact store instead of a folder: every worker
            streams them here, and they are uploaded from here.
    """

    def __init__(self, root: str | os.PathLike[str] | None, keep: bool = False,
                 temporary: bool = False, store: ArtifactCheckpoints | None = None) -> None:
        # Made by the first save (FolderStore.begin), not here: most studies never checkpoint,
        # and an empty folder beside every storage file is litter.
        self.root = Path(root) if root is not None else None
        self.store: FolderStore | ArtifactCheckpoints = (
            store if store is not None else FolderStore(self.root))
        #: The index of the checkpoints is in the study's storage: a save is whole once the
        #: storage holds it (the coordinator replies to a commit then).
        self.indexed = store is not None
        self.keep = keep
        self.temporary = temporary
        self._uploads: dict[int, _Upload] = {}
        self._ids = itertools.count(1)
        self._pending: list[_Pending] = []
        self._ended: set[int] = set()  # lineages ended for good whose folders are not removed yet
        self._next_sweep = 0.0

    def answer(self, trial_id: int, number: int, lineage: int, request: Any) -> Any:
        kind = type(request)
        if kind is P.CkptWrite:
            upload = self._upload(request.upload, trial_id)
            rel = str(_relative(request.path))
            f = upload.files.get(rel)
            if f is None:
                target = upload.tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                f = upload.files[rel] = open(target, "wb")
            f.seek(request.offset)
            f.write(request.data)
            return None
        if kind is P.CkptRead:
            version = str(_relative(request.version))
            return self.store.read(lineage, version, str(_relative(request.path)),
                                   request.offset, max(0, min(request.size, CHUNK)))
        if kind is P.CkptLatest:
            return self.store.manifest(lineage)
        if kind is P.CkptBegin:
            upload_id = next(self._ids)
            self._uploads[upload_id] = _Upload(lineage, number, trial_id,
                                               self.store.begin(lineage))
            return upload_id
        if kind is P.CkptCommit:
            upload = self._upload(request.upload, trial_id)
            upload.close()
            del self._uploads[request.upload]
            if not isinstance(self.store, ArtifactCheckpoints):
                self.store.commit(upload.lineage, upload.tmp, upload.number)
                return None
            # Answered by the caller once uploaded (reply_when_uploaded, uploaded).
            return _Pending(upload, _in_background(self.store.upload, upload.tmp))
        raise ValueError(f"unknown checkpoint request {kind.__name__}")

    @property
    def uploading(self) -> bool:
        """Saves are being uploaded, whose workers wait for a reply."""
        return bool(self._pending)

    def reply_when_uploaded(self, pending: _Pending, worker: Any) -> None:
        """``worker`` (the caller's handle) gets its reply from :meth:`uploaded` later."""
        pending.worker = worker
        self._pending.append(pending)

    def uploaded(self) -> list[tuple[Any, Exception | None]]:
        """The saves whose upload ended since the last call, each indexed now (on the caller's
        thread, the one that writes the study): ``(worker, None)``, or ``(worker, error)`` for
        a save that failed (its files are gone, the previous checkpoint stays)."""
        done = [p for p in self._pending if p.files.done()]
        if not done:
            return []
        self._pending = [p for p in self._pending if p not in done]
        answers = []
        for pending in done:
            upload = pending.upload
            try:
                files = pending.files.result()
                self.store.index(upload.lineage, upload.tmp, upload.number, files)
            except Exception as exc:
                self.store.abort(upload.tmp)
                answers.append((pending.worker, exc))
            else:
                answers.append((pending.worker, None))
        return answers

    def _upload(self, upload_id: int, trial_id: int) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.trial_id != trial_id:
            raise ValueError(f"no checkpoint upload {upload_id} for this trial")
        return upload

    def has(self, lineage: int) -> bool:
        return self.store.manifest(lineage) is not None

    def trial_ended(self, trial_id: int, lineage: int, for_good: bool) -> None:
        """The trial ``trial_id`` ended: its unfinished uploads go, and, when the lineage will
        not be continued (``for_good``) and the user keeps nothing, its checkpoints."""
        for upload_id, upload in list(self._uploads.items()):
            if upload.trial_id == trial_id:
                upload.close()
                self.store.abort(upload.tmp)
                del self._uploads[upload_id]
        if for_good and not self.keep:
            if self.indexed:  # the index is in memory: no file to look for
                self.store.remove(lineage)
                return
            self._ended.add(lineage)
            if time.monotonic() >= self._next_sweep:
                self._sweep()

    def _sweep(self) -> None:
        """Remove the folders of the lineages ended for good, together, once a second: not a
        removal (system calls) per trial. Each system call on the coordinator's thread lets
        the mirror's writer take the GIL, which the coordinator then waits to get back: the
        removal per trial was an eighth of the durable run's coordinator time."""
        ended, self._ended = self._ended, set()
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        if ended and isinstance(self.store, FolderStore):
            self.store.remove_many(ended)

    def close(self) -> None:
        for upload in self._uploads.values():
            upload.close()
        self._uploads.clear()
        if self._pending:
            # Saves still uploading belong to workers that are gone (a worker waits for its
            # save's reply): their files go, and their trials continue from the save before.
            # The wait is bounded: an upload still running then (a store that hangs) is left
            # to its daemon thread, which holds neither the run nor the process's exit; its
            # prefix is in the stored index, so the next run removes what it wrote.
            done, _ = concurrent.futures.wait([p.files for p in self._pending],
                                              timeout=CLOSE_WAIT)
            for pending in self._pending:
                self.store.abort(pending.upload.tmp)
                if pending.files in done and pending.files.exception() is None:
                    self.store.discard(pending.files.result())
            self._pending.clear()
        self._sweep()
        self.store.close()
        if self.root is None:
            return
        if self.temporary and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        # What is left empty goes: the study's folder, and the ".checkpoints" folder beside a
        # storage file (never a folder the user named).
        for folder in (self.root, self.root.parent):
            if folder is self.root.parent and not folder.name.endswith(".checkpoints"):
                break
            try:
                folder.rmdir()  # only an empty one
            except OSError:
                break


def _in_background(fn: Any, *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` on a daemon thread of its own, as a future: an upload to a store that
    hangs must not hold the process at its exit (an executor's threads are joined there)."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="tunefleet-upload", daemon=True).start()
    return future


class RemoteSession(Session):
    """A remote worker's session: checkpoints stream to and from the coordinator through the
    trial's round trips (``ProxyTrial._rpc``); local copies live in a temporary folder for the
    trial's time."""

    def __init__(self, rpc: Any, number: int, lineage: int) -> None:
        self._rpc = rpc
        self.number = number
        self.lineage = lineage
        self._made: Path | None = None  # made on first use: most trials never checkpoint
        self._latest: Path | None = None
        self._fetched = False

    @property
    def _folder(self) -> Path:
        if self._made is None:
            self._made = Path(tempfile.mkdtemp(prefix=f"tunefleet-checkpoints-{self.number}-"))
        return self._made

    def latest(self) -> Path | None:
        if not self._fetched:
            self._fetched = True
            found = self._rpc(P.CkptLatest())
            if found is not None:
                version, files = found
                target = self._folder / f"latest-{version}"
                for path, size in files:
                    dest = target / _relative(path)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with open(dest, "wb") as f:
                        offset = 0
                        while offset < size:
                            data = self._rpc(P.CkptRead(version, path, offset, CHUNK))
                            if not data:
                                raise OSError(f"checkpoint file {path} ended at {offset} of "
                                              f"{size} bytes")
                            f.write(data)
                            offset += len(data)
                target.mkdir(parents=True, exist_ok=True)  # a checkpoint with no file
                self._latest = target
        return self._latest

    def begin(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="save-", dir=self._folder))

    def commit(self, path: Path) -> None:
        upload = self._rpc(P.CkptBegin())
        for file in sorted(path.rglob("*")):
            if not file.is_file():
                continue
            rel = file.relative_to(path).as_posix()
            with open(file, "rb") as f:
                offset = 0
                while True:
                    data = f.read(CHUNK)
                    if not data and offset:
                        break
                    self._rpc(P.CkptWrite(upload, rel, offset, data))
                    offset += len(data)
                    if not data:
                        break
        self._rpc(P.CkptCommit(upload))
        # What was just saved is the latest now: no need to fetch it back.
        if self._latest is not None:
            shutil.rmtree(self._latest, ignore_errors=True)
        self._latest, self._fetched = path, True

    def abort(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        if self._made is not None:
            shutil.rmtree(self._made, ignore_errors=True)
