"""Options shared by the commands that open or create a study, so they mean the same everywhere."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import click

from tunefleet.errors import UsageError
from tunefleet._studies import PRUNERS, SAMPLERS, StudySpec, load_search_space

#: where ``--search-space`` leaves its grid (and file) for ``spec_from_options``: the option is
#: not passed to the commands, so that every command of ``study_options`` takes it unchanged.
_SPACE_KEY = "tunefleet.search_space"


def _search_space(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_SPACE_KEY] = (value, load_search_space(value))


def search_space_file() -> str | None:
    """The ``--search-space`` FILE of the command being run, if any (``slurm`` passes it on)."""
    ctx = click.get_current_context(silent=True)
    found = ctx.meta.get(_SPACE_KEY) if ctx is not None else None
    return found[0] if found else None


def study_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--storage, --study, --direction (repeatable), --sampler, --seed, --pruner."""
    options = [
        click.option("--storage", default=None,
                     help="Optuna storage URL (sqlite:///f.db, postgresql://..., mysql+pymysql://..., "
                          "journal:///f.log). Default: sqlite:///tunefleet.db in this folder."),
        click.option("--study", "study_name", default=None, help="Study name (default: tunefleet)."),
        click.option("--direction", "directions", multiple=True,
                     type=click.Choice(["minimize", "maximize"], case_sensitive=False),
                     help="Repeat for multi-objective studies. Default: minimize."),
        click.option("--sampler", type=click.Choice(SAMPLERS, case_sensitive=False), default=None,
                     help="Default: tpe (nsga2 for several objectives). cmaes needs the [cmaes] "
                          "extra, gp [gp], qmc [qmc]; grid needs --search-space."),
        click.option("--search-space", type=click.Path(dir_okay=False), default=None,
                     expose_value=False, callback=_search_space, is_eager=True,
                     help="JSON or YAML file of the grid for --sampler grid: each parameter "
                          'name mapped to its values, e.g. {"x": [0, 1, 2]}.'),
        click.option("--seed", type=int, default=None, help="Sampler seed."),
        click.option("--pruner", type=click.Choice(PRUNERS, case_sensitive=False), default=None,
                     help="Default: median."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def checkpoint_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--checkpoint-dir``, ``--checkpoint-store`` and ``--keep-checkpoints``: where
    ``tunefleet.checkpoint`` keeps trials' checkpoints, in every command that runs trials."""
    func = click.option(
        "--keep-checkpoints", is_flag=True,
        help="Keep the checkpoints of trials that ended (default: removed).")(func)
    func = click.option(
        "--checkpoint-store", default=None, metavar="URL|MODULE:NAME",
        help="Keep trials' checkpoints in an Optuna artifact store instead of a folder: "
             "s3://BUCKET (boto3's credentials and endpoint settings), gs://BUCKET, or "
             "path/file.py:name naming a store (or a function that makes one). For workers "
             "that share no disk with each other.")(func)
    return click.option(
        "--checkpoint-dir", default=None,
        help="Where trials' checkpoints live (tunefleet.checkpoint). Default: beside the "
             "SQLite or journal file (STORAGE.checkpoints/STUDY). With a database server: "
             "in hub mode the coordinator's own folder (remote workers stream theirs there); "
             "in storage mode give a folder every worker reaches.")(func)


def artifact_store(spec: str | None, checkpoint_dir: str | None) -> Any:
    """The artifact store of ``--checkpoint-store`` (None when not given), checked against
    ``--checkpoint-dir``."""
    if spec is None:
        return None
    if checkpoint_dir is not None:
        raise UsageError("give --checkpoint-dir (a folder) or --checkpoint-store, not both")
    from tunefleet._targets import load_artifact_store

    return load_artifact_store(spec)


def spec_from_options(directions: tuple[str, ...], sampler: str | None, seed: int | None,
                      pruner: str | None) -> StudySpec:
    """The study spec the options of ``study_options`` describe, with the ``--search-space``
    grid of the running command; the sampler is checked here, before any storage is opened."""
    from tunefleet._studies import check_sampler

    ctx = click.get_current_context(silent=True)
    found = ctx.meta.get(_SPACE_KEY) if ctx is not None else None
    space = found[1] if found else None
    if space is not None and (sampler or "").lower() != "grid":
        raise UsageError("--search-space is the grid of --sampler grid: add --sampler grid")
    check_sampler(sampler, space)
    return StudySpec(directions=[d.lower() for d in directions] or ["minimize"],
                     sampler=sampler, seed=seed, pruner=pruner, search_space=space)


def parse_gpus(text: str | None) -> int | list[str] | None:
    """``--gpus 4`` -> 4 (a count: the first four visible GPUs); ``--gpus 0,1`` -> ["0", "1"]
    and ``--gpus 3,`` -> ["3"] (indices into the visible GPUs, see ``tunefleet._gpus``). A lone
    number is a count, as in PyTorch Lightning; the trailing comma names one GPU."""
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise UsageError(f"--gpus {text}: a count must be at least 1; "
                             "to name GPU 0 alone write --gpus 0,")
        return count
    ids = [g.strip() for g in text.split(",") if g.strip()]
    if not ids:
        raise UsageError(f"--gpus {text!r}: give a count (--gpus 2) or indices (--gpus 0,1)")
    return ids


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def best_summary(study: Any) -> dict[str, Any]:
    """Best value(s) and parameters of a study as plain data, for printing or ``--json``."""
    from optuna.trial import TrialState

    from tunefleet.hub import last_run_end

    end = last_run_end(study)  # a hub run that just ended knows it all: no reading back
    if end is not None:
        counts, front = end.states, end.best
    else:
        counts = {s: 0 for s in TrialState}
        for t in study.get_trials(deepcopy=False):
            counts[t.state] += 1
        front = None
    states = {s.name.lower(): n for s, n in counts.items()}
    out: dict[str, Any] = {"study": study.study_name, "n_trials": sum(counts.values()),
                           "states": states}
    if len(study.directions) > 1:
        out["best_trials"] = [
            {"number": t.number, "values": [_clean(v) for v in t.values], "params": t.params}
            for t in (front if front is not None else study.best_trials)
        ]
        return out
    if front is None:
        try:
            front = [study.best_trial]
        except ValueError:
            front = []
    if not front:
        out.update(best_value=None, best_params=None, best_trial=None)
        return out
    best = front[0]
    out.update(best_value=_clean(best.value), best_params=best.params, best_trial=best.number)
    return out


def echo_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    states = ", ".join(f"{n} {k}" for k, n in summary["states"].items() if n)
    click.echo(f"study {summary['study']}: {summary['n_trials']} trials ({states or 'none'})")
    if "best_trials" in summary:
        click.echo(f"Pareto front: {len(summary['best_trials'])} trials")
        for t in summary["best_trials"]:
            click.echo(f"  trial {t['number']}: values {t['values']} params {t['params']}")
    elif summary.get("best_trial") is None:
        click.echo("no completed trial yet")
    else:
        click.echo(f"best value {summary['best_value']} (trial {summary['best_trial']})")
        click.echo(f"best params {summary['best_params']}")
