"""``tunefleet slurm`` options: partition, account, qos, mem, gres, constraint, any #SBATCH line,
one log file per task, container binds; the script run on the real single-node Slurm."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.slurm.test_slurm import (OBJECTIVES, assert_study_holds, not_running_note,
                                    sbatch_parses, submit_and_wait)


def _sbatch_lines(text: str) -> list[str]:
    return [line[len("#SBATCH "):] for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_every_option_becomes_its_sbatch_line(cli, tmp_path):
    r = cli("slurm", f"{OBJECTIVES}:slow", "--n-trials", "10", "--partition", "gpu",
            "--account", "proj42", "--qos", "high", "--mem", "16G", "--gres", "gpu:a100:2",
            "--constraint", "a100|h100", "--sbatch", "--mail-type=END",
            "--sbatch", "#SBATCH --exclusive", "--output", "logs/%x-%j-%t.out",
            "--error", "logs/%x-%j-%t.err", "--container", "tf.sif", "--bind", "/data",
            "--bind", "/scratch:/scratch2", "--gpus-per-task", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = _sbatch_lines(r.stdout)
    for expected in ("--partition=gpu", "--account=proj42", "--qos=high", "--mem=16G",
                     "--gres=gpu:a100:2", "--constraint=a100|h100", "--mail-type=END",
                     "--exclusive", "--output=logs/%x-%j-batch.out",
                     "--error=logs/%x-%j-batch.err", "--gpus-per-task=1"):
        assert expected in lines, (expected, lines)
    # extra lines come last, so that they can override ours
    assert lines[-2:] == ["--mail-type=END", "--exclusive"]
    # the workers' srun writes one file per task
    assert re.search(r"srun [^\n]*--output=logs/%x-%j-%t\.out --error=logs/%x-%j-%t\.err",
                     r.stdout), r.stdout
    assert "--bind /data --bind /scratch:/scratch2 tf.sif" in r.stdout
    assert (tmp_path / "logs").is_dir()  # Slurm opens logs only in existing folders
    assert "tail -f logs/tunefleet-tunefleet-JOB-batch.out" in r.stderr
    assert subprocess.run(["bash", "-n", str(tmp_path / "tunefleet-tunefleet.sbatch")]
                          ).returncode == 0


@pytest.mark.parametrize("mode", ["storage", "hub"])
def test_the_storage_timeout_reaches_who_opens_the_storage(cli, tmp_path, mode):
    """Storage mode: every worker; hub mode: the coordinator (workers never open it)."""
    r = cli("slurm", f"{OBJECTIVES}:slow", "--n-trials", "10", "--mode", mode,
            "--storage-timeout", "900", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if "--storage-timeout" in l)
    assert line.split('"${TUNEFLEET[@]}" ')[1].startswith("worker" if mode == "storage"
                                                          else "serve"), line
    assert "--storage-timeout 900" in line


def test_option_mistakes_are_one_line(cli, tmp_path):
    for args, words in ((("--bind", "/data"), "--container"),
                        (("--mem", "lots"), "--mem"),
                        (("--sbatch", "exclusive"), "one sbatch option"),
                        (("--sampler", "grid"), "--search-space")):
        r = cli("slurm", f"{OBJECTIVES}:slow", "--n-trials", "3", *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
        assert words in r.stderr, r.stderr


def test_grid_search_space_reaches_init(cli, tmp_path):
    (tmp_path / "space.json").write_text('{"x": [1, 2], "y": [0]}')
    r = cli("slurm", f"{OBJECTIVES}:slow", "--n-trials", "2", "--sampler", "grid",
            "--search-space", "space.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"--sampler grid --search-space {tmp_path / 'space.json'}" in r.stdout


def test_per_task_logs_on_real_slurm(slurm_cluster, cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ("slurm", f"{OBJECTIVES}:slow", "--nodes", "1", "--tasks-per-node", "2",
            "--partition", "debug", "--sbatch", "--comment=tunefleet-test",
            "--output", "logs/%x-%j-%t.out", "--error", "logs/%x-%j-%t.err",
            "--storage", url, "--study", "pt", "--n-trials", "8", "--sampler", "random")
    printed = cli(*args, cwd=tmp_path, env=slurm_cluster.env)
    assert printed.returncode == 0, printed.stderr
    sbatch_parses(tmp_path / "tunefleet-pt.sbatch", slurm_cluster)
    if not slurm_cluster.running:
        not_running_note(slurm_cluster)
        return
    job = submit_and_wait(cli, args, tmp_path, slurm_cluster)
    logs = tmp_path / "logs"
    batch = (logs / f"tunefleet-pt-{job}-batch.out").read_text()
    assert "best value" in batch, batch
    assert_study_holds(url, "pt", 8, batch)
    # one stdout and one stderr file per worker task, named by Slurm from the pattern
    for task in (0, 1):
        assert (logs / f"tunefleet-pt-{job}-{task}.out").exists(), sorted(logs.iterdir())
        assert (logs / f"tunefleet-pt-{job}-{task}.err").exists(), sorted(logs.iterdir())
    comment = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                             env={**os.environ, **slurm_cluster.env})
    if comment.returncode == 0 and comment.stdout:  # still in the controller's memory
        assert "Comment=tunefleet-test" in comment.stdout, comment.stdout
