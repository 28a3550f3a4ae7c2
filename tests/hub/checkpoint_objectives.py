"""Objectives of the checkpoint tests (issue 19), and what the tests read of what they did.

Every objective is configured by environment variables, so that the same one runs under
``tunefleet.optimize`` (forked workers inherit the test's environment), ``tunefleet run``,
``tunefleet serve`` + ``tunefleet worker`` and on lab hosts:

- ``TF_CK_LOG``: the folder where each step is recorded (default: the worker's working folder,
  so that a worker on another host never writes into the coordinator's folder);
- ``TF_CK_STEPS``, ``TF_CK_SLEEP``: steps per trial and seconds per step (20, 0.1);
- ``TF_CK_SAVE``: ``0`` runs without checkpoints (the comparison of the benchmark);
- ``TF_CK_HOST``: a name for the worker's host, recorded with each trial.

A step is recorded when it begins (so a step cut short by a kill counts as run): one line
``number step`` appended to ``steps-<pid>``, and ``now-<pid>`` rewritten whole (write, then
rename) with the same line, for a test that picks a worker in the middle of a trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psutil

import tunefleet
from tunefleet._children import process_alive as alive


def _log() -> Path:
    return Path(os.environ.get("TF_CK_LOG", "."))


def _record(number: int, step: int) -> None:
    log = _log()
    line = f"{number} {step}\n"
    with open(log / f"steps-{os.getpid()}", "a") as f:
        f.write(line)
    tmp = log / f".now-{os.getpid()}"
    tmp.write_text(line)
    os.replace(tmp, log / f"now-{os.getpid()}")


def steps(trial: optuna.Trial) -> float:
    """TF_CK_STEPS steps of TF_CK_SLEEP seconds, a checkpoint after each; a trial that
    continues another starts after the step its checkpoint holds."""
    x = trial.suggest_float("x", 0, 1)
    n = int(os.environ.get("TF_CK_STEPS", "20"))
    pause = float(os.environ.get("TF_CK_SLEEP", "0.1"))
    save = os.environ.get("TF_CK_SAVE", "1") == "1"
    ckpt = tunefleet.checkpoint.load(trial) if save else None
    start = int((ckpt / "step").read_text()) + 1 if ckpt is not None else 0
    trial.set_user_attr("start", start)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", os.environ.get("TF_CK_HOST", ""))
    for step in range(start, n):
        _record(trial.number, step)
        time.sleep(pause)
        trial.report(x + step, step)
        if save:
            with tunefleet.checkpoint.save(trial) as d:
                (d / "step").write_text(str(step))
    return x


# -- what the objectives recorded ----------------------------------------------------------------

def recorded(log: Path) -> list[tuple[int, int, int]]:
    """Every step begun: (pid, trial number, step)."""
    out = []
    for path in log.glob("steps-*"):
        pid = int(path.name.split("-", 1)[1])
        for line in path.read_text().splitlines():
            if line.strip():
                number, step = map(int, line.split())
                out.append((pid, number, step))
    return out


def now(log: Path) -> dict[int, tuple[int, int]]:
    """Each worker's latest step: pid -> (trial number, step)."""
    out = {}
    for path in log.glob("now-*"):
        try:
            number, step = map(int, path.read_text().split())
        except (FileNotFoundError, ValueError):
            continue
        out[int(path.name.split("-", 1)[1])] = (number, step)
    return out


class Killer(threading.Thread):
    """Sends SIGKILL to a random worker in the middle of a trial (before its last step),
    ``kills`` times, one every ``every`` seconds from the first checkpoint saved (as
    recorded in ``log``); ``done()`` says when to give up
    (the run ended). ``killed``: (pid, trial number, step) of each kill; ``error``: what went
    wrong in the thread, re-raised by :meth:`result`."""

    def __init__(self, log: Path, kills: int, every: float, done: Callable[[], bool],
                 seed: int = 0, last_step: int = 19) -> None:
        super().__init__(daemon=True)
        self.log, self.kills, self.every, self.done = log, kills, every, done
        self.last_step = last_step  # a worker that began it may have finished its trial
        self.rng = random.Random(seed)
        self.killed: list[tuple[int, int, int]] = []
        self.error: BaseException | None = None

    def _victims(self) -> list[tuple[int, int, int]]:
        dead = {pid for pid, _, _ in self.killed}
        return [(pid, number, step) for pid, (number, step) in sorted(now(self.log).items())
                if step < self.last_step and pid not in dead and alive(pid)]

    def run(self) -> None:
        try:
            # The first kill once a worker has saved a checkpoint (begun its step 1), then one
            # every ``every`` seconds.
            while not any(step >= 1 for _, step in now(self.log).values()) and not self.done():
                time.sleep(0.02)
            next_at = time.monotonic()
            while len(self.killed) < self.kills and not self.done():
                if time.monotonic() < next_at:
                    time.sleep(0.02)
                    continue
                victims = self._victims()
                if not victims:
                    time.sleep(0.02)
                    continue
                pid, number, step = self.rng.choice(victims)
                os.kill(pid, signal.SIGKILL)
                self.killed.append((pid, number, step))
                next_at += self.every
        except BaseException as exc:  # noqa: BLE001 (seen by the test through result())
            self.error = exc

    def result(self) -> list[tuple[int, int, int]]:
        self.join(60)
        if self.error is not None:
            raise self.error
        return self.killed


