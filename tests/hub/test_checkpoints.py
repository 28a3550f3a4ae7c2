"""Checkpoints that follow a trial (issue 19), hub mode on local workers: workers SIGKILLed
while trials run, a worker stopped with SIGTERM (a preemption), a whole ``tunefleet run``
killed or stopped and run again, and Optuna's ``pytorch_checkpoint`` recipe unchanged.

The objectives (``tests/hub/checkpoint_objectives.py``) record every step they begin; the
tests count work by those records, and synchronise on them, never on a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

import tunefleet
from tests.helpers import wait_until
from tests.hub import checkpoint_objectives as co
from tunefleet import _attrs as attrs

ROOT = Path(__file__).resolve().parents[2]
TARGET = f"{co.__file__}:steps"


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def continuation(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The trial that continued trial ``number`` (its retry)."""
    [retry] = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == number]
    return retry


def no_checkpoint_left(folder: Path) -> bool:
    """The checkpoints of finished trials were removed, and the folders they left empty."""
    return not folder.exists()


@pytest.fixture
def settings(monkeypatch, tmp_path):
    """The objectives' settings (forked workers inherit them); the folder of their records."""
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("TF_CK_LOG", str(log))
    monkeypatch.setenv("TF_CK_SAVE", "1")
    return log


# -- 1. workers SIGKILLed every second --------------------------------------------------------

@pytest.mark.timeout(300)
def test_six_workers_killed_redo_at_most_a_tenth_of_the_work(tmp_path):
    # The figures: 3 workers, 9 trials of 20 steps x 0.1 s, a checkpoint each step,
    # 6 kills. At one kill every 1.5 s the run (about 7 s with checkpoints) ends before the
    # sixth kill, so the kills come every second here (benchmarks/checkpoints.py runs the
    # 1.5 s schedule, and the same run without checkpoints).
    study, killed, _ = co.run_with_kills(tmp_path, kills=6, every=1.0)
    assert len(killed) == 6, killed
    got = states(study)
    assert got.get("COMPLETE") == 9 and "RUNNING" not in got and "WAITING" not in got, got
    assert got.get("FAIL") == 6, got  # each kill hit a trial, failed and continued
    ran = co.recorded(tmp_path / "log")
    assert len(ran) <= 1.1 * 9 * 20, len(ran)
    for pid, number, step in killed:
        assert not co.alive(pid)
        assert study.trials[number].state == TrialState.FAIL
        assert "SIGKILL" in study.trials[number].system_attrs[attrs.FAIL_REASON]
        retry = continuation(study, number)
        # It went on from the last step saved before the kill (the step seen begun then, or
        # the next one), not from step 0. Read from the steps it began: a retry killed in
        # turn before its first call to the coordinator has only the user attributes it
        # inherited.
        began = [s for _, n, s in ran if n == retry.number]
        # (none: its checkpoint held the last step)
        assert min(began, default=20) >= step, (number, step, retry.number, sorted(began))
        first = study.trials[number].system_attrs.get("failed_trial", number)
        assert retry.system_attrs["failed_trial"] == first  # the lineage's checkpoints
    assert no_checkpoint_left(tmp_path / "ck.db.checkpoints")


# -- 2. SIGTERM to a worker: a preemption -----------------------------------------------------

def _sigterm_a_worker(log: Path, done: threading.Event, out: list) -> None:
    """SIGTERM the first worker seen at step 3 or later of a trial."""
    try:
        def busy():
            if done.is_set():
                raise AssertionError("the run ended before a worker reached step 3")
            return next(((pid, n, s) for pid, (n, s) in co.now(log).items() if 3 <= s < 8),
                        None)

        pid, number, step = wait_until(busy, 120, "a worker at step 3 of a trial",
                                       interval=0.02)
        os.kill(pid, signal.SIGTERM)
        out.append((pid, number, step))
    except BaseException as exc:  # noqa: BLE001 (re-raised by the test)
        out.append(exc)


