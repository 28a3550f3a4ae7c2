"""``tunefleet serve``: a coordinator that starts no worker; workers join over TCP."""

from __future__ import annotations

import shlex
import sys

import click

from tunefleet.cli._options import best_summary, echo_summary, spec_from_options, study_options
from tunefleet.studies import DEFAULT_STORAGE, create_or_load_study, open_storage
from tunefleet.targets import load_target


@click.command()
@click.argument("target")
@click.option("--listen", default="tcp://127.0.0.1:5555", show_default=True,
              help="Address to listen on; tcp://0.0.0.0:PORT for workers on other hosts.")
@click.option("--key-file", default="tunefleet.key", show_default=True,
              help="Shared secret; created with a random key when missing. Copy it to workers.")
@click.option("--n-trials", type=click.IntRange(min=0), default=None)
@click.option("--timeout", type=click.FloatRange(min=0), default=None)
@study_options
@click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--keep-going", is_flag=True,
              help="A trial whose objective raises fails, and the study goes on.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def serve(target: str, listen: str, key_file: str, n_trials: int | None, timeout: float | None,
          storage: str | None, study_name: str | None, directions: tuple[str, ...],
          sampler: str | None, seed: int | None, pruner: str | None, max_retries: int,
          keep_going: bool, progress: bool, as_json: bool) -> None:
    """Coordinate a study for workers that join with `tunefleet worker --connect`.

    Workers may join and leave at any time; each exits 0 when the study is done.
    """
    import tunefleet
    from tunefleet.transport.tcp import TcpListener, load_key, parse_address

    if n_trials is None and timeout is None:
        raise click.UsageError("give --n-trials or --timeout (or both)")
    parse_address(listen)  # a malformed address: one line, exit 2, before anything is opened
    key = load_key(key_file, create=True)
    # Bound before anything is said or opened: a busy port is one line and exit 2, and with
    # port 0 the line below gives the port the workers need.
    listener = TcpListener(listen, key)
    try:
        objective = load_target(target)
        spec = spec_from_options(directions, sampler, seed, pruner)
        study = create_or_load_study(open_storage(storage, sqlite_wal=True), study_name, spec,
                                     directions_given=bool(directions))
    except BaseException:
        listener.close()
        raise
    click.echo(f"coordinator for study {study.study_name!r} on {listener.address}; start "
               f"workers with:\n  tunefleet worker --connect {listener.address} "
               f"--key-file {key_file}", err=True)
    try:
        tunefleet.optimize(study, objective, n_trials=n_trials, timeout=timeout, backend="tcp",
                           listen=listen, key=key, listener=listener, max_retries=max_retries,
                           catch=(Exception,) if keep_going else (),
                           show_progress_bar=progress)
    except KeyboardInterrupt:
        click.echo(
            f"interrupted: running trials were closed as FAIL; study {study.study_name!r} in "
            f"{storage or DEFAULT_STORAGE}. Run the same command again to continue: "
            f"tunefleet {shlex.join(sys.argv[1:])}", err=True)
        sys.exit(130)
    echo_summary(best_summary(study), as_json)
