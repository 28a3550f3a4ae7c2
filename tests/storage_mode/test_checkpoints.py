"""Storage-mode trials survive their workers: a retry continues from the trial's checkpoint
(``tunefleet.checkpoint``), and SIGTERM hands the running trial back after its next save,
using up no retry (issue 19)."""

from __future__ import annotations

import io
import signal
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.storage_mode.test_fleet import start_workers, trials_of, wait_all
from tunefleet import _attrs as attrs
from tunefleet._studies import open_storage
from tunefleet.checkpoint import ArtifactCheckpoints
from tunefleet.checkpoint._artifacts import INDEX_KEY

STEPPING = f"{Path(__file__).parent / 'checkpointed.py'}:stepping"
BUCKET = f"{Path(__file__).parent / 'checkpointed.py'}:bucket"
TRIALS, STEPS = 9, 20


def steps_run(log: Path) -> Counter:
    """How many times each (trial, step) ran, over every worker's step log."""
    runs: Counter = Counter()
    for path in log.iterdir():
        for line in path.read_text().splitlines():
            number, step = line.split()
            runs[int(number), int(step)] += 1
    return runs


def mid_trial(log: Path, procs: list[subprocess.Popen], min_step: int = 5) -> subprocess.Popen:
    """A live worker whose last step log line says it is at least MIN_STEP steps into a trial
    that is not near its end."""

    def find() -> subprocess.Popen | None:
        for proc in procs:
            path = log / str(proc.pid)
            lines = path.read_text().splitlines() if path.exists() else []
            if lines and proc.poll() is None and min_step <= int(lines[-1].split()[1]) < 12:
                return proc
        return None

    return wait_until(find, 60, "a worker mid-trial", interval=0.05)


def fleet(tmp_path: Path, n: int, extra: tuple[str, ...] = ()):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    log = tmp_path / "steps"
    log.mkdir()
    procs = start_workers(n, url, "ck", TRIALS, target=STEPPING, sleep="0.1", extra=extra,
                          env={"TF_STEP_LOG": str(log), "TF_STEPS": str(STEPS),
                               "TF_BUCKET": str(tmp_path / "bucket")})
    return url, log, procs


def assert_all_complete(url: str, tmp_path: Path) -> list:
    trials = trials_of(url, "ck")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Every trial ended for good: its checkpoints are gone, from the folder or the bucket.
    root = tmp_path / "study.db.checkpoints" / "ck"
    assert not list(root.iterdir()) if root.exists() else True
    bucket = tmp_path / "bucket"
    assert not list(bucket.iterdir()) if bucket.exists() else True
    return trials


@pytest.mark.timeout(180)
@pytest.mark.parametrize("store", ["folder", "artifact-store"])
def test_a_killed_workers_trial_continues_from_its_checkpoint(cli, tmp_path, store):
    """With the folder beside the SQLite file, and with ``--checkpoint-store`` (an Optuna
    artifact store, as workers that share no disk use)."""
    assert cli("init", "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--study", "ck",
               "--sampler", "random").returncode == 0
    extra: tuple[str, ...] = ()
    if store == "artifact-store":
        (tmp_path / "bucket").mkdir()
        extra = ("--checkpoint-store", BUCKET)
    url, log, procs = fleet(tmp_path, 3, extra)
    victim = mid_trial(log, procs)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    number, killed_at = map(int, (log / str(victim.pid)).read_text().splitlines()[-1].split())
    wait_all([p for p in procs if p is not victim], timeout=150)
    trials = assert_all_complete(url, tmp_path)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [number]
    retry = next(t for t in trials if t.system_attrs.get(attrs.RETRY_OF) == number)
    assert retry.state == TrialState.COMPLETE and retry.system_attrs[attrs.RETRY_COUNT] == 1
    assert retry.system_attrs["failed_trial"] == number
    runs = steps_run(log)
    # The retry began where the killed trial's last checkpoint left it, not at step 0.
    assert runs[retry.number, 0] == 0 and runs[retry.number, killed_at + 1] == 1
    assert runs[number, 0] == 1
    assert sum(runs.values()) <= 1.1 * TRIALS * STEPS, sum(runs.values())
    if store == "artifact-store":
        assert list(tmp_path.glob("*.checkpoints")) == []  # nothing went to a folder
        study = optuna.load_study(study_name="ck", storage=url)
        entries = {k: v for k, v in study._storage.get_study_system_attrs(study._study_id).items()
                   if k.startswith(INDEX_KEY)}
        assert entries and all(not v["files"] and not v.get("uploading") for v in
                               entries.values()), entries