@pytest.mark.timeout(300)
def test_sigterm_hands_the_trial_back_without_using_up_a_retry(tmp_path, settings,
                                                               monkeypatch):
    monkeypatch.setenv("TF_CK_STEPS", "10")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/ck.db")
    done, out = threading.Event(), []
    stopper = threading.Thread(target=_sigterm_a_worker, args=(settings, done, out))
    stopper.start()
    try:
        tunefleet.optimize(study, co.steps, n_trials=4, n_workers=2, max_retries=0)
    finally:
        done.set()
        stopper.join(60)
    [got] = out
    if isinstance(got, BaseException):
        raise got
    pid, number, _ = got
    assert not co.alive(pid)  # the stopped worker left
    got_states = states(study)
    assert got_states == {"COMPLETE": 4, "FAIL": 1}, got_states
    stopped = study.trials[number]
    assert stopped.state == TrialState.FAIL
    assert "handed the trial back" in stopped.system_attrs[attrs.FAIL_REASON]
    retry = continuation(study, number)
    assert retry.state == TrialState.COMPLETE
    # No retry used up: max_retries=0 still let it continue, and its count is unchanged.
    assert retry.system_attrs[attrs.RETRY_COUNT] == stopped.system_attrs.get(attrs.RETRY_COUNT, 0)
    assert retry.system_attrs["failed_trial"] == number
    assert retry.params == stopped.params
    # It went on right after the checkpoint the stopped worker saved last.
    last = max(s for p, n, s in co.recorded(settings) if n == number)
    assert retry.user_attrs["start"] == last + 1 > 0
    assert retry.user_attrs["pid"] != pid
    assert no_checkpoint_left(tmp_path / "ck.db.checkpoints")


# -- 3. a whole run stopped, and run again -----------------------------------------------------

def _run_command(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "tunefleet", "run", TARGET, "--n-trials", "6", "--workers",
            "2", "--storage", f"sqlite:///{tmp_path}/run.db", "--sampler", "random",
            "--no-progress", "--grace", "0.5", "--max-retries", "3"]


def _start(tmp_path: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CK_LOG=str(log), TF_CK_STEPS="15")
    return subprocess.Popen(_run_command(tmp_path), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tunefleet", storage=f"sqlite:///{tmp_path}/run.db")


def _stop_when_two_are_busy(first: subprocess.Popen, log: Path, how: str) -> set[int]:
    """Once both workers of FIRST (a run of 15-step trials) are past step 3 of a trial, kill
    the run and its workers at once (``sigkill-all``) or SIGTERM the run (``sigterm``); the
    trials cut short, once every process of the run has gone."""

    def two_busy() -> bool:
        if first.poll() is not None:
            raise AssertionError(f"the run ended early: {first.communicate()[1][-2000:]}")
        return sum(3 <= s < 8 for _, s in co.now(log).values()) == 2

    wait_until(two_busy, 120, "both workers past step 3 of a trial", interval=0.02)
    if how == "sigkill-all":
        os.killpg(first.pid, signal.SIGKILL)
    else:
        os.kill(first.pid, signal.SIGTERM)
    first.communicate(timeout=60)
    wait_until(lambda: not any(co.alive(pid) for pid in co.now(log)), 30,
               "the first run's workers to exit")
    cut = {n for _, (n, s) in co.now(log).items() if s < 14}
    assert len(cut) == 2, co.now(log)
    return cut


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["sigkill-all", "sigterm"])
def test_a_stopped_run_run_again_continues_its_trials(tmp_path, how):
    """``sigkill-all``: the run and its workers killed at once (the job's processes ended).
    ``sigterm``: the coordinator stopped as ``kill`` or Slurm stops it, with a short grace."""
    log = tmp_path / "log"
    log.mkdir()
    cut = _stop_when_two_are_busy(_start(tmp_path, log), log, how)
    second = _start(tmp_path, log)
    _, err = second.communicate(timeout=240)
    assert second.returncode == 0, err[-3000:]
    study = _study(tmp_path)
    got = states(study)
    assert got.get("COMPLETE") == 6, got  # the budget exactly
    assert "RUNNING" not in got and "WAITING" not in got, got
    for number in cut:
        lineage = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        done = [t for t in lineage if t.state == TrialState.COMPLETE]
        assert len(done) == 1, [(t.number, t.state) for t in lineage]
        first_step = min(s for _, n, s in co.recorded(log) if n == done[0].number)
        assert first_step == done[0].user_attrs["start"] > 0
    assert no_checkpoint_left(tmp_path / "run.db.checkpoints")


