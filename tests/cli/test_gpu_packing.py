"""GPU packing, one layout in every launcher: ``--trials-per-gpu 2`` on GPUs 0,1 gives four
workers that see 0, 0, 1, 1; ``--gpus-per-trial 2`` on 0,1,2,3 two that see "0,1" and "2,3".

This machine has no GPU: the tests check what every worker SEES (``CUDA_VISIBLE_DEVICES`` in
its environment) with fake GPU ids. Each worker holds its first trial until every worker of
the layout holds one (``_hold``), so that every slot is seen whatever the start-up order."""

from __future__ import annotations

import collections
import functools
import os
import subprocess
from pathlib import Path

import optuna
import pytest

import tunefleet
from tests.helpers import wait_until
from tunefleet._gpus import gpu_layout, gpu_share, pack
from tunefleet.errors import UsageError

HERE = Path(__file__).resolve()
PAIRS = ["0", "0", "1", "1"]
SPREAD = ["0,1", "2,3"]


def _hold(folder: str, n: int) -> None:
    """Wait until ``n`` worker processes have reached this point (one file per pid)."""
    Path(folder, str(os.getpid())).touch()
    wait_until(lambda: len(os.listdir(folder)) >= n, 120, f"{n} workers to hold a trial")


def sees(trial: optuna.Trial, folder: str | None = None, n: int | None = None) -> float:
    """Records what its worker sees; the command line's workers get the hold from the env."""
    trial.set_user_attr("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"))
    trial.set_user_attr("pid", os.getpid())
    _hold(folder or os.environ["TF_HOLD"], n or int(os.environ["TF_HOLD_N"]))
    return trial.suggest_float("x", 0, 1)


def seen(trials) -> list[str]:
    """What each worker saw, one entry per worker (a worker sees one value only)."""
    per_pid: dict[int, set] = collections.defaultdict(set)
    for t in trials:
        per_pid[t.user_attrs["pid"]].add(t.user_attrs["cuda"])
    assert all(len(v) == 1 for v in per_pid.values()), per_pid
    return sorted(v for values in per_pid.values() for v in values)


def _holding(tmp_path: Path, n: int) -> tuple[str, int]:
    folder = tmp_path / f"hold-{n}-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    return str(folder), n


# -- the layout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gpus,options,env,expected", [
    (["0", "1"], {"trials_per_gpu": 2}, {}, PAIRS),
    (["0", "1", "2", "3"], {"gpus_per_trial": 2}, {}, SPREAD),
    (4, {"gpus_per_trial": 2}, {}, SPREAD),
    (2, {"trials_per_gpu": 3}, {"CUDA_VISIBLE_DEVICES": "5,6"}, ["5"] * 3 + ["6"] * 3),
    ([1, 2], {"gpus_per_trial": 2}, {"CUDA_VISIBLE_DEVICES": "5,6,7"}, ["6,7"]),
    (["0", "1"], {}, {}, ["0", "1"]),
    (None, {}, {"CUDA_VISIBLE_DEVICES": "5"}, None),
])
def test_layout(gpus, options, env, expected):
    assert gpu_layout(gpus, env=env, **options) == expected


def test_share_of_a_worker_on_an_engine():
    assert gpu_share(trials_per_gpu=4) == 0.25 and gpu_share(gpus_per_trial=2) == 2.0
    assert gpu_share() == 1.0
    assert pack(["a", "b", "c"], trials_per_gpu=1) == ["a", "b", "c"]


@pytest.mark.parametrize("gpus,options,env,words", [
    (4, {"gpus_per_trial": 3}, {}, "gpus_per_trial=3 does not divide the 4 GPU"),
    ([0, 2], {"trials_per_gpu": 2}, {"CUDA_VISIBLE_DEVICES": "5,6"}, "out of range"),
    (2, {"trials_per_gpu": 2, "gpus_per_trial": 2}, {}, "not both"),
    (2, {"trials_per_gpu": 0}, {}, "trials_per_gpu=0: give a whole number, at least 1"),
    (2, {"gpus_per_trial": -1}, {}, "at least 1"),
    (2, {"trials_per_gpu": 1.5}, {}, "whole number"),
    (["abc"], {}, {}, "neither an index"),
    (None, {"trials_per_gpu": 2}, {}, "give them too"),
])
def test_layout_refuses(gpus, options, env, words):
    with pytest.raises(UsageError, match=words):
        gpu_layout(gpus, env=env, **options)


