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
from tunefleet.studies import DEFAULT_STORAGE


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
