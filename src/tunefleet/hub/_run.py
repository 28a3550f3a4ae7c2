"""``run_hub``: what ``tunefleet.optimize`` does once it has its options. It checks them,
takes ownership of the study, puts the study in memory with its durable writer (the mirror),
recovers what a dead coordinator left RUNNING, and runs the coordinator over a fleet."""

from __future__ import annotations

import sys
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet._optuna import storage_location
from tunefleet._outage import DEFAULT_STORAGE_TIMEOUT
from tunefleet.checkpoint import ArtifactCheckpoints, check_artifact_store, default_root
from tunefleet.errors import Interrupted, MirrorError, OptionError
from tunefleet.hub._checkpoints import CheckpointKeeper
from tunefleet.hub._beat import BEAT_INTERVAL
from tunefleet.hub._coordinator import Coordinator, Limits
from tunefleet.hub._drawing import spec_seed
from tunefleet.hub._fleet import Fleet
from tunefleet.hub._mirror import mirrored_study
from tunefleet.hub._ownership import claim, recover_orphans, release
from tunefleet.hub._progress import Progress
from tunefleet.hub._worker import MemoryLimited, parse_size
from tunefleet.samplers import random_states

# Under Optuna's logger: optuna.logging.set_verbosity governs it, in Optuna's format.
_logger = optuna.logging.get_logger("optuna.tunefleet")


@dataclass(frozen=True)
class RunEnd:
    """What a study held when its last run ended, read from the coordinator's memory once the
    storage held all of it: a summary at the end of a 20,000-trial run without reading the
    20,000 trials back from the database."""

    states: dict[TrialState, int]
    best: list[FrozenTrial]  # the best trial, or the Pareto front; empty when none completed
    stopped: bool = False  # study.stop() (a callback, an exhausted grid) ended the run


_ENDS: "weakref.WeakKeyDictionary[optuna.Study, RunEnd]" = weakref.WeakKeyDictionary()


def last_run_end(study: optuna.Study) -> RunEnd | None:
    """How ``study``'s last hub run ended, if it ended with every change stored."""
    return _ENDS.get(study)


def was_stopped(study: optuna.Study) -> bool:
    """Whether ``study``'s last hub run ended by ``study.stop()`` (a callback, a trial, a grid
    that ran out), so that a caller that runs again for the rest of a budget knows not to."""
    end = _ENDS.get(study)
    return end.stopped if end is not None else bool(study._stop_flag)


def _run_end(run_study: optuna.Study) -> RunEnd:
    states = {s: 0 for s in TrialState}
    for t in run_study.get_trials(deepcopy=False):
        states[t.state] += 1
    stopped = bool(run_study._stop_flag)
    if len(run_study.directions) > 1:
        return RunEnd(states, list(run_study.best_trials), stopped)
    try:
        return RunEnd(states, [run_study.best_trial], stopped)
    except ValueError:
        return RunEnd(states, [], stopped)


