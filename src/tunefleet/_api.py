"""``tunefleet.optimize``: the one entry point of hub mode."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import optuna


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int | None = None,
    *,
    n_workers: int | None = None,
    timeout: float | None = None,
    callbacks: Iterable[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
    catch: Iterable[type[Exception]] | type[Exception] = (),
    show_progress_bar: bool = False,
    gpus: int | Sequence[int | str] | None = None,
    trials_per_gpu: int | None = None,
    gpus_per_trial: int | None = None,
    max_retries: int = 1,
    backend: str = "processes",
    setup: Callable[[], Any] | None = None,
    grace: float = 5.0,
    worker_timeout: float | None = 120.0,
    reclaim_window: float | None = None,
    seed: int | None = None,
    deterministic: bool = False,
    checkpoint_dir: str | None = None,
    checkpoint_store: Any = None,
    keep_checkpoints: bool = False,
    gc_after_trial: bool = False,
    max_worker_memory: int | str | None = None,
    storage_timeout: float | None = None,
    n_jobs: int | None = None,
    **backend_options: Any,
) -> optuna.Study:
    """Run ``objective`` on a fleet of workers against ``study`` and return the study.

    The calling process is the coordinator: it owns the study's sampler, pruner and storage,
    and is its only writer. Workers run the objective with a proxy trial whose calls are
    answered by the coordinator. ``n_trials``, ``timeout``, ``callbacks`` and ``catch`` mean
    what they mean in ``Study.optimize``.

    Args:
        n_workers: how many workers (default: one per GPU slot, see ``gpus``, or the number
            of CPUs).
        gpus: a count N (the first N visible GPUs) or GPU indices, handed out one per worker
            as ``CUDA_VISIBLE_DEVICES``; indices count within an inherited
            ``CUDA_VISIBLE_DEVICES`` (see ``tunefleet._gpus``).
        trials_per_gpu: K workers share each GPU of ``gpus`` (0,1 with 2: workers see 0, 0,
            1, 1). On Dask and Ray (no ``gpus``), each worker task asks for 1/K GPU.
        gpus_per_trial: each worker gets K GPUs of ``gpus`` (0,1,2,3 with 2: workers see
            "0,1" and "2,3"). On Dask and Ray, each worker task asks for K GPUs.
        max_retries: how many times the parameters of a trial whose worker died are run again.
        backend: "processes" (local), "dask", "ray", "spark" or "tcp" (workers join by hand).
        setup: run once in each worker before its first trial; its result is returned by
            ``tunefleet.worker_data()`` inside the objective.
        gc_after_trial: as in ``Study.optimize``: ``gc.collect()`` after each trial, in the
            worker that ran it.
        n_jobs: not supported: trials run in ``n_workers`` worker processes, not threads.
        grace: seconds that running trials get to finish after SIGINT or SIGTERM, before they
            are closed as FAIL; then :class:`tunefleet.Interrupted` (a ``KeyboardInterrupt``)
            is raised. A second signal ends the grace period at once. Every trial counted
            (callbacks, progress bar) is in the storage by then.
        worker_timeout: seconds a worker may stay silent while it runs a trial (workers beat
            every second; a stopped, hung or cut-off one does not) before its trial is failed
            with the reason and its parameters retried; its late result is refused. ``None``
            waits forever.
        reclaim_window: seconds a coordinator started on a study that a dead coordinator left
            with RUNNING trials waits for workers that outlived it to hand over those trials'
            results (``tunefleet worker --connect --reconnect-timeout``), before failing and
            retrying them. Default: 10 for workers that join over the network ("tcp"), 0 for
            workers this call starts (they died with the old coordinator).
        seed: draw each trial's values from (seed, trial number, parameter), so that a run
            continued later draws what one uninterrupted run would have, and a seeded Random
            run gives the same trials with any number of workers. Default: the ``--seed`` the
            study was made with on the command line, if any.
        deterministic: with a seed, the same trials and values whatever the workers' timing:
            trial k starts once every trial numbered k - n_workers or lower has ended, and its
            sampler and pruner see only those. Costs idle workers when trial times vary.
        checkpoint_dir: where ``tunefleet.checkpoint.save`` keeps trials' checkpoints (workers
            on other hosts stream theirs here through their connection). Default: a folder
            beside the study's SQLite or journal file (``NAME.db.checkpoints/STUDY``), else a
            folder of this run's own.
        checkpoint_store: an Optuna artifact store (``optuna.artifacts.FileSystemArtifactStore``,
            ``Boto3ArtifactStore``, ...) to keep checkpoints in instead of a folder: every
            worker streams its checkpoints to the coordinator, which uploads them; the study's
            storage holds their index, so a rerun continues from them. Not with
            ``checkpoint_dir``.
        keep_checkpoints: keep the checkpoints of trials that finished (default: removed).
        max_worker_memory: bytes, or a size such as ``"2GB"`` or ``"500MB"``: a worker whose
            resident memory is above it after a trial is replaced by a fresh process, as is
            one whose objective raised a ``MemoryError`` that ``catch`` covers; an objective
            that leaks (a module-level cache) then cannot take the machine's memory.
            ``backend="processes"`` only.
        start_method, threads_per_worker: ``backend="processes"`` only. How local workers
            start: "fork", "forkserver" or "spawn"; by default each is forked from this
            process, or from a fork server when this process has imported PyTorch and each
            worker runs more than one CPU thread (a forked torch process hangs then). How many
            OpenMP and BLAS threads each worker runs: by default this process's CPUs divided
            among the workers (at least 1); 0 for no limit.
        storage_timeout: seconds a database server may stay away (restarted, failed over,
            unreachable) before the run stops with :class:`tunefleet.MirrorError`; meanwhile
            running trials go on, their results wait in memory, and no new trial starts.
            Default: 300.

    A trial counts as finished (callbacks, progress bar, ``n_trials``) only once the study's
    storage holds it: on a database or journal file the coordinator writes by group commit,
    so a crash loses no trial that was counted. Trials a crashed coordinator left RUNNING are
    failed, and their parameters queued again, by the next run on the study.
    """
    from tunefleet._gpus import check_packing, gpu_layout
    from tunefleet.backends import make_backend
    from tunefleet.hub import run_hub

    if n_jobs is not None:
        from tunefleet.errors import UsageError

        raise UsageError(f"tunefleet.optimize runs trials in worker processes: use "
                         f"n_workers={n_jobs} instead of n_jobs={n_jobs}")
    if gc_after_trial:
        from tunefleet.hub import GcAfterTrial

        objective = GcAfterTrial(objective)
    if max_worker_memory is not None and backend != "processes":
        from tunefleet.errors import UsageError

        raise UsageError(f"max_worker_memory needs backend='processes': a {backend} worker "
                         "runs in a process its engine keeps, which a new worker would reuse")
    options = dict(backend_options)
    if backend in ("dask", "ray") and gpus is None:  # the engine hands out its GPUs
        check_packing(trials_per_gpu, gpus_per_trial)
        if trials_per_gpu is not None or gpus_per_trial is not None:
            options.update(trials_per_gpu=trials_per_gpu, gpus_per_trial=gpus_per_trial)
    else:
        gpu_ids = gpu_layout(gpus, trials_per_gpu, gpus_per_trial)
        if gpu_ids is not None:
            options["gpus"] = gpu_ids

    return run_hub(
        study,
        objective,
        lambda: make_backend(backend, **options),
        n_trials=n_trials,
        n_workers=n_workers,
        timeout=timeout,
        callbacks=list(callbacks or []),
        catch=catch,
        show_progress_bar=show_progress_bar,
        max_retries=max_retries,
        setup=setup,
        grace=grace,
        worker_timeout=worker_timeout,
        reclaim_window=reclaim_window,
        seed=seed,
        deterministic=deterministic,
        checkpoint_dir=checkpoint_dir,
        checkpoint_store=checkpoint_store,
        keep_checkpoints=keep_checkpoints,
        max_worker_memory=max_worker_memory,
        storage_timeout=storage_timeout,
    )
