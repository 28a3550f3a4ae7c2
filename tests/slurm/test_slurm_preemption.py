"""``tunefleet slurm --signal --requeue`` on a real single-node Slurm: a study whose work needs
three times the job's time limit completes over the job's requeued runs, each continuing the
trials the previous one handed back from their checkpoints; and after ``scancel`` a new job
continues the unfinished trials from their checkpoints (issue 19).

Slurm's shortest time limit is one minute and it may signal up to a minute early, so the first
test lasts about four minutes: the work is 180 s of wall time on two workers, three times the
job's --time. Slurm holds a requeued job for two minutes before it may start again (its
BeginTime); the test releases it at once with ``scontrol update StartTime=now``, as a user may.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.slurm.test_slurm import _env, not_running_note
from tests.storage_mode.test_checkpoints import steps_run
from tests.storage_mode.test_fleet import trials_of
from tunefleet import _attrs as attrs

STEPPING = f"{Path(__file__).resolve().parents[1] / 'storage_mode' / 'checkpointed.py'}:stepping"
STEPS = 20


#: The states of a job that has left for good (``squeue --states=all`` shows it a while longer).
_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
          "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _squeue(job: str, cluster) -> str:
    """JOB's state and reason, in every state: a job being requeued is in states that plain
    ``squeue`` does not list, and must not look gone."""
    q = subprocess.run(["squeue", "-h", "--states=all", "-j", job, "-o", "%T %r"],
                       capture_output=True, text=True, env=_env(cluster))
    assert q.returncode == 0 or "Invalid job id" in q.stderr, q.stderr
    return q.stdout.strip()


def _submit(cli, args: tuple[str, ...], cwd: Path, cluster, env: dict[str, str]) -> str:
    r = cli(*args, "--submit", cwd=cwd, env={**cluster.env, **env})
    assert r.returncode == 0, r.stderr
    return re.search(r"submitted job (\d+)", r.stdout).group(1)


def _stepds(job: str) -> list[int]:
    """The slurmstepd processes of JOB on this node ("slurmstepd: [N.batch]", "[N.0]")."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or ())
        if line.startswith(f"slurmstepd: [{job}."):
            found.append(proc.pid)
    return found


def _wait_gone(job: str, cluster, timeout: float) -> int:
    """Wait until JOB left the queue, releasing Slurm's two-minute hold of a requeued job on
    the way; how many times it was released."""
    released: list[str] = []
    seen: list[str] = []
    held_since: list[float] = []

    def gone() -> bool:
        state = _squeue(job, cluster)
        if not seen or seen[-1] != state:
            seen.append(state)
        if state.startswith("PENDING") and "BeginTime" in state:
            # Released after 20 s and once the node has no slurmstepd of the job left, not at
            # once: slurmd refuses to launch a job whose last run it is still ending ("Job N
            # already killed, do not launch batch job"), and the run fails (JobLaunchFailure).
            if not held_since:
                held_since.append(time.monotonic())
            if time.monotonic() - held_since[0] >= 20 and not _stepds(job):
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"],
                               check=True, env=_env(cluster))
                released.append(state)
                held_since.clear()
        return not state or state.split()[0] in _ENDED

    try:
        wait_until(gone, timeout, f"job {job} to leave the queue", interval=1)
    except AssertionError:
        subprocess.run(["scancel", job], env=_env(cluster))
        raise
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                           env=_env(cluster))
    print(f"job {job}: states {seen}; {shown.stdout}")
    return len(released)


def _args(url: str, total: int, *extra: str) -> tuple[str, ...]:
    return ("slurm", STEPPING, "--nodes", "1", "--tasks-per-node", "2", "--cpus-per-task", "1",
            "--storage", url, "--study", "pre", "--n-trials", str(total), "--sampler", "random",
            *extra)


