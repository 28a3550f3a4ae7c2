"""What ``tunefleet run`` and ``tunefleet serve`` share: the study's budget, and how a run that
was interrupted or failed ends (one line that says what is saved and how to resume)."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
import time
from typing import Any, Callable, Iterator

import click
import optuna
from optuna.trial import TrialState

from tunefleet.cli._options import best_summary, echo_summary
from tunefleet.errors import Interrupted, MirrorError, UsageError
from tunefleet._studies import DEFAULT_STORAGE, shown_url


def hub_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What every command that runs a coordinator says about faults and output: --max-retries,
    --grace, --worker-timeout, --storage-timeout, --keep-going, --progress/--no-progress, --json."""
    options = [
        click.option("--max-retries", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Runs of the parameters of a trial whose worker died."),
        click.option("--grace", type=click.FloatRange(min=0), default=5.0, show_default=True,
                     help="Seconds running trials get to finish after Ctrl-C or SIGTERM before "
                          "they are closed as FAIL (a second Ctrl-C closes them at once)."),
        click.option("--worker-timeout", type=click.FloatRange(min=0), default=120.0,
                     show_default=True, callback=_check_worker_timeout,
                     help="Seconds a worker may stay silent during a trial (stopped, hung, cut "
                          "off) before the trial is failed and retried; 0 waits forever."),
        click.option("--storage-timeout", type=click.FloatRange(min=0), default=300.0,
                     show_default=True,
                     help="Seconds a database server may stay away (restart, failover, network) "
                          "before the run stops; meanwhile running trials go on and new ones "
                          "wait."),
        click.option("--keep-going", is_flag=True,
                     help="A trial whose objective raises fails, and the study goes on."),
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Live progress bar on stderr."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the result as one JSON object."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class MemorySize(click.ParamType):
    """A size such as ``2GB``, ``500MB`` or plain bytes (``tunefleet.hub.parse_size``); a bad
    one is click's one-line error."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        from tunefleet.hub import parse_size

        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _check_worker_timeout(_ctx: click.Context, _param: click.Parameter,
                          value: float) -> float | None:
    if value and value < 3:
        raise click.BadParameter("must be 0 (wait forever) or at least 3 seconds (workers beat "
                                 "every second)")
    return value or None


def counted(study: optuna.Study) -> int:
    """Trials that use up the budget of ``--n-trials``: COMPLETE and PRUNED."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def remaining_budget(study: optuna.Study, n_trials: int | None) -> int | None:
    """``--n-trials`` is the study's total, so a rerun after a crash finishes the budget."""
    if n_trials is None:
        return None
    done = counted(study)
    left = max(0, n_trials - done)
    if done:
        click.echo(f"study {study.study_name!r} holds {done} of {n_trials} trials; "
                   f"running {left} more", err=True)
    return left


def run_rounds(study: optuna.Study, n_trials: int | None, timeout: float | None,
               left: int | None, run_round: Callable[[int | None, float | None], Any]) -> bool:
    """``--keep-going`` up to the budget: ``tunefleet.optimize(n_trials=left)`` counts failed
    trials too, as Optuna does, while ``--n-trials`` counts COMPLETE and PRUNED; so run more
    rounds (``run_round(left, timeout_left)``) until the study holds ``n_trials``, unless the
    time is up or the study was stopped (a callback, a grid that ran out). Bounded: a round
    that completed no trial ends it with one line, so an objective that always fails cannot
    loop for ever. Returns False in that case (the budget cannot be reached), else True."""
    from tunefleet.hub import last_run_end, was_stopped

    started = time.monotonic()
    done = None if n_trials is None or left is None else n_trials - left
    while True:
        run_round(left, timeout)
        if done is None or left is None:
            return True
        end = last_run_end(study)  # the storage holds the run: its counts, without a read
        now = (end.states[TrialState.COMPLETE] + end.states[TrialState.PRUNED]
               if end is not None else counted(study))
        if now >= n_trials or was_stopped(study):
            return True
        if timeout is not None:
            timeout -= time.monotonic() - started
            started = time.monotonic()
            if timeout <= 0:
                return True
        if now <= done:
            click.echo(f"tunefleet: stopping short of --n-trials {n_trials} (the study holds "
                       f"{now}): the last round of {left} trial(s) completed none, so another "
                       "would most likely fail too", err=True)
            return False
        done, left = now, n_trials - now
        click.echo(f"tunefleet: {left} trial(s) failed; running {left} more to reach "
                   f"--n-trials {n_trials}", err=True)


#: in Optuna's error when BruteForceSampler meets a parameter without a finite set of values
_BRUTEFORCE = "BruteForceSampler"


class _DropBruteForceFailure(logging.Filter):
    """The coordinator logs a trial failed by BruteForceSampler's refusal of a continuous
    parameter with its traceback; the run ends with one line that says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _BRUTEFORCE not in record.getMessage()


@contextlib.contextmanager
def _space_errors_in_one_line(study: optuna.Study) -> Iterator[None]:
    if not isinstance(study.sampler, optuna.samplers.BruteForceSampler):
        yield
        return
    logger, drop = logging.getLogger("optuna.tunefleet"), _DropBruteForceFailure()
    logger.addFilter(drop)
    try:
        yield
    except ValueError as exc:
        if _BRUTEFORCE not in str(exc):
            raise
        raise UsageError(
            "--sampler bruteforce needs a finite search space, and the objective suggests a "
            "continuous parameter: give suggest_float a step= (or use suggest_int or "
            "suggest_categorical), or choose another sampler") from None
    finally:
        logger.removeFilter(drop)


class _DropMirrorLog(logging.Filter):
    """The mirror logs the durable write that failed; when the storage cannot be written the
    run ends with that error in one line, so the log would say it twice. Any other failure
    of the mirror is still logged when it happens."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tunefleet._unwritable import unwritable_cause

        message = record.getMessage()
        return unwritable_cause(Exception(message)) is None and "StorageOutage(" not in message


@contextlib.contextmanager
def _storage_errors_in_one_line(study: optuna.Study, where: str) -> Iterator[None]:
    """A storage that cannot be written (disk full, read-only, permission denied) or that stayed
    away past --storage-timeout ends the run with one line saying what to do, exit 1, not a
    traceback through the database driver."""
    from tunefleet._outage import find_outage
    from tunefleet._unwritable import unwritable_cause

    logger, drop = logging.getLogger("tunefleet.mirror"), _DropMirrorLog()
    logger.addFilter(drop)
    try:
        yield
    except MirrorError as exc:
        outage = find_outage(exc)
        if outage is not None:
            click.echo(f"tunefleet: the run stopped: the storage {where} could not be reached "
                       f"for {outage.seconds:.0f} s ({outage.words}). Study "
                       f"{study.study_name!r} keeps every trial counted so far; bring the "
                       f"database back (or raise --storage-timeout), then run the same command "
                       f"again to continue.", err=True)
            sys.exit(1)
        cause = unwritable_cause(exc)
        if cause is None:
            raise
        click.echo(f"tunefleet: the run stopped: the storage {where} cannot be written: "
                   f"{cause[0]}. Study {study.study_name!r} keeps every trial counted so far; "
                   f"{cause[1]}, then run the same command again to continue.", err=True)
        sys.exit(1)
    finally:
        logger.removeFilter(drop)


def _exhausted(study: optuna.Study, n_trials: int | None, timeout: float | None,
               seconds: float) -> str | None:
    """The line saying that grid or brute force ran out of points before ``--n-trials``."""
    sampler = study.sampler
    if n_trials is None or not isinstance(
            sampler, (optuna.samplers.GridSampler, optuna.samplers.BruteForceSampler)):
        return None
    done = counted(study)
    if done >= n_trials or (timeout is not None and seconds >= timeout):
        return None
    if isinstance(sampler, optuna.samplers.GridSampler) and not sampler.is_exhausted(study):
        return None
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    points = len({tuple(sorted((k, repr(v)) for k, v in t.params.items())) for t in trials})
    return (f"the search space is exhausted: all {points} of its points were tried "
            f"({done} trials), so the run ended before --n-trials {n_trials}")


def run_hub_command(study: optuna.Study, storage: str | None, as_json: bool,
                    optimize: Callable[[], Any], n_trials: int | None = None,
                    timeout: float | None = None) -> None:
    """Run ``optimize`` and end as a person expects: the summary and where the study is, or
    (Ctrl-C, SIGTERM) what was saved and the exact command to continue, exit 128 + signal.
    ``n_trials`` (the study's budget) and ``timeout`` tell an exhausted grid from the end of
    the budget. ``optimize`` returning False (``run_rounds``: the budget cannot be reached)
    ends with exit 1 after the summary."""
    where = shown_url(storage or DEFAULT_STORAGE)  # no message shows a password
    again = shlex.join(shown_url(arg) for arg in sys.argv[1:])
    started = time.monotonic()
    try:
        with _storage_errors_in_one_line(study, where), _space_errors_in_one_line(study):
            reached = optimize()
    except KeyboardInterrupt as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        fresh = optuna.load_study(study_name=study.study_name, storage=study._storage)
        click.echo(
            f"interrupted: study {study.study_name!r} in {where} holds {counted(fresh)} "
            f"finished trials ({len(fresh.trials)} in all); running trials were closed as FAIL. "
            f"Run the same command again to continue: tunefleet {again}",
            err=True)
        sys.exit(code)
    except (KeyError, ValueError, TypeError, RuntimeError, ArithmeticError, AttributeError,
            OSError, ImportError, AssertionError, LookupError, MemoryError) as exc:
        # The objective's own traceback was logged with its trial (Optuna's format); tunefleet
        # adds one line, not a second traceback through its internals.
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__  # MemoryError()
        click.echo(
            f"tunefleet: the run stopped: {what}. Study "
            f"{study.study_name!r} in {where} keeps its finished trials; add --keep-going to "
            "fail such trials and go on, and run the same command again to continue.", err=True)
        sys.exit(1)
    echo_summary(best_summary(study), as_json)
    exhausted = _exhausted(study, n_trials, timeout, time.monotonic() - started)
    if exhausted:
        click.echo(exhausted, err=True)
    if not as_json and where not in (":memory:", "memory", "inmemory"):
        hidden = " (*** is the password)" if where != (storage or DEFAULT_STORAGE) else ""
        click.echo(f"saved in {where} (study {study.study_name!r}); see it with: tunefleet best "
                   f"--storage {shlex.quote(where)} --study {shlex.quote(study.study_name)}"
                   f"{hidden}", err=True)
    if reached is False and not exhausted:  # --keep-going, a round completed no trial
        sys.exit(1)
