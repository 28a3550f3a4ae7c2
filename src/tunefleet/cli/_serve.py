"""``tunefleet serve``: a coordinator that starts no worker; workers join over TCP."""

from __future__ import annotations

import click

from tunefleet.cli._hub import hub_options, remaining_budget, run_hub_command
from tunefleet.cli._options import (artifact_store, checkpoint_options, spec_from_options,
                                    study_options)
from tunefleet._studies import create_or_load_study, open_storage
from tunefleet._targets import load_target


@click.command()
@click.argument("target")
@click.option("--listen", default="tcp://127.0.0.1:5555", show_default=True,
              help="Address to listen on; tcp://0.0.0.0:PORT for workers on other hosts.")
@click.option("--key-file", default="tunefleet.key", show_default=True,
              help="Shared secret; created with a random key when missing. Copy it to workers.")
@click.option("--n-trials", type=click.IntRange(min=0), default=None,
              help="The study's budget: run until it holds this many COMPLETE and PRUNED "
                   "trials in all (the same command run again after a crash finishes it).")
@click.option("--timeout", type=click.FloatRange(min=0), default=None)
@study_options
@click.option("--reclaim-window", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Started again after a crash: seconds to wait for workers that outlived the "
                   "old coordinator to hand over the results of the trials it left RUNNING, "
                   "before those are failed and retried.")
@checkpoint_options
@hub_options
def serve(target: str, listen: str, key_file: str, n_trials: int | None, timeout: float | None,
          storage: str | None, study_name: str | None, directions: tuple[str, ...],
          sampler: str | None, seed: int | None, pruner: str | None, max_retries: int,
          grace: float, worker_timeout: float, storage_timeout: float, reclaim_window: float,
          checkpoint_dir: str | None, checkpoint_store: str | None, keep_checkpoints: bool,
          keep_going: bool,
          progress: bool, as_json: bool) -> None:
    """Coordinate a study for workers that join with `tunefleet worker --connect`.

    Workers may join and leave at any time; each exits 0 when the study is done.
    """
    import tunefleet
    from tunefleet.transport import TcpListener, load_key, parse_address

    if n_trials is None and timeout is None:
        raise click.UsageError("give --n-trials or --timeout (or both)")
    parse_address(listen)  # a malformed address: one line, exit 2, before anything is opened
    key = load_key(key_file, create=True)
    # Bound before anything is said or opened: a busy port is one line and exit 2, and with
    # port 0 the line below gives the port the workers need.
    listener = TcpListener(listen, key)
    try:
        objective = load_target(target)
        artifacts = artifact_store(checkpoint_store, checkpoint_dir)
        spec = spec_from_options(directions, sampler, seed, pruner)
        study = create_or_load_study(open_storage(storage, sqlite_wal=True), study_name, spec,
                                     directions_given=bool(directions))
    except BaseException:
        listener.close()
        raise
    click.echo(f"coordinator for study {study.study_name!r} on {listener.address}; start "
               f"workers with:\n  tunefleet worker --connect {listener.address} "
               f"--key-file {key_file}", err=True)
    remaining = remaining_budget(study, n_trials)
    run_hub_command(study, storage, as_json, lambda: tunefleet.optimize(
        study, objective, n_trials=remaining, timeout=timeout, backend="tcp", listen=listen,
        key=key, listener=listener, max_retries=max_retries, grace=grace,
        worker_timeout=worker_timeout, reclaim_window=reclaim_window,
        storage_timeout=storage_timeout, checkpoint_dir=checkpoint_dir,
        checkpoint_store=artifacts, keep_checkpoints=keep_checkpoints,
        catch=(Exception,) if keep_going else (), show_progress_bar=progress),
        n_trials=n_trials, timeout=timeout)
