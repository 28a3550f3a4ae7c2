"""What ``tunefleet run`` and ``tunefleet serve`` share: the study's budget, and how a run that
was interrupted or failed ends (one line that says what is saved and how to resume)."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Callable

import click
import optuna
from optuna.trial import TrialState

from tunefleet.cli._options import best_summary, echo_summary
from tunefleet.errors import Interrupted
from tunefleet._studies import DEFAULT_STORAGE


def hub_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """What every command that runs a coordinator says about faults and output: --max-retries,
    --grace, --worker-timeout, --keep-going, --progress/--no-progress, --json."""
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


def run_hub_command(study: optuna.Study, storage: str | None, as_json: bool,
                    optimize: Callable[[], Any]) -> None:
    """Run ``optimize`` and end as a person expects: the summary and where the study is, or
    (Ctrl-C, SIGTERM) what was saved and the exact command to continue, exit 128 + signal."""
    where = storage or DEFAULT_STORAGE
    try:
        optimize()
    except KeyboardInterrupt as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        fresh = optuna.load_study(study_name=study.study_name, storage=study._storage)
        click.echo(
            f"interrupted: study {study.study_name!r} in {where} holds {counted(fresh)} "
            f"finished trials ({len(fresh.trials)} in all); running trials were closed as FAIL. "
            f"Run the same command again to continue: tunefleet {shlex.join(sys.argv[1:])}",
            err=True)
        sys.exit(code)
    except (KeyError, ValueError, TypeError, RuntimeError, ArithmeticError, AttributeError,
            OSError, ImportError, AssertionError, LookupError) as exc:
        # The objective's own traceback was logged with its trial (Optuna's format); tunefleet
        # adds one line, not a second traceback through its internals.
        click.echo(
            f"tunefleet: the run stopped: {type(exc).__name__}: {exc}. Study "
            f"{study.study_name!r} in {where} keeps its finished trials; add --keep-going to "
            "fail such trials and go on, and run the same command again to continue.", err=True)
        sys.exit(1)
    echo_summary(best_summary(study), as_json)
    if not as_json and where not in (":memory:", "memory", "inmemory"):
        click.echo(f"saved in {where} (study {study.study_name!r}); see it with: tunefleet best "
                   f"--storage {where} --study {study.study_name}", err=True)