def test_a_later_attempt_takes_its_lineage_over_in_a_shared_artifact_store(tmp_path):
    """Storage mode's index on an artifact store, two workers' views of one SQLite study: the
    worker that continues a lineage removes the upload its dead predecessor cut short, and a
    late save of that predecessor (stopped, then woken) is dropped, files and all."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="ck")
    first, second = (ArtifactCheckpoints(FileSystemArtifactStore(str(bucket)),
                                         open_storage(url), study._study_id, shared=True)
                     for _ in range(2))
    # Trial 0 (lineage 0) saves once, then begins a second save and stops mid-upload.
    saved = first.session(0, 0)
    with_file(saved.begin(), "a", b"step 1", commit=saved.commit)
    late = saved.begin()
    (late / "a").write_bytes(b"step 2")
    stale_prefix = first._uploads[late][1]
    first.artifacts.write(f"{stale_prefix}-0", io.BytesIO(b"cut"))  # its upload, cut short
    # Trial 5 continues lineage 0 on the other worker: it loads step 1, and the cut upload goes.
    retry = second.session(5, 0)
    loaded = retry.latest()
    assert (loaded / "a").read_bytes() == b"step 1"
    assert not (bucket / f"{stale_prefix}-0").exists()
    with_file(retry.begin(), "a", b"step 3", commit=retry.commit)
    # Trial 0's worker wakes up and finishes its save: dropped, as trial 5 owns the lineage.
    saved.commit(late)
    check = second.session(6, 0)
    assert (check.latest() / "a").read_bytes() == b"step 3"
    check.close()
    retry.close()
    assert len(list(bucket.iterdir())) == 1  # step 3's file alone
    second.remove(0)
    assert list(bucket.iterdir()) == []
    assert study._storage.get_study_system_attrs(study._study_id)[f"{INDEX_KEY}0"]["files"] == []


def with_file(folder: Path, name: str, data: bytes, commit) -> None:
    (folder / name).write_bytes(data)
    commit(folder)


@pytest.mark.timeout(180)
def test_sigterm_hands_the_trial_back_without_using_a_retry(cli, tmp_path):
    assert cli("init", "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--study", "ck",
               "--sampler", "random").returncode == 0
    # --max-retries 0: a trial handed back is continued all the same.
    url, log, procs = fleet(tmp_path, 3, extra=("--max-retries", "0", "--grace", "30"))
    victim = mid_trial(log, procs)
    victim.send_signal(signal.SIGTERM)
    out, err = victim.communicate(timeout=30)
    assert victim.returncode == 143, err
    assert "stopped by SIGTERM; its trial was handed back" in err
    number, stopped_at = map(int, (log / str(victim.pid)).read_text().splitlines()[-1].split())
    wait_all([p for p in procs if p is not victim], timeout=150)
    trials = assert_all_complete(url, tmp_path)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [number]
    assert failed[0].system_attrs[attrs.FAIL_REASON].startswith("preempted: ")
    # No retry used up anywhere: the continuation carries tunefleet:retry 0.
    assert {t.system_attrs.get(attrs.RETRY_COUNT, 0) for t in trials} == {0}
    retry = next(t for t in trials if t.system_attrs.get(attrs.RETRY_OF) == number)
    assert retry.state == TrialState.COMPLETE and retry.params == failed[0].params
    runs = steps_run(log)
    # Handed back at the end of a save: the continuation redoes nothing.
    assert runs[retry.number, stopped_at + 1] == 1 and runs[retry.number, stopped_at] == 0
    assert sum(runs.values()) == TRIALS * STEPS


@pytest.mark.timeout(120)
def test_the_grace_period_ends_a_trial_that_does_not_save(cli, tmp_path):
    """A step longer than --grace: the trial is interrupted, handed back all the same, and
    continues from its last checkpoint."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert cli("init", "--storage", url, "--study", "ck", "--sampler", "random").returncode == 0
    log = tmp_path / "steps"
    log.mkdir()
    begun = tmp_path / "begun"
    begun.mkdir()
    env = {"TF_STEP_LOG": str(log), "TF_STEPS": "3", "TF_BEGUN_LOG": str(begun)}
    [proc] = start_workers(1, url, "ck", 1, target=STEPPING, sleep="3", extra=("--grace", "0.5"),
                           env=env)
    # Step 1 has begun (its 3 s sleep): step 0's checkpoint is saved, and no save comes
    # before the grace period ends. (Stopped inside step 0's save, it would be handed back
    # at that save's end instead.)
    wait_until(lambda: any(p.read_text() == "0 1" for p in begun.iterdir()), 60,
               "step 1 to begin")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    [trial, waiting] = trials_of(url, "ck")
    assert trial.state == TrialState.FAIL and "grace period (0.5s) ended" in \
        trial.system_attrs[attrs.FAIL_REASON]
    assert waiting.state == TrialState.WAITING and waiting.system_attrs[attrs.RETRY_COUNT] == 0
    wait_all(start_workers(1, url, "ck", 1, target=STEPPING, sleep="0.1", env=env), timeout=60)
    runs = steps_run(log)
    assert runs == Counter({(0, 0): 1, (1, 1): 1, (1, 2): 1})


@pytest.mark.parametrize("command", ["worker", "run"])
def test_the_checkpoint_store_of_the_command_line_keeps_the_checkpoints(cli, tmp_path, command):
    """``--checkpoint-store module:function``, in storage mode (``worker``) and hub mode
    (``run``): with ``--keep-checkpoints`` the bucket holds each trial's last checkpoint."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    log = tmp_path / "steps"
    log.mkdir()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = cli(command, STEPPING, "--storage", url, "--study", "ck", "--n-trials", "2",
                 "--checkpoint-store", BUCKET, "--keep-checkpoints", "-q"
                 if command == "worker" else "--no-progress",
                 env={"TF_STEP_LOG": str(log), "TF_STEPS": "3", "TF_SLEEP": "0",
                      "TF_BUCKET": str(bucket)})
    assert result.returncode == 0, result.stderr
    assert len(list(bucket.iterdir())) == 2  # one file ("step") per trial
    assert list(tmp_path.glob("*.checkpoints")) == []


@pytest.mark.parametrize("args, says", [
    (("--checkpoint-store", "ftp://host/x"), "unknown scheme ftp://"),
    (("--checkpoint-store", "s3://bucket/folder"), "give a bucket alone (s3://BUCKET)"),
    (("--checkpoint-store", "optuna:create_study"), "Study has no open_reader, write, remove"),
    (("--checkpoint-store", BUCKET, "--checkpoint-dir", "x"), "or --checkpoint-store, not both"),
])
def test_a_wrong_checkpoint_store_is_one_line(cli, tmp_path, args, says):
    result = cli("worker", STEPPING, "--storage", f"sqlite:///{tmp_path / 's.db'}",
                 "--n-trials", "1", *args, env={"TF_BUCKET": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