# -- 6. Optuna's pytorch_checkpoint recipe, unchanged -------------------------------------------

EPOCHS = 8


def torch_recipe(trial: optuna.Trial) -> float:
    """The pattern of optuna-examples' ``pytorch/pytorch_checkpoint.py``: checkpoints in a
    folder keyed by ``RetryFailedTrialCallback.retried_trial_number(trial)`` (or the trial's
    own number), written to a temporary file and moved into place each epoch. It kills its own
    worker after the epoch TF_KILL_EPOCH of trial TF_KILL_TRIAL, once."""
    import torch

    checkpoint_dir = os.environ["TF_RECIPE_DIR"]
    torch.manual_seed(0)
    data = torch.randn(64, 4)
    target = data @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = torch.nn.Linear(4, 1)
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    # Optuna 5 removed ``Trial.system_attrs``, which ``retried_trial_number`` reads: under it
    # (as under plain ``study.optimize``) the recipe passes the running trial's FrozenTrial.
    frozen = trial if hasattr(optuna.trial.Trial, "system_attrs") else \
        trial.study.trials[trial.number]
    trial_number = RetryFailedTrialCallback.retried_trial_number(frozen)
    trial_checkpoint_dir = os.path.join(checkpoint_dir, str(trial_number))
    checkpoint_path = os.path.join(trial_checkpoint_dir, "model.pt")
    checkpoint_exists = os.path.isfile(checkpoint_path)

    if trial_number is not None and checkpoint_exists:
        checkpoint = torch.load(checkpoint_path)
        epoch_begin = checkpoint["epoch"] + 1
        model.load_state_dict(checkpoint["model_state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        loss = checkpoint["loss"]
    else:
        trial_checkpoint_dir = os.path.join(checkpoint_dir, str(trial.number))
        checkpoint_path = os.path.join(trial_checkpoint_dir, "model.pt")
        epoch_begin = 0

    os.makedirs(trial_checkpoint_dir, exist_ok=True)
    # A checkpoint may be corrupted when the process is killed during `torch.save`: save to a
    # temporary file first, then move it into place.
    tmp_checkpoint_path = os.path.join(trial_checkpoint_dir, "tmp_model.pt")
    trial.set_user_attr("epoch_begin", epoch_begin)

    for epoch in range(epoch_begin, EPOCHS):
        optimizer.zero_grad()
        loss_t = torch.nn.functional.mse_loss(model(data), target)
        loss_t.backward()
        optimizer.step()
        loss = loss_t.item()
        trial.report(loss, epoch)
        torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                    "optimizer_state_dict": optimizer.state_dict(), "loss": loss},
                   tmp_checkpoint_path)
        shutil.move(tmp_checkpoint_path, checkpoint_path)
        if (str(trial.number) == os.environ.get("TF_KILL_TRIAL") and trial_number is None
                and epoch == int(os.environ["TF_KILL_EPOCH"])):
            os.kill(os.getpid(), signal.SIGKILL)
    return loss


@pytest.mark.timeout(300)
def test_optunas_pytorch_checkpoint_recipe_works_in_hub_mode(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("TF_RECIPE_DIR", str(tmp_path / "pytorch_checkpoint"))
    monkeypatch.setenv("TF_KILL_TRIAL", "2")
    monkeypatch.setenv("TF_KILL_EPOCH", "3")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/recipe.db",
                                sampler=optuna.samplers.RandomSampler(seed=1))
    tunefleet.optimize(study, torch_recipe, n_trials=4, n_workers=2)
    got = states(study)
    assert got == {"COMPLETE": 4, "FAIL": 1}, got
    killed = study.trials[2]
    assert "SIGKILL" in killed.system_attrs[attrs.FAIL_REASON]
    retry = continuation(study, 2)
    assert RetryFailedTrialCallback.retried_trial_number(retry) == 2
    assert retry.user_attrs["epoch_begin"] == 4  # from the checkpoint of epoch 3
    # Continued training gives what an uninterrupted run of the same parameters gives.
    plain = optuna.create_study()
    plain.enqueue_trial(retry.params)
    monkeypatch.delenv("TF_KILL_TRIAL")
    plain.optimize(torch_recipe, n_trials=1)
    assert retry.value == pytest.approx(plain.trials[0].value, rel=1e-5)
    assert list(retry.intermediate_values) == list(range(4, EPOCHS))


