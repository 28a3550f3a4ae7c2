"""``tunefleet worker``: one worker of a study, on a shared storage or connected to a hub."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Iterator

import click

from tunefleet._outage import DEFAULT_STORAGE_TIMEOUT
from tunefleet.cli._options import (artifact_store, checkpoint_options, spec_from_options,
                                    study_options)
from tunefleet.errors import ObjectiveFailed, UsageError


@click.command()
@click.argument("target", required=False)
@study_options
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Trials the study must hold, complete or pruned, counted over ALL workers.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Start no trial after this many seconds.")
@click.option("--catch", is_flag=True,
              help="Keep going when the objective raises (the failed trial does not count).")
@click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="How often the parameters of a trial whose worker died are run again.")
@click.option("--heartbeat-interval", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds between heartbeats of the running trial.")
@click.option("--grace-period", type=click.IntRange(min=1), default=None,
              help="Seconds without heartbeat after which a trial is failed by the other "
                   "workers. Default: 3 x the heartbeat interval.")
@click.option("--grace", "preempt_grace", type=click.FloatRange(min=0), default=20.0,
              show_default=True,
              help="After SIGTERM (Slurm's time limit or --signal, a preemption), seconds the "
                   "running trial gets to reach its next checkpoint.save; then it is handed "
                   "back, to continue elsewhere from that checkpoint, and the worker exits 143.")
@click.option("--storage-timeout", type=click.FloatRange(min=0), default=DEFAULT_STORAGE_TIMEOUT,
              show_default=True,
              help="Seconds every storage call waits out a database that is away (restarted, "
                   "failed over, unreachable); past them the worker exits 1 with one line, and "
                   "the same command run again continues.")
@checkpoint_options
@click.option("--connect", default=None, help="Hub mode: tcp://HOST:PORT of `tunefleet serve`.")
@click.option("--key-file", default=None, help="Hub mode: the shared secret of the hub.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Hub mode: this many workers on this host, forked from one interpreter.")
@click.option("--reconnect-timeout", type=click.FloatRange(min=0), default=60.0,
              show_default=True,
              help="Hub mode: when the coordinator disappears, finish the running trial and "
                   "try this many seconds to join it again (a restarted `tunefleet serve`), "
                   "handing over the result; 0 exits at once.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and the final line.")
def worker(target: str | None, storage: str | None, study_name: str | None,
           directions: tuple[str, ...], sampler: str | None, seed: int | None,
           pruner: str | None, n_trials: int | None, timeout: float | None, catch: bool,
           max_retries: int, heartbeat_interval: int, grace_period: int | None,
           preempt_grace: float, storage_timeout: float, checkpoint_dir: str | None,
           checkpoint_store: str | None, keep_checkpoints: bool,
           connect: str | None, key_file: str | None, processes: int, reconnect_timeout: float,
           quiet: bool) -> None:
    """Run TARGET (path/file.py:objective or pkg.module:objective) on the study in --storage
    until the study holds --n-trials complete-or-pruned trials; start as many workers as you
    like, anywhere that reaches the storage. With --connect, join a hub instead (no TARGET)."""
    if connect is not None:
        if checkpoint_store is not None:
            raise UsageError("--checkpoint-store is the coordinator's: a hub worker sends its "
                             "checkpoints to it (give the option to `tunefleet serve`)")
        _join_hub(target, connect, key_file, processes, reconnect_timeout)
        return
    if target is None:
        raise UsageError("worker needs a TARGET (path/file.py:objective), or --connect tcp://HOST:PORT")
    if n_trials is None:
        raise UsageError("worker needs --n-trials: the total the study must hold, over all workers")
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="[tunefleet %(asctime)s] %(message)s", datefmt="%H:%M:%S")

    from tunefleet.checkpoint import install_preemption
    from tunefleet.storage_mode import (WorkerOptions, WorkerStopped, open_worker_storage,
                                        run_storage_worker, with_backoff)
    from tunefleet._children import end_children, own_children
    from tunefleet._studies import SPEC_ATTR, StudySpec, create_or_load_study
    from tunefleet._targets import load_target

    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    objective = load_target(target)
    artifacts = artifact_store(checkpoint_store, checkpoint_dir)
    grace = grace_period or 3 * heartbeat_interval
    if grace <= heartbeat_interval:
        raise UsageError(f"--grace-period {grace} must be longer than --heartbeat-interval "
                         f"{heartbeat_interval}, or live workers would be declared dead")
    with _storage_away_in_one_line(storage):
        store = open_worker_storage(storage, heartbeat_interval=heartbeat_interval,
                                    grace_period=grace, storage_timeout=storage_timeout)
        spec = spec_from_options(directions, sampler, seed, pruner)
        study = with_backoff(lambda: create_or_load_study(store, study_name, spec,
                                                          directions_given=bool(directions)),
                             what="open study", outage_wait=storage_timeout)
        # The spec the study's sampler was built with (as create_or_load_study chose it).
        recorded = study._storage.get_study_system_attrs(study._study_id).get(SPEC_ATTR)
    given = sampler is not None or seed is not None or pruner is not None
    used = StudySpec.from_json(recorded) if recorded and not given else spec
    # A seeded study draws each trial's values from (seed, trial number, parameter): workers
    # draw apart (their trials' numbers differ), and a run continued later draws what one
    # uninterrupted run would have drawn (tunefleet.samplers._seeded).
    opts = WorkerOptions(n_trials=n_trials, timeout=timeout, catch=catch,
                         max_retries=max_retries, heartbeat_interval=heartbeat_interval,
                         grace_period=grace, seed=used.seed, checkpoint_dir=checkpoint_dir,
                         checkpoint_store=artifacts, keep_checkpoints=keep_checkpoints, storage_timeout=storage_timeout)

    def stop(signum: int, frame: object) -> None:
        raise WorkerStopped(signal.Signals(signum).name)

    own_children()  # what the objective starts ends with its trial, or with this worker
    install_preemption(preempt_grace)  # SIGTERM: hand the trial back after its next save
    signal.signal(signal.SIGINT, stop)
    with _storage_away_in_one_line(storage):
        try:
            result = run_storage_worker(study, objective, opts)
        except WorkerStopped as exc:
            click.echo(f"worker {opts.worker_id}: stopped by {exc}", err=True)
            sys.exit(130)
        except ObjectiveFailed as exc:
            traceback.print_exception(exc.original)
            click.echo(f"tunefleet: worker {opts.worker_id}: {exc} (pass --catch to go on)",
                       err=True)
            sys.exit(1)
        finally:
            end_children()
        if result.reason == "stopped by SIGTERM":
            back = "; its trial was handed back" if result.handed_back else ""
            click.echo(f"worker {opts.worker_id}: stopped by SIGTERM{back}", err=True)
            sys.exit(143)
        done = sum(t.state.name in ("COMPLETE", "PRUNED")
                   for t in study.get_trials(deepcopy=False))
    dropped = (f", {result.dropped} dropped (failed by others while this worker was silent)"
               if result.dropped else "")
    click.echo(f"worker {opts.worker_id}: {result.complete} complete, {result.pruned} pruned, "
               f"{result.failed} failed, {result.reaped} taken over from dead workers"
               f"{dropped}; {result.reason}: the study holds {done}/{n_trials}")


@contextlib.contextmanager
def _storage_away_in_one_line(url: str | None) -> Iterator[None]:
    """A database away past --storage-timeout ends the worker with one line saying what to do,
    exit 1, not a traceback through the database driver. The trial it ran stays RUNNING until
    the next run's workers fail it (its heartbeat stopped) and run its parameters again."""
    from tunefleet._studies import DEFAULT_STORAGE, shown_url
    from tunefleet.storage_mode import StorageUnreachable, default_worker_id

    try:
        yield
    except StorageUnreachable as exc:
        click.echo(f"tunefleet: worker {default_worker_id()} stopped: the storage "
                   f"{shown_url(url or DEFAULT_STORAGE)} could not be reached for "
                   f"{exc.seconds:.0f} s ({exc.words}); the study keeps every trial counted so "
                   f"far: bring the database back (or raise --storage-timeout), then run the "
                   f"same command again to finish the budget.", err=True)
        sys.exit(1)


def _join_hub(target: str | None, address: str, key_file: str | None, processes: int,
              reconnect_timeout: float = 0.0) -> None:
    if target is not None:
        raise UsageError("--connect joins a hub, which sends the objective: drop TARGET")
    if not address.startswith("tcp://"):
        raise UsageError(f"--connect {address!r} must look like tcp://HOST:PORT")
    from tunefleet._children import end_children, own_children
    from tunefleet.hub._remote import run_workers
    from tunefleet.transport import parse_address

    parse_address(address)  # a malformed address is one line and exit 2, before any fork

    # This process and the workers it forks own what their objectives start: it ends with
    # their trials, or with this command (a subreaper here finds what a worker left behind).
    own_children()
    try:
        code = run_workers(address, processes, key_file=key_file,
                           reconnect_timeout=reconnect_timeout)
    finally:
        end_children()
    sys.exit(code)
