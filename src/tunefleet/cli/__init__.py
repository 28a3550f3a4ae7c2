"""The ``tunefleet`` command. Each sub-command lives in its own module and is imported only
when it is used, so ``tunefleet --help`` stays fast and an optional extra is never imported
by a command that does not need it."""

from __future__ import annotations

import importlib
import sys

import click

from tunefleet.errors import TunefleetError

__all__ = ["main"]

#: every option of every command can come from the environment: TUNEFLEET_<COMMAND>_<OPTION>
#: (``tunefleet run --n-trials 50`` is TUNEFLEET_RUN_N_TRIALS=50); see ``envvar_name``.
ENV_PREFIX = "TUNEFLEET"

# name -> "module:attribute"; a module that does not exist yet is left out of the listing.
COMMANDS = {
    "run": "tunefleet.cli._run:run",
    "best": "tunefleet.cli._inspect:best",
    "studies": "tunefleet.cli._inspect:studies",
    "serve": "tunefleet.cli._serve:serve",
    "worker": "tunefleet.cli._worker:worker",
    "init": "tunefleet.cli._init:init",
    "slurm": "tunefleet.cli._slurm:slurm",
    "peer": "tunefleet.cli._peer:peer",
    "report": "tunefleet.cli._report:report",
    "status": "tunefleet.cli._report:status",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        path = COMMANDS.get(name)
        if path is None:
            return None
        module_name, attr = path.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return with_envvars(getattr(module, attr), f"{ENV_PREFIX}_{name.upper()}")


def envvar_name(prefix: str, param: click.Option) -> str:
    """PREFIX_OPTION: the option's long name in capitals, dashes as underscores
    (``--n-trials`` -> ``TUNEFLEET_RUN_N_TRIALS``, ``--json`` -> ``TUNEFLEET_RUN_JSON``),
    whatever name the function's parameter has."""
    longs = [o for o in param.opts if o.startswith("--")] or [param.name or ""]
    return f"{prefix}_{max(longs, key=len).lstrip('-').replace('-', '_').upper()}"


def with_envvars(command: click.Command, prefix: str) -> click.Command:
    """Let every option of COMMAND come from its variable (see ``envvar_name``), listed in
    ``--help``; the command line wins over the variable."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None and param.name != "help":
            param.envvar = envvar_name(prefix, param)
            param.show_envvar = True
    return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tunefleet")
@click.option("-v", "--verbose", is_flag=True, envvar=f"{ENV_PREFIX}_VERBOSE",
              help="Let Optuna log at INFO level (one line per trial on stderr).")
def cli(verbose: bool) -> None:
    """Run one Optuna study on a fleet of workers.

    Every option may also come from a variable TUNEFLEET_<COMMAND>_<OPTION>, e.g.
    TUNEFLEET_RUN_N_TRIALS=50 or TUNEFLEET_WORKER_STORAGE=sqlite:///s.db; the command line wins.
    """
    # Optuna logs every finished trial at INFO: with hundreds of trials (or --no-progress, where
    # no bar hides them) that buries tunefleet's own messages. Every command imports Optuna
    # anyway, so this costs nothing; `tunefleet --help` alone never gets here.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Entry point: tunefleet's own errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="tunefleet", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TunefleetError as exc:
        click.echo(f"tunefleet: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(0)
