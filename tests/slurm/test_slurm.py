"""``tunefleet slurm``: the scripts it writes, run on a real single-node Slurm."""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tunefleet import _attrs as attrs

OBJECTIVES = Path(__file__).resolve().parents[1] / "storage_mode" / "objectives.py"


def _env(cluster) -> dict[str, str]:
    return {**os.environ, **cluster.env, "TF_SLEEP": "0.1"}


def sbatch_parses(script: Path, cluster) -> str:
    """Slurm's own parser on the script: ``sbatch --test-only`` reads every #SBATCH line and,
    with a controller, says when the job would start; without one it fails only on contact."""
    proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True,
                          env=_env(cluster), timeout=60)
    text = proc.stdout + proc.stderr
    assert not re.search(r"invalid|unrecognized|error: .*option", text, re.I), text
    if cluster.running:
        assert proc.returncode == 0 and "to start at" in text, text
    else:
        assert "Unable to contact slurm controller" in text or "connect" in text.lower(), text
    return text


def submit_and_wait(cli, args: tuple[str, ...], cwd: Path, cluster) -> str:
    """``tunefleet slurm ARGS --submit``, then wait until the job left the queue; its id."""
    submitted = cli(*args, "--submit", cwd=cwd, env=cluster.env)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"submitted job (\d+)", submitted.stdout).group(1)
    assert f"squeue -j {job}" in submitted.stdout

    def left_the_queue() -> bool:
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True,
                           env=_env(cluster))
        return q.returncode == 0 and not q.stdout.strip()

    try:
        wait_until(left_the_queue, 200, f"job {job} to leave the queue", interval=1)
    except AssertionError:
        subprocess.run(["scancel", job], env=_env(cluster))
        raise
    return job


def run_job(cli, args: tuple[str, ...], cwd: Path, cluster, study: str) -> str | None:
    """Submit the job and wait for it; its log, which says the best value. None (and a note)
    where Slurm's daemons cannot run on this machine."""
    if not cluster.running:
        not_running_note(cluster)
        return None
    job = submit_and_wait(cli, args, cwd, cluster)
    log = (cwd / f"tunefleet-{study}-{job}.out").read_text()
    assert "best value" in log, log
    return log


def assert_study_holds(url: str, study: str, total: int, log: str) -> list:
    trials = optuna.load_study(study_name=study, storage=url).get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == total, log
    assert all(t.state != TrialState.RUNNING for t in trials), log
    return done


def not_running_note(cluster) -> None:
    if not cluster.running:
        msg = (f"Slurm daemons cannot run on this machine ({cluster.why_not}); "
               "checked the script with sbatch's parser only")
        warnings.warn(msg)
        print(msg)


@pytest.mark.timeout(300)
def test_storage_mode_script_runs_to_completion(slurm_cluster, cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ("slurm", f"{OBJECTIVES}:slow", "--nodes", "1", "--tasks-per-node", "2",
            "--cpus-per-task", "1", "--time", "00:05:00", "--storage", url, "--study", "sl",
            "--n-trials", "12", "--sampler", "random")
    printed = cli(*args, cwd=tmp_path, env=slurm_cluster.env)
    assert printed.returncode == 0, printed.stderr
    script = tmp_path / "tunefleet-sl.sbatch"
    text = script.read_text()
    assert printed.stdout == text
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --time=00:05:00" in text
    assert " init --storage " in text and "--sampler random" in text
    assert re.search(r'srun --ntasks="\$SLURM_NTASKS".* worker .*objectives.py:slow', text)
    sbatch_parses(script, slurm_cluster)
    log = run_job(cli, args, tmp_path, slurm_cluster, "sl")
    if log is None:
        return
    done = assert_study_holds(url, "sl", 12, log)
    assert len({t.system_attrs[attrs.WORKER] for t in done}) == 2  # one worker per task


@pytest.mark.timeout(300)
def test_hub_mode_script(slurm_cluster, cli, tmp_path):
    r = cli("slurm", f"{OBJECTIVES}:slow", "--mode", "hub", "--nodes", "1", "--tasks-per-node",
            "2", "--gpus-per-task", "1", "--port", "29555", "--storage", "sqlite:///hub.db",
            "--study", "h", "--n-trials", "20", cwd=tmp_path, env=slurm_cluster.env)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert re.search(r'serve \S+objectives.py:slow --listen "tcp://\$HUB_HOST:\$PORT" '
                     r'--key-file "\$KEY_FILE" --n-trials "\$N_TRIALS" --storage "\$STORAGE" '
                     r'--study "\$STUDY" --no-progress &', text)
    assert re.search(r'srun .*worker --connect "tcp://\$HUB_HOST:\$PORT" --key-file "\$KEY_FILE"',
                     text)
    assert "PORT=29555" in text and "#SBATCH --gpus-per-task=1" in text
    assert "CUDA_VISIBLE_DEVICES" in text and " init " not in text
    assert subprocess.run(["bash", "-n", str(tmp_path / "tunefleet-h.sbatch")]).returncode == 0
    # The test node has no GPU: the same script without the GPU request, and the port
    # derived from the job id.
    args = ("slurm", f"{OBJECTIVES}:slow", "--mode", "hub", "--nodes", "1", "--tasks-per-node",
            "2", "--storage", "sqlite:///hub.db", "--study", "h", "--n-trials", "20",
            "--sampler", "random")
    nogpu = cli(*args, "--script", "nogpu.sbatch", cwd=tmp_path, env=slurm_cluster.env)
    assert nogpu.returncode == 0, nogpu.stderr
    assert "PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))" in nogpu.stdout
    assert "gpus-per-task" not in nogpu.stdout
    sbatch_parses(tmp_path / "nogpu.sbatch", slurm_cluster)
    log = run_job(cli, args, tmp_path, slurm_cluster, "h")
    if log is None:
        return
    done = assert_study_holds(f"sqlite:///{tmp_path / 'hub.db'}", "h", 20, log)
    # The hub's workers ran the trials (both tasks), the coordinator wrote them.
    assert len({t.system_attrs.get(attrs.WORKER) for t in done}) == 2, log
    assert (tmp_path / ".tunefleet-h.key").stat().st_mode & 0o077 == 0


def test_bad_options_are_one_line(cli, tmp_path):
    r = cli("slurm", "nofile.py:f", "--n-trials", "3", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
    r = cli("slurm", f"{OBJECTIVES}:slow", "--n-trials", "3", "--time", "soon", cwd=tmp_path)
    assert r.returncode == 2 and "--time" in r.stderr and "Traceback" not in r.stderr