@pytest.mark.timeout(1500)  # on a loaded machine a run of the job does less: more runs
def test_signal_and_requeue_finish_a_study_three_times_the_time_limit(slurm_cluster, cli,
                                                                      tmp_path):
    total, sleep = 36, 0.5  # 36 x 20 x 0.5 s = 360 s on 2 workers: 3 x --time 1 (minute)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = _args(url, total, "--time", "1", "--signal", "30", "--requeue", "--grace", "5")
    printed = cli(*args, cwd=tmp_path, env=slurm_cluster.env)
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout
    assert "#SBATCH --signal=B:USR1@30" in text and "#SBATCH --requeue" in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and " --grace 5" in text
    assert subprocess.run(["bash", "-n", str(tmp_path / "tunefleet-pre.sbatch")]).returncode == 0
    if not slurm_cluster.running:
        not_running_note(slurm_cluster)
        return
    log = tmp_path / "steps"
    log.mkdir()
    env = {"TF_STEP_LOG": str(log), "TF_STEPS": str(STEPS), "TF_SLEEP": str(sleep)}
    job = _submit(cli, args, tmp_path, slurm_cluster, env)
    released = _wait_gone(job, slurm_cluster, 1400)
    out = (tmp_path / f"tunefleet-pre-{job}.out").read_text()
    assert "best value" in out, out
    requeued = out.count("workers stopped before the time limit; requeued")
    assert requeued >= 2 and released == requeued, out  # at least three runs of the job
    trials = trials_of(url, "pre")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == total, out
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    handed = [t for t in trials if t.state == TrialState.FAIL]
    assert handed and all(t.system_attrs[attrs.FAIL_REASON].startswith("preempted: ")
                          for t in handed)
    assert {t.system_attrs.get(attrs.RETRY_COUNT, 0) for t in trials} == {0}
    ran = sum(steps_run(log).values())
    assert ran <= 1.1 * total * STEPS, (ran, out)


@pytest.mark.timeout(300)
def test_a_new_job_continues_the_trials_of_a_cancelled_one(slurm_cluster, cli, tmp_path):
    if not slurm_cluster.running:
        not_running_note(slurm_cluster)
        return
    total = 8
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = _args(url, total, "--time", "5", "--grace", "10")
    log = tmp_path / "steps"
    log.mkdir()
    gate = tmp_path / "gate"  # each worker holds at step 3 of its first trial until SIGTERM
    gate.touch()
    env = {"TF_STEP_LOG": str(log), "TF_STEPS": str(STEPS), "TF_SLEEP": "0.3",
           "TF_GATE": str(gate)}
    job = _submit(cli, args, tmp_path, slurm_cluster, env)

    def both_held() -> list[str] | None:
        held = [p.read_text() for p in tmp_path.glob("held.*") if p.suffix != ".tmp"]
        return held if len(held) == 2 else None

    held = wait_until(both_held, 120, "both workers held mid-trial by the gate", interval=0.1)
    assert sorted(int(h.split()[0]) for h in held) == [0, 1], held
    subprocess.run(["scancel", job], check=True, env=_env(slurm_cluster))
    _wait_gone(job, slurm_cluster, 120)
    gate.unlink()  # the next job's workers run freely

    def handed_back() -> list | None:
        """The two trials' hand-back, written by the workers as Slurm ends the job (squeue may
        show it cancelled while they still write)."""
        trials = trials_of(url, "pre")
        return trials if not [t for t in trials if t.state == TrialState.RUNNING] else None

    after_cancel = wait_until(handed_back, 60, "no RUNNING trial after the cancel")
    handed = [t for t in after_cancel if t.state == TrialState.FAIL]
    assert len(handed) == 2
    assert sum(t.state == TrialState.WAITING for t in after_cancel) == 2
    saved = {t.number: max(s for (n, s) in steps_run(log) if n == t.number) for t in handed}

    job2 = _submit(cli, args, tmp_path, slurm_cluster, env)
    assert _wait_gone(job2, slurm_cluster, 200) == 0
    out = (tmp_path / f"tunefleet-pre-{job2}.out").read_text()
    assert "best value" in out, out
    trials = trials_of(url, "pre")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == total, out
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = steps_run(log)
    for number, step in saved.items():
        retry = next(t for t in trials if t.system_attrs.get(attrs.RETRY_OF) == number)
        assert retry.state == TrialState.COMPLETE and retry.system_attrs[attrs.RETRY_COUNT] == 0
        # The new job began where the cancelled one's checkpoint left the trial.
        assert runs[retry.number, step + 1] == 1 and runs[retry.number, 0] == 0
    assert sum(runs.values()) <= 1.1 * total * STEPS