class RssWatch(threading.Thread):
    """Samples the resident memory of some processes (and their children) until stopped;
    ``peak``: the largest seen per name."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            for name, pid in list(self.pids.items()):
                try:
                    proc = psutil.Process(pid)
                    rss = sum(p.memory_info().rss
                              for p in [proc, *proc.children(recursive=True)])
                except psutil.Error:  # exited
                    continue
                self.peak[name] = max(self.peak.get(name, 0), rss)
            self.samples += 1


# -- a big checkpoint ------------------------------------------------------------------------

MIB = 1024 * 1024


def big(trial: optuna.Trial) -> float:
    """The first run saves one file of TF_CK_MIB MiB (1024: 1 GiB) written in 1 MiB chunks,
    notes its size and SHA-256 in ``LOG/sent.json`` with the seconds the upload took, and
    SIGKILLs its own worker; the retry loads it back, hashes it in chunks and notes the same
    in ``LOG/received.json`` with the seconds the download took."""
    log = _log()
    size_mib = int(os.environ.get("TF_CK_MIB", "1024"))
    started = time.monotonic()
    ckpt = tunefleet.checkpoint.load(trial)
    loaded = time.monotonic()
    if ckpt is None:
        digest = hashlib.sha256()
        block = bytearray(os.urandom(MIB))
        with tunefleet.checkpoint.save(trial) as d:
            with open(d / "blob", "wb") as f:
                for i in range(size_mib):
                    block[:8] = i.to_bytes(8, "little")  # no two chunks alike
                    digest.update(block)
                    f.write(block)
            written = time.monotonic()
        saved = time.monotonic()
        note = {"size": size_mib * MIB, "sha256": digest.hexdigest(), "seconds": saved - written}
        _write_json(log / "sent.json", note)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
    digest = hashlib.sha256()
    with open(ckpt / "blob", "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    note = {"size": (ckpt / "blob").stat().st_size, "sha256": digest.hexdigest(),
            "seconds": loaded - started}
    _write_json(log / "received.json", note)
    return 0.0


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


# -- a run whose workers are killed ----------------------------------------------------------

def run_with_kills(folder: Path, *, save: bool = True, n_trials: int = 9, n_workers: int = 3,
                   kills: int = 6, every: float = 1.5, n_steps: int = 20, pause: float = 0.1,
                   seed: int = 0, **options: Any,
                   ) -> tuple[optuna.Study, list[tuple[int, int, int]], float]:
    """``steps`` on a hub of ``n_workers`` local workers while a :class:`Killer` SIGKILLs one
    every ``every`` seconds; the study (in ``folder/ck.db``), the kills and the run's seconds.
    The objective's settings go through the environment, restored afterwards; OPTIONS go to
    ``tunefleet.optimize``."""
    log = folder / "log"
    log.mkdir(parents=True, exist_ok=True)
    settings = {"TF_CK_LOG": str(log), "TF_CK_SAVE": "1" if save else "0",
                "TF_CK_STEPS": str(n_steps), "TF_CK_SLEEP": str(pause)}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    study = optuna.create_study(storage=f"sqlite:///{folder}/ck.db",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
    ended = threading.Event()
    killer = Killer(log, kills, every, ended.is_set, seed=seed, last_step=n_steps - 1)
    started = time.monotonic()
    killer.start()
    try:
        tunefleet.optimize(study, steps, n_trials=n_trials, n_workers=n_workers,
                           max_retries=kills, **options)
    finally:
        ended.set()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.monotonic() - started
    return study, killer.result(), seconds
