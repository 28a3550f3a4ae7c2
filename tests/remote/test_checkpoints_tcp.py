"""Checkpoints over TCP (issue 19): ``tunefleet serve`` keeps them, ``tunefleet worker
--connect`` workers stream them through their connection; a worker killed mid-trial leaves its
trial to another, which continues from the checkpoint. A 1 GiB checkpoint goes up and comes
back whole, while neither end holds it in memory."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.hub import checkpoint_objectives as co
from tunefleet import _attrs as attrs

OBJECTIVES = co.__file__


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tunefleet", storage=f"sqlite:///{tmp_path}/hub.db")


def worker_env(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """A worker's settings: the objective's records in ``log``, its temporary files (the
    streamed checkpoints' local copies) in a folder of its own."""
    tmp = tmp_path / f"tmp-{name}"
    tmp.mkdir()
    return {"TF_CK_LOG": str(tmp_path / "log"), "TMPDIR": str(tmp), **extra}


def worker(procs, port: int, env: dict[str, str]):
    return procs.tunefleet("worker", "--connect", f"tcp://127.0.0.1:{port}", "--key-file",
                           "hub.key", env=env)


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_trial_is_continued_by_another_from_its_streamed_checkpoint(
        procs, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    serve = procs.serve(f"{OBJECTIVES}:steps", 0, "--n-trials", "4", "--sampler", "random",
                        "--max-retries", "1")
    port = procs.port_of(serve)
    workers = [worker(procs, port, worker_env(tmp_path, name, TF_CK_STEPS="15"))
               for name in ("a", "b")]
    folder = tmp_path / "hub.db.checkpoints" / "tunefleet"

    def busy():
        for w in workers:
            if w.poll() is not None:
                raise AssertionError(f"a worker exited: {w.communicate()[1][-2000:]}")
        seen = co.now(log)
        if len(seen) == 2 and all(3 <= s < 10 for _, s in seen.values()):
            # the coordinator holds the checkpoint the worker streamed
            pid, (number, step) = min(seen.items())
            if any((folder / str(number)).glob("*/step")):
                return pid, number, step
        return None

    pid, number, step = wait_until(busy, 180, "both workers past step 3, checkpoints kept")
    [victim] = [w for w in workers if w.pid == pid]
    [other] = [w for w in workers if w.pid != pid]
    victim.send_signal(signal.SIGKILL)
    _, err = serve.communicate(timeout=180)
    assert serve.returncode == 0, err[-3000:]
    assert other.wait(60) == 0
    study = load(tmp_path)
    got = [t.state for t in study.trials]
    assert got.count(TrialState.COMPLETE) == 4 and got.count(TrialState.FAIL) == 1, got
    assert TrialState.RUNNING not in got and TrialState.WAITING not in got
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    assert "connection" in killed.system_attrs[attrs.FAIL_REASON]
    [retry] = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["pid"] == other.pid
    assert retry.user_attrs["start"] >= step >= 3  # from the checkpoint, not from step 0
    assert min(s for p, n, s in co.recorded(log) if n == retry.number) == \
        retry.user_attrs["start"]
    # Finished trials' checkpoints are removed; the surviving worker's local copies too.
    assert not [p for p in folder.rglob("*") if p.is_file()]
    assert not list((tmp_path / "tmp-b" if other is workers[1] else tmp_path / "tmp-a")
                    .iterdir())


MB = 1000 * 1000


@pytest.mark.timeout(600)
def test_a_1_gib_checkpoint_streams_both_ways_in_little_memory(procs, tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    watch = co.RssWatch()
    watch.start()
    try:
        serve = procs.serve(f"{OBJECTIVES}:big", 0, "--n-trials", "1", "--max-retries", "1")
        watch.pids["serve"] = serve.pid
        port = procs.port_of(serve)
        first = worker(procs, port, worker_env(tmp_path, "a"))
        watch.pids["first worker"] = first.pid
        # It saves 1 GiB, which goes up to the coordinator, then kills itself.
        assert first.wait(300) == -signal.SIGKILL, first.communicate()[1][-2000:]
        sent = json.loads((log / "sent.json").read_text())
        shutil.rmtree(tmp_path / "tmp-a")  # its local copy, left by the kill: disk is short
        second = worker(procs, port, worker_env(tmp_path, "b"))
        watch.pids["second worker"] = second.pid
        _, err = serve.communicate(timeout=300)
        assert serve.returncode == 0, err[-3000:]
        assert second.wait(60) == 0
    finally:
        watch.stopped.set()
        watch.join(10)
    received = json.loads((log / "received.json").read_text())
    assert sent["size"] == received["size"] == 1024**3
    assert received["sha256"] == sent["sha256"]
    study = load(tmp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].system_attrs["failed_trial"] == 0
    assert watch.samples > 50 and set(watch.peak) == {"serve", "first worker", "second worker"}
    for name, peak in watch.peak.items():
        assert peak < 200 * MB, f"{name}: {peak / MB:.0f} MB"
    # Nothing of the gigabyte is left: the coordinator's copy went with the finished trial, the
    # second worker's with its session.
    assert not [p for p in (tmp_path / "hub.db.checkpoints").rglob("*") if p.is_file()]
    assert not list((tmp_path / "tmp-b").iterdir())