def _no_checkpoint(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1, 1) ** 2


def test_a_study_that_never_checkpoints_leaves_no_folder_beside_its_storage(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/plain.db")
    tunefleet.optimize(study, _no_checkpoint, n_trials=4, n_workers=2)
    assert len(study.trials) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.db"]


# -- 7. checkpoints in an Optuna artifact store ------------------------------------------------

def _artifact_index(study: optuna.Study) -> dict[str, object]:
    attrs_ = study._storage.get_study_system_attrs(study._study_id)
    return {k: v for k, v in attrs_.items() if k.startswith("tunefleet:checkpoint:")}


@pytest.mark.timeout(300)
def test_checkpoints_in_an_artifact_store_follow_killed_workers(tmp_path):
    """``checkpoint_store=FileSystemArtifactStore(...)``: every worker streams its checkpoints
    to the coordinator, which uploads them; retries of killed workers continue from them, and
    the artifacts of finished trials are removed."""
    from optuna.artifacts import FileSystemArtifactStore

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    study, killed, _ = co.run_with_kills(tmp_path, kills=3, every=1.0,
                                         checkpoint_store=FileSystemArtifactStore(bucket))
    assert len(killed) == 3, killed
    got = states(study)
    assert got == {"COMPLETE": 9, "FAIL": 3}, got
    for _, number, step in killed:
        retry = continuation(study, number)  # (it may have been killed in turn)
        if step >= 2:  # a checkpoint of step (step - 1) was surely uploaded before the kill
            assert retry.user_attrs["start"] >= step, (number, step, retry.user_attrs)
    assert any(continuation(study, n).user_attrs["start"] > 0 for _, n, _ in killed)
    assert len(co.recorded(tmp_path / "log")) <= 1.1 * 9 * 20
    # Finished trials' checkpoints are gone from the bucket, and their index entries too.
    assert list(bucket.iterdir()) == []
    stored = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path}/ck.db")
    index = _artifact_index(stored)
    assert index and all(v["files"] == [] for v in index.values()), index
    assert not (tmp_path / "ck.db.checkpoints").exists()  # nothing went beside the file


def test_checkpoint_store_is_checked_in_one_line(tmp_path):
    study = optuna.create_study()
    with pytest.raises(tunefleet.OptionError, match="must be an Optuna artifact store"):
        tunefleet.optimize(study, _no_checkpoint, n_trials=1, checkpoint_store=str(tmp_path))
    with pytest.raises(tunefleet.OptionError, match="not both"):
        tunefleet.optimize(study, _no_checkpoint, n_trials=1, checkpoint_dir=str(tmp_path),
                           checkpoint_store=object())
    assert study.trials == []


ARTIFACT_RUN = """
import optuna, tunefleet
from optuna.artifacts import FileSystemArtifactStore
from tests.hub import checkpoint_objectives as co
study = optuna.create_study(study_name="tunefleet", storage="sqlite:///run.db",
                            load_if_exists=True, sampler=optuna.samplers.RandomSampler())
tunefleet.optimize(study, co.steps, n_trials=6, n_workers=2, max_retries=3,
                   checkpoint_store=FileSystemArtifactStore("bucket"))
"""


