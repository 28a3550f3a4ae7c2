"""``tunefleet init``: create a shared-storage study once, before the workers start."""

from __future__ import annotations

import click

from tunefleet.cli._options import spec_from_options, study_options
from tunefleet.storage_mode import init_study


@click.command()
@study_options
def init(storage: str | None, study_name: str | None, directions: tuple[str, ...],
         sampler: str | None, seed: int | None, pruner: str | None) -> None:
    """Create the study (once; running it again is harmless) and record its sampler and pruner
    in it, so that every `tunefleet worker` of the study builds the same ones."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec_from_options(directions, sampler, seed, pruner)
    explicit = sampler is not None or seed is not None or pruner is not None
    study, created = init_study(storage, study_name, spec, explicit=explicit,
                                directions_given=bool(directions))
    n = len(study.get_trials(deepcopy=False))
    what = "created" if created else f"exists ({n} trials)"
    click.echo(f"study {study.study_name} {what}: "
               f"{' '.join(d.name.lower() for d in study.directions)}, "
               f"sampler {type(study.sampler).__name__}, pruner {type(study.pruner).__name__}")