# -- tunefleet run and tunefleet.optimize: local processes -------------------------------------
@pytest.mark.timeout(240)
@pytest.mark.parametrize("flags,env,expected", [
    (["--gpus", "0,1", "--trials-per-gpu", "2"], {}, PAIRS),
    (["--gpus", "0,1,2,3", "--gpus-per-trial", "2"], {}, SPREAD),
    (["--gpus", "1,0", "--trials-per-gpu", "2"], {"CUDA_VISIBLE_DEVICES": "5,6"},
     ["5", "5", "6", "6"]),
])
def test_run_command(flags, env, expected, cli, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    folder, n = _holding(tmp_path, len(expected))
    url = f"sqlite:///{tmp_path / 'g.db'}"
    r = cli("run", f"{HERE}:sees", "--n-trials", str(n), *flags, "--storage", url,
            "--no-progress", cwd=tmp_path,
            env={**env, "TF_HOLD": folder, "TF_HOLD_N": str(n), "PYTHONPATH": str(HERE.parents[2])})
    assert r.returncode == 0, r.stderr
    assert seen(optuna.load_study(study_name="tunefleet", storage=url).trials) == expected


@pytest.mark.parametrize("flags,env,words", [
    (["--gpus", "4", "--gpus-per-trial", "3"], {}, "does not divide the 4 GPU(s)"),
    (["--gpus", "0,2"], {"CUDA_VISIBLE_DEVICES": "5,6"}, "GPU index 2 is out of range"),
    (["--gpus", "3", "--trials-per-gpu", "2"], {"CUDA_VISIBLE_DEVICES": "5,6"},
     "more GPUs than visible"),
    (["--gpus", "0,1", "--trials-per-gpu", "2", "--gpus-per-trial", "2"], {}, "not both"),
    (["--gpus", "0,1", "--trials-per-gpu", "0"], {}, "at least 1"),
    (["--gpus", "0,1", "--gpus-per-trial", "0"], {}, "at least 1"),
    (["--gpus", "abc"], {}, "'abc' is neither an index"),
    (["--trials-per-gpu", "2"], {}, "give them too"),
])
def test_run_command_refuses_in_one_line(flags, env, words, cli, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    r = cli("run", f"{HERE}:sees", "--n-trials", "2", *flags, "--storage", "sqlite:///g.db",
            cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and words in r.stderr, r.stderr
    assert not (tmp_path / "g.db").exists()  # refused before the storage was opened


@pytest.mark.timeout(240)
@pytest.mark.parametrize("options,expected", [
    ({"gpus": [0, 1], "trials_per_gpu": 2}, PAIRS),
    ({"gpus": 4, "gpus_per_trial": 2}, SPREAD),
])
def test_optimize(options, expected, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    study = optuna.create_study()
    hold = functools.partial(sees, folder=_holding(tmp_path, len(expected))[0],
                             n=len(expected))
    tunefleet.optimize(study, hold, n_trials=len(expected), **options)  # n_workers: the slots
    assert seen(study.trials) == expected


# -- the Tuner ---------------------------------------------------------------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("options,expected", [
    ({"gpus": ["0", "1"], "trials_per_gpu": 2}, PAIRS),
    ({"gpus": 4, "gpus_per_trial": 2}, SPREAD),
])
def test_tuner(options, expected, tmp_path, monkeypatch):
    from tests.trainer.toy import ToyTuner

    class HoldingTuner(ToyTuner):
        def load_items(self, **params):
            self._trial.set_user_attr("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"))
            _hold(self.hold, len(expected))
            return super().load_items(**params)

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    tuner = HoldingTuner("packed", "valid_loss", n_trials=len(expected), storage=":memory:",
                         log=False, verbose=False, start_method="fork", **options)
    tuner.hold = _holding(tmp_path, len(expected))[0]
    assert seen(tuner.run().trials) == expected


# -- tunefleet slurm ---------------------------------------------------------------------------
def _slurm(cli, tmp_path, *flags):
    r = cli("slurm", f"{HERE}:sees", "--n-trials", "8", "--storage", "sqlite:///s.db",
            *flags, cwd=tmp_path)
    return r


def _task_sees(text: str, local_id: int) -> str:
    """What task ``local_id`` sees where the site binds no GPU: the script's own prefix."""
    line = next(ln for ln in text.splitlines() if ln.startswith("srun "))
    prefix = line.split("bash -c ", 1)[1].split(" tunefleet-task ", 1)[0]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run(f"bash -c {prefix} tunefleet-task printenv CUDA_VISIBLE_DEVICES",
                         shell=True, capture_output=True, text=True,
                         env={**env, "SLURM_LOCALID": str(local_id)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("flags,lines,expected", [
    (["--tasks-per-node", "4", "--trials-per-gpu", "2"],
     ["--ntasks=4", "--gpus-per-node=2", "--ntasks-per-gpu=2"], PAIRS),
    (["--tasks-per-node", "2", "--gpus-per-trial", "2"],
     ["--ntasks-per-node=2", "--gpus-per-task=2"], SPREAD),
    (["--tasks-per-node", "2", "--gpus-per-task", "1"],
     ["--ntasks-per-node=2", "--gpus-per-task=1"], ["0", "1"]),
])
@pytest.mark.parametrize("mode", ["storage", "hub"])
def test_slurm_script(flags, lines, expected, mode, cli, tmp_path):
    r = _slurm(cli, tmp_path, "--mode", mode, "--nodes", "2", *flags)
    assert r.returncode == 0, r.stderr
    sbatch = [ln.removeprefix("#SBATCH ") for ln in r.stdout.splitlines()
              if ln.startswith("#SBATCH ")]
    lines = [ln.replace("--ntasks=4", "--ntasks=8") for ln in lines]  # two nodes
    assert set(lines) <= set(sbatch), sbatch
    if "--ntasks-per-gpu=2" in lines:  # Slurm refuses it with --ntasks-per-node
        assert not any(ln.startswith("--ntasks-per-node") for ln in sbatch)
    assert [_task_sees(r.stdout, i) for i in range(len(expected))] == expected
    assert subprocess.run(["bash", "-n", str(tmp_path / "tunefleet-tunefleet.sbatch")]
                          ).returncode == 0


def test_slurm_sees_what_slurm_binds(cli, tmp_path):
    """Where Slurm binds the GPUs (--gpus-per-task, --ntasks-per-gpu), the task keeps them."""
    r = _slurm(cli, tmp_path, "--tasks-per-node", "4", "--trials-per-gpu", "2")
    prefix = next(ln for ln in r.stdout.splitlines() if ln.startswith("srun "))
    prefix = prefix.split("bash -c ", 1)[1].split(" tunefleet-task ", 1)[0]
    out = subprocess.run(f"bash -c {prefix} tunefleet-task printenv CUDA_VISIBLE_DEVICES",
                         shell=True, capture_output=True, text=True,
                         env={**os.environ, "SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "7"})
    assert out.stdout.strip() == "7"


@pytest.mark.parametrize("flags,words", [
    (["--tasks-per-node", "3", "--trials-per-gpu", "2"], "is not a multiple of --trials-per-gpu"),
    (["--trials-per-gpu", "2", "--gpus-per-trial", "2", "--tasks-per-node", "2"], "not both"),
    (["--trials-per-gpu", "0"], "at least 1"),
])
def test_slurm_refuses_in_one_line(flags, words, cli, tmp_path):
    r = _slurm(cli, tmp_path, *flags)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert words in r.stderr


# -- Dask: workers that declare resources={"GPU": 2} -----------------------------------------
@pytest.fixture(scope="module")
def dask_gpu_client():
    """One Dask worker process with 4 threads that declares two GPUs."""
    import distributed

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=True,
                                       resources={"GPU": 2}, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("options,expected", [
    ({"trials_per_gpu": 2}, PAIRS),
    ({"gpus_per_trial": 2}, ["0,1"]),
    ({"trials_per_gpu": 1}, ["0", "1"]),
])
def test_dask(options, expected, dask_gpu_client, tmp_path):
    study = optuna.create_study()
    hold = functools.partial(sees, folder=_holding(tmp_path, len(expected))[0],
                             n=len(expected))
    # n_workers: the GPUs the Dask workers declare, divided by each task's share
    tunefleet.optimize(study, hold, n_trials=len(expected), backend="dask",
                       client=dask_gpu_client, **options)
    assert seen(study.trials) == expected


@pytest.mark.timeout(300)
def test_tuner_on_dask(dask_gpu_client, tmp_path):
    from tests.trainer.toy import ToyTuner

    class HoldingTuner(ToyTuner):
        def load_items(self, **params):
            self._trial.set_user_attr("cuda", os.environ.get("CUDA_VISIBLE_DEVICES"))
            _hold(self.hold, 4)
            return super().load_items(**params)

    tuner = HoldingTuner("packed-dask", "valid_loss", n_trials=4, storage=":memory:",
                         client=dask_gpu_client, gpus=2, trials_per_gpu=2, log=False,
                         verbose=False)
    tuner.hold = _holding(tmp_path, 4)[0]
    assert seen(tuner.run().trials) == PAIRS


def test_dask_without_gpu_resources_says_so(dask_client):
    with pytest.raises(UsageError, match="no Dask worker declares a GPU resource"):
        tunefleet.optimize(optuna.create_study(), sees, n_trials=1, backend="dask",
                           client=dask_client, trials_per_gpu=2)


# -- Ray: ray.init(num_gpus=2), fake GPUs that Ray hands out itself ---------------------------
@pytest.fixture(scope="module")
def ray_with_gpus():
    import ray

    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("options,expected", [
    ({"trials_per_gpu": 2}, PAIRS),
    ({"gpus_per_trial": 2}, ["0,1"]),
])
def test_ray(options, expected, ray_with_gpus, tmp_path):
    study = optuna.create_study()
    hold = functools.partial(sees, folder=_holding(tmp_path, len(expected))[0],
                             n=len(expected))
    tunefleet.optimize(study, hold, n_trials=len(expected), backend="ray", **options)
    assert seen(study.trials) == expected


def test_engines_refuse_gpu_ids():
    with pytest.raises(UsageError, match="pass trials_per_gpu= or gpus_per_trial="):
        tunefleet.optimize(optuna.create_study(), sees, n_trials=1, backend="ray", gpus=2)
