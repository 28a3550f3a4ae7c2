"""``tunefleet run``: hub mode from the command line, on local worker processes."""

from __future__ import annotations

import click

from tunefleet.cli._hub import (MemorySize, hub_options, remaining_budget, run_hub_command,
                                run_rounds)
from tunefleet.cli._options import (artifact_store, checkpoint_options, parse_gpus,
                                    spec_from_options, study_options)
from tunefleet._gpus import gpu_layout
from tunefleet._studies import create_or_load_study, open_storage
from tunefleet._targets import load_target


@click.command()
@click.argument("target")
@click.option("--n-trials", type=click.IntRange(min=0), default=None,
              help="The study's budget: run until it holds this many COMPLETE and PRUNED "
                   "trials in all, so that rerunning the command after a crash or Ctrl-C "
                   "finishes the budget (tunefleet.optimize's n_trials means 'this many more', "
                   "as in Optuna).")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per GPU slot of --gpus, else one per CPU).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop starting trials after this many seconds.")
@study_options
@click.option("--gpus", default=None,
              help="GPUs, one per worker: indices into the visible GPUs (CUDA_VISIBLE_DEVICES "
                   "if set), e.g. 0,1 or 3, for one; or a count, e.g. 4 for the first four.")
@click.option("--trials-per-gpu", type=int, default=None,
              help="Workers sharing each GPU of --gpus: --gpus 0,1 --trials-per-gpu 2 gives "
                   "four workers, seeing 0, 0, 1, 1.")
@click.option("--gpus-per-trial", type=int, default=None,
              help="GPUs of --gpus each worker sees: --gpus 0,1,2,3 --gpus-per-trial 2 gives "
                   "two workers, seeing 0,1 and 2,3.")
@click.option("--deterministic", is_flag=True,
              help="With --seed: the same trials and values whatever the workers' timing "
                   "(trial k starts once trials up to k - workers have ended, and sees only "
                   "those); slower when trial times vary.")
@click.option("--max-worker-memory", type=MemorySize(), default=None,
              help="Replace a worker by a fresh process after a trial that leaves its resident "
                   "memory above SIZE (2GB, 500MB, or bytes): a leaking objective cannot take "
                   "the machine's memory. A worker whose objective raised MemoryError is "
                   "replaced too (with --keep-going).")
@checkpoint_options
@hub_options
def run(target: str, n_trials: int | None, n_workers: int | None, timeout: float | None,
        storage: str | None, study_name: str | None, directions: tuple[str, ...],
        sampler: str | None, seed: int | None, pruner: str | None, gpus: str | None,
        trials_per_gpu: int | None, gpus_per_trial: int | None, deterministic: bool,
        max_worker_memory: int | None, checkpoint_dir: str | None, checkpoint_store: str | None,
        keep_checkpoints: bool,
        max_retries: int, grace: float, worker_timeout: float, storage_timeout: float,
        keep_going: bool, progress: bool, as_json: bool) -> None:
    """Run TARGET (path/to/file.py:name or package.module:name) on local worker processes.

    The study is stored in --storage (a SQLite file in this folder by default), so running the
    same command again continues it.
    """
    import tunefleet

    if n_trials is None and timeout is None:
        raise click.UsageError("give --n-trials or --timeout (or both)")
    if deterministic and seed is None:
        raise click.UsageError("--deterministic needs --seed")
    gpu_spec = parse_gpus(gpus)
    gpu_layout(gpu_spec, trials_per_gpu, gpus_per_trial)  # one line, before the storage opens
    objective = load_target(target)
    artifacts = artifact_store(checkpoint_store, checkpoint_dir)
    spec = spec_from_options(directions, sampler, seed, pruner)
    store = open_storage(storage, sqlite_wal=True)  # the coordinator is the only writer
    study = create_or_load_study(store, study_name, spec, directions_given=bool(directions))
    remaining = remaining_budget(study, n_trials)

    def run_round(n: int | None, time_left: float | None) -> None:
        tunefleet.optimize(
            study, objective, n_trials=n, n_workers=n_workers, timeout=time_left,
            gpus=gpu_spec, trials_per_gpu=trials_per_gpu, gpus_per_trial=gpus_per_trial,
            max_retries=max_retries, grace=grace,
            worker_timeout=worker_timeout, deterministic=deterministic,
            checkpoint_dir=checkpoint_dir, checkpoint_store=artifacts,
            keep_checkpoints=keep_checkpoints, catch=(Exception,) if keep_going else (), show_progress_bar=progress,
            max_worker_memory=max_worker_memory, storage_timeout=storage_timeout)

    # --keep-going: failed trials count in a round, not in --n-trials: rounds until it holds.
    run_hub_command(study, storage, as_json,
                    lambda: (run_rounds(study, n_trials, timeout, remaining, run_round)
                             if keep_going else run_round(remaining, timeout)),
                    n_trials=n_trials, timeout=timeout)
