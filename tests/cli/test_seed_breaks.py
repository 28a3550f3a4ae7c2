"""What the seed users tripped on (issue 22, item 2), each as they met it: grid for peers, the
Tuner on Dask workers without GPU resources, passwords in messages, the P2P flags on the hub
example, brute force on a continuous or exhausted space, the Slurm hint's log file, the seed
tuner's argument names, and options from TUNEFLEET_... variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPACES = '''
import optuna


def continuous(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1, 1) ** 2


def points21(trial: optuna.Trial) -> float:
    return (trial.suggest_int("x", 0, 20) - 7) ** 2


def grid(trial: optuna.Trial) -> float:
    return (trial.suggest_int("x", 0, 9) - 7) ** 2
'''
PASSWORD = "optuna_password"
MARIADB = f"mysql://optuna_user:{PASSWORD}@127.0.0.1:3306/optuna"


@pytest.fixture
def spaces(tmp_path):
    path = tmp_path / "spaces.py"
    path.write_text(SPACES)
    return path


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_grid_works_for_peers(cli, spaces, tmp_path):
    (tmp_path / "space.json").write_text('{"x": [0, 3, 7, 9]}')
    r = cli("peer", f"{spaces}:grid", "--sampler", "grid", "--search-space", "space.json",
            "-r", "2", "-t", "2", "--alone-wait", "0", "-q", "-b", "tcp://127.0.0.1:0",
            "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["best_params"] == {"x": 7} and out["n_trials"] == 4, out
    # the file is the grid of --sampler grid, as for tunefleet run
    r = cli("peer", f"{spaces}:grid", "--search-space", "space.json", "-r", "1",
            "--alone-wait", "0", "-q", "-b", "tcp://127.0.0.1:0", cwd=tmp_path)
    assert r.returncode == 2 and "--sampler grid" in _one_line(r.stderr), r.stderr


@pytest.mark.timeout(90)  # it used to wait for ever
def test_tuner_on_dask_workers_without_gpus_says_so():
    distributed = pytest.importorskip("distributed")
    from tunefleet.errors import UsageError
    from tunefleet.trainer import Tuner

    class Quiet(Tuner):
        def get_suggested_params(self, trial):
            return {"lr": trial.suggest_float("lr", 1e-3, 1e-1)}

    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        started = time.monotonic()
        with pytest.raises(UsageError) as err:
            Quiet("no-gpus", storage=":memory:", client=client, gpus=2, n_trials=2,
                  verbose=False).run()
        assert time.monotonic() - started < 30
    message = str(err.value)
    assert "\n" not in message and "GPU" in message and "resources=" in message, message


def test_no_message_shows_the_password(capsys, monkeypatch, tmp_path):
    from tunefleet.cli._hub import run_hub_command

    study = optuna.create_study()
    run_hub_command(study, MARIADB, False, lambda: study.optimize(lambda t: 1.0, n_trials=1))
    err = capsys.readouterr().err
    assert "saved in mysql://optuna_user:***@" in err and "tunefleet best" in err, err
    assert PASSWORD not in err

    monkeypatch.setattr(sys, "argv", ["tunefleet", "run", "f.py:o", "--storage", MARIADB])

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit):
        run_hub_command(study, MARIADB, False, interrupted)
    err = capsys.readouterr().err
    assert "Run the same command again" in err and PASSWORD not in err, err


def test_slurm_messages_and_batch_log_hide_the_password(cli, spaces, tmp_path):
    r = cli("slurm", f"{spaces}:grid", "--n-trials", "3", "--storage", MARIADB, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stderr and "optuna_user:***@" in r.stderr, r.stderr
    echo = [line for line in r.stdout.splitlines() if line.startswith("echo ")]
    assert echo and PASSWORD not in echo[0], echo


def test_hub_example_refuses_p2p_flags():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quadratic.py"), "-u", "seed",
                        "-r", "10"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "examples/p2p/quadratic.py" in _one_line(r.stderr) and not r.stdout


def test_bruteforce_on_a_continuous_parameter_is_one_line(cli, spaces, tmp_path):
    r = cli("run", f"{spaces}:continuous", "--sampler", "bruteforce", "--n-trials", "5",
            "--workers", "2", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "step=" in _one_line(r.stderr) and "Traceback" not in r.stderr


def test_bruteforce_says_when_the_space_is_exhausted(cli, spaces, tmp_path):
    r = cli("run", f"{spaces}:points21", "--sampler", "bruteforce", "--n-trials", "30",
            "--workers", "4", "--no-progress", "--storage", "sqlite:///s.db", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "exhausted" in r.stderr and "21" in r.stderr, r.stderr
    study = optuna.load_study(study_name="tunefleet", storage=f"sqlite:///{tmp_path}/s.db")
    assert {t.params["x"] for t in study.trials} == set(range(21))


def test_slurm_hint_names_real_files(cli, spaces, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/sh\necho "Submitted batch job 4242"\n')
    (fake / "sbatch").chmod(0o755)
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    r = cli("slurm", f"{spaces}:grid", "--n-trials", "3", "--output", "logs/%A_%a.out",
            "--submit", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "tail -f logs/4242_4294967294.out" in r.stdout and "%" not in r.stdout, r.stdout
    # before submission: the pattern, and what stands for the job id
    r = cli("slurm", f"{spaces}:grid", "--n-trials", "3", "--output", "logs/%A_%a.out",
            cwd=tmp_path)
    assert "tail -f logs/JOB_4294967294.out" in r.stderr and "logs/%A_%a.out" in r.stderr


def test_slurm_hub_batch_log_prints_the_best_once(cli, spaces, tmp_path):
    r = cli("slurm", f"{spaces}:grid", "--n-trials", "3", "--mode", "hub", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert " best --storage" not in r.stdout  # tunefleet serve prints the best itself
    r = cli("slurm", f"{spaces}:grid", "--n-trials", "3", cwd=tmp_path)
    assert r.stdout.count(" best --storage") == 1


def test_seed_tuner_arguments_name_tunefleets():
    from tunefleet.errors import UsageError
    from tunefleet.trainer import Tuner

    with pytest.raises(UsageError) as err:
        Tuner(proj_name="myproj", n_search_trials=10, n_jobs=4, n_gpus=2)
    message = str(err.value)
    assert "\n" not in message
    for old, new in (("proj_name", "study_name"), ("n_search_trials", "n_trials"),
                     ("n_jobs", "n_workers"), ("n_gpus", "gpus")):
        assert f"{old}= is {new}=" in message, message
    with pytest.raises(TypeError):
        Tuner(no_such_argument=1)
    table = (ROOT / "docs" / "trainer.md").read_text()
    assert "| `n_jobs=4` | `n_workers=4`" in table


def test_options_come_from_tunefleet_variables(cli, spaces, tmp_path):
    env = {"TUNEFLEET_RUN_N_TRIALS": "3", "TUNEFLEET_RUN_WORKERS": "1",
           "TUNEFLEET_RUN_STORAGE": "sqlite:///env.db", "TUNEFLEET_RUN_STUDY": "from-env",
           "TUNEFLEET_RUN_SAMPLER": "random", "TUNEFLEET_RUN_PROGRESS": "false",
           "TUNEFLEET_RUN_JSON": "1"}
    r = cli("run", f"{spaces}:grid", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["study"] == "from-env" and out["n_trials"] == 3, out
    study = optuna.load_study(study_name="from-env", storage=f"sqlite:///{tmp_path}/env.db")
    spec = study._storage.get_study_system_attrs(study._study_id)["tunefleet:spec"]
    assert json.loads(spec)["sampler"] == "random"
    # the command line wins over the variable
    r = cli("run", f"{spaces}:grid", "--n-trials", "4", cwd=tmp_path, env=env)
    assert json.loads(r.stdout)["n_trials"] == 4, r.stderr