def run_hub(study: optuna.Study, objective: Callable[..., Any], make_fleet: Callable[[], Fleet],
            *, n_trials: int | None, n_workers: int | None, timeout: float | None,
            callbacks: list[Callable], catch: Any, show_progress_bar: bool, max_retries: int,
            setup: Callable[[], Any] | None, grace: float = 5.0,
            worker_timeout: float | None = None, reclaim_window: float | None = None,
            seed: int | None = None, deterministic: bool = False,
            checkpoint_dir: str | None = None, checkpoint_store: Any = None,
            keep_checkpoints: bool = False, max_worker_memory: int | str | None = None,
            storage_timeout: float | None = None) -> optuna.Study:
    """What ``tunefleet.optimize`` does; see there. ``make_fleet`` builds the fleet of workers
    (a backend of ``tunefleet.backends``), once the options are known to be good."""
    if isinstance(catch, type):
        catch = (catch,)
    catch = tuple(catch)
    if n_trials is not None and n_trials < 0:
        raise OptionError(f"n_trials must be non-negative, got {n_trials}")
    if max_retries < 0:
        raise OptionError(f"max_retries must be non-negative, got {max_retries}")
    if grace < 0:
        raise OptionError(f"grace must be non-negative, got {grace}")
    if storage_timeout is None:
        storage_timeout = DEFAULT_STORAGE_TIMEOUT
    if storage_timeout < 0:
        raise OptionError(f"storage_timeout must be non-negative, got {storage_timeout}")
    if worker_timeout is not None and worker_timeout < 3 * BEAT_INTERVAL:
        raise OptionError(f"worker_timeout must be at least {3 * BEAT_INTERVAL:g} s (workers "
                         f"beat every {BEAT_INTERVAL:g} s), got {worker_timeout}")
    if study._thread_local.in_optimize_loop:
        raise RuntimeError("Nested invocation of `Study.optimize` method isn't allowed.")
    if seed is None:
        seed = spec_seed(study)
    if deterministic:
        if seed is None:
            raise OptionError("deterministic=True needs a seed: pass seed=... (or make the "
                             "study with --seed)")
        if not random_states(study.sampler):
            raise OptionError(f"deterministic=True needs a sampler with a random state to seed "
                             f"({type(study.sampler).__name__} has none)")
    if checkpoint_store is not None:
        if checkpoint_dir is not None:
            raise OptionError("give checkpoint_dir (a folder) or checkpoint_store (an Optuna "
                             "artifact store), not both")
        check_artifact_store(checkpoint_store)
    if max_worker_memory is not None:
        try:
            objective = MemoryLimited(objective, parse_size(max_worker_memory))
        except ValueError as exc:
            raise OptionError(f"max_worker_memory: {exc}") from None
    fleet = make_fleet()
    if max_worker_memory is not None and not fleet.starts_workers:
        raise OptionError("max_worker_memory replaces workers by fresh processes, and this "
                          "fleet's workers join by themselves: nobody would start new ones")
    workers = n_workers if n_workers is not None else fleet.default_workers()
    if workers < 1:
        raise OptionError(f"n_workers must be at least 1, got {workers}")
    if n_trials is not None:
        workers = max(1, min(workers, n_trials)) if fleet.starts_workers else workers
    # The coordinator is the only writer: it works on an in-memory copy of a database or
    # journal study, and a background thread writes every change through by group commit.
    claim(study)
    try:
        run_study, mirror = mirrored_study(study, storage_timeout)
    except BaseException:
        release(study)
        raise
    try:
        if reclaim_window is None:  # workers that outlive a coordinator only join by network
            reclaim_window = 0.0 if fleet.starts_workers else 10.0
        orphans = list(mirror.orphans) if mirror is not None else []
        if not reclaim_window:
            recover_orphans(run_study, orphans, max_retries)
            orphans = []
    except BaseException:
        if mirror is not None:
            mirror.close()
        raise
    checkpoints = _checkpoint_keeper(study, run_study, mirror, checkpoint_dir,
                                     checkpoint_store, keep_checkpoints)
    progress = Progress(show_progress_bar, n_trials, timeout, study.directions)
    coordinator = Coordinator(run_study, objective, fleet, n_workers=workers,
                              limits=Limits(n_trials, timeout), callbacks=callbacks, catch=catch,
                              max_retries=max_retries, progress=progress, setup=setup,
                              mirror=mirror, grace=grace, worker_timeout=worker_timeout,
                              orphans=orphans, reclaim_window=reclaim_window, seed=seed,
                              deterministic=deterministic, checkpoints=checkpoints)
    study._thread_local.in_optimize_loop = run_study._thread_local.in_optimize_loop = True
    try:
        coordinator.run()
    finally:
        study._thread_local.in_optimize_loop = run_study._thread_local.in_optimize_loop = False
        release(run_study)
        try:
            if mirror is not None:
                _close_mirror(study, run_study, mirror, sys.exc_info()[1])
        finally:
            # After the mirror: replaced checkpoints in an artifact store go once the storage
            # holds what replaced them.
            checkpoints.close()
    return study


def _close_mirror(study: optuna.Study, run_study: optuna.Study, mirror: Any,
                  running: BaseException | None) -> None:
    """Wait for the durable storage to hold the run; its failure is raised unless the run is
    already failing of something else (``running``), which is not hidden by it."""
    if running is None or isinstance(running, Interrupted):
        mirror.close()  # waits for the durable storage; raises MirrorError on failure
        _ENDS[study] = _run_end(run_study)  # all of it stored: memory says it right
        return
    try:
        mirror.close()
    except MirrorError as exc:
        if exc.__cause__ is running:  # the storage stopped the run: say that
            raise exc from running
        _logger.warning(f"{exc}")  # do not hide the run's own error
    except Exception as exc:
        _logger.warning(f"{exc}")


def _checkpoint_keeper(study: optuna.Study, run_study: optuna.Study, mirror: Any,
                       folder: str | None, artifacts: Any, keep: bool) -> CheckpointKeeper:
    """The study's checkpoints: in the artifact store ``artifacts``, indexed in the study that
    the run writes (``run_study``; through the mirror, when there is one, to the durable
    storage), else in ``folder``/STUDY, else beside its storage file (SQLite, journal), else (a
    server, memory) in a folder of this run's own, removed at its end."""
    if artifacts is not None:
        seq = (lambda: (mirror.seq, mirror.durable_seq)) if mirror is not None else None
        return CheckpointKeeper(None, keep=keep, store=ArtifactCheckpoints(
            artifacts, run_study._storage, run_study._study_id, seq))
    root = default_root(storage_location(study._storage), study.study_name, folder)
    if root is not None:
        return CheckpointKeeper(root, keep=keep)
    return CheckpointKeeper(tempfile.mkdtemp(prefix="tunefleet-checkpoints-"), keep=keep,
                            temporary=True)