@pytest.mark.timeout(300)
def test_a_killed_run_run_again_continues_from_the_artifact_store(tmp_path):
    """The index of the checkpoints is in the study's storage: a run killed whole (coordinator
    and workers at once) and run again continues its cut trials from the artifact store."""
    log = tmp_path / "log"
    log.mkdir()
    (tmp_path / "bucket").mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CK_LOG=str(log), TF_CK_STEPS="15")

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", ARTIFACT_RUN], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    cut = _stop_when_two_are_busy(start(), log, "sigkill-all")
    assert list((tmp_path / "bucket").iterdir())  # their checkpoints are in the bucket
    second = start()
    _, err = second.communicate(timeout=240)
    assert second.returncode == 0, err[-3000:]
    study = _study(tmp_path)
    got = states(study)
    assert got.get("COMPLETE") == 6 and "RUNNING" not in got and "WAITING" not in got, got
    for number in cut:
        lineage = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        [done] = [t for t in lineage if t.state == TrialState.COMPLETE]
        assert done.user_attrs["start"] >= 3, (number, done.user_attrs)
    assert list((tmp_path / "bucket").iterdir()) == []


def test_an_upload_cut_short_is_removed_when_the_study_is_run_again(tmp_path):
    """A coordinator killed in the middle of an upload: the files it wrote are found by the
    prefix the index named before the upload began, and removed by the next run; a whole
    checkpoint stays and is read back byte for byte."""
    from optuna.artifacts import FileSystemArtifactStore

    from tunefleet.checkpoint import ArtifactCheckpoints

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    artifacts = FileSystemArtifactStore(bucket)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    first = ArtifactCheckpoints(artifacts, study._storage, study._study_id)
    saved = first.begin(0)
    (saved / "sub").mkdir()
    (saved / "sub" / "state.bin").write_bytes(b"x" * 3000)
    (saved / "step").write_text("4")
    first.commit(0, saved, 0)
    assert len(list(bucket.iterdir())) == 2
    cut = first.begin(0)  # the next save: its upload is cut after one file
    _, prefix = first._uploads[cut]
    with open(tmp_path / "partial", "wb+") as f:  # what the cut upload wrote
        f.write(b"y" * 10)
        f.seek(0)
        artifacts.write(f"{prefix}-0", f)
    assert len(list(bucket.iterdir())) == 3
    again = ArtifactCheckpoints(artifacts, study._storage, study._study_id)  # the rerun
    assert len(list(bucket.iterdir())) == 2
    version, files = again.manifest(0)
    assert files == [("step", 1), ("sub/state.bin", 3000)]
    assert again.read(0, version, "sub/state.bin", 0, 1000) == b"x" * 1000
    assert again.read(0, version, "sub/state.bin", 1000, 5000) == b"x" * 2000
    assert again.read(0, version, "step", 0, 10) == b"4"
    again.remove(0)
    assert list(bucket.iterdir()) == [] and again.manifest(0) is None


def _saves_once_if_first(trial: optuna.Trial) -> float:
    if trial.number == 0:
        with tunefleet.checkpoint.save(trial) as d:
            (d / "state").write_bytes(b"x" * 1000)
    return float(trial.number)


def test_an_upload_to_the_artifact_store_does_not_stop_the_other_trials(tmp_path):
    """The keeper uploads on a thread of its own: while trial 0's save is uploading (a store
    whose write waits), the other worker's trials go on and are stored; the upload is let go
    by the callback of the fourth of them. With the upload on the coordinator's thread, no
    trial would end meanwhile, and the write would give up waiting after 120 s."""
    from optuna.artifacts import FileSystemArtifactStore

    writing, release = threading.Event(), threading.Event()
    released_by: list[str] = []

    class SlowBucket(FileSystemArtifactStore):
        def write(self, artifact_id, content_body):
            writing.set()
            if not release.wait(120):
                released_by.append("timeout")
            super().write(artifact_id, content_body)

    def let_go(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ended = sum(t.state == TrialState.COMPLETE and t.number != 0 for t in study.trials)
        if writing.is_set() and ended >= 4 and not release.is_set():
            released_by.append("callback")
            release.set()

    (tmp_path / "bucket").mkdir()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    tunefleet.optimize(study, _saves_once_if_first, n_trials=8, n_workers=2,
                       checkpoint_store=SlowBucket(tmp_path / "bucket"), keep_checkpoints=True,
                       callbacks=[let_go])
    assert released_by == ["callback"]
    assert states(study) == {"COMPLETE": 8}
    assert len(list((tmp_path / "bucket").iterdir())) == 1  # trial 0's save, kept
