"""``tunefleet peer``: run one peer of a peer-to-peer swarm (no database, no coordinator).

The same options serve ``Peer(parse=True)``, so a script written like the seed document's
agent takes exactly the command line of ``tunefleet peer`` minus the target.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable, NoReturn, Sequence

import click

from tunefleet.errors import TunefleetError, UsageError
from tunefleet.studies import SAMPLERS


def peer_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every peer option, shared by the command and ``Peer(parse=True)``."""
    options = [
        click.option("-u", "--uid", default=None,
                     help="This peer's unique id. Default: seed, or HOST-PORT for a peer "
                          "that joins with -s/-d."),
        click.option("-r", "--rounds", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Rounds to run."),
        click.option("-t", "--trials", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Trials per round."),
        click.option("-b", "--bind", default=None,
                     help="Address to listen on. Default: the port of --advertise, on 127.0.0.1 "
                          "when it advertises localhost, else on every interface (tcp://*:PORT). "
                          "Port 0 picks a free port."),
        click.option("-a", "--advertise", default=None,
                     help="Address other peers use to reach this one "
                          "[default: tcp://localhost:5555]."),
        click.option("-s", "--seed-uid", default=None, help="UID of a peer already in the swarm."),
        click.option("-d", "--seed-address", default=None, help="Its address (tcp://host:port)."),
        click.option("--direction", "directions", multiple=True,
                     type=click.Choice(["minimize", "maximize"], case_sensitive=False),
                     help="Repeat for several objectives. Default: minimize."),
        click.option("--sampler", type=click.Choice(SAMPLERS, case_sensitive=False), default=None,
                     help="Default: tpe (nsga2 for several objectives)."),
        click.option("--seed", "sampler_seed", type=int, default=None,
                     help="Sampler seed, mixed with the UID so that peers still differ."),
        click.option("--share", type=click.Choice(["best", "top-k", "all"]), default="best",
                     show_default=True, help="What to send after each round."),
        click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
                     help="How many trials --share top-k sends."),
        click.option("--explore-rounds", type=click.IntRange(min=0), default=None,
                     help="First rounds run on this peer's own trials only, received ones "
                          "used afterwards, so peers explore apart. Default: a third of -r."),
        click.option("--key-file", type=click.Path(dir_okay=False), default=None,
                     help="File holding the swarm's shared key: messages are HMAC-SHA256 "
                          "signed and unsigned ones dropped. Or set TUNEFLEET_P2P_KEY."),
        click.option("--storage", default=None,
                     help="Keep this peer's local study in a storage (e.g. journal:///p1.log) "
                          "instead of memory."),
        click.option("--study", "study_name", default=None,
                     help="Local study name. Default: p2p-UID."),
        click.option("--heartbeat", type=float, default=0.5, show_default=True,
                     help="Seconds between gossip rounds."),
        click.option("--peer-timeout", type=float, default=10.0, show_default=True,
                     help="A peer silent this long is dropped (suspected at half)."),
        click.option("--join-timeout", type=float, default=30.0, show_default=True,
                     help="Seconds to wait for the seed peer's answer."),
        click.option("--wait-peers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Start the first round only once this many peers are known."),
        click.option("--catch", is_flag=True,
                     help="Record a trial whose objective raises as failed and go on."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the result as one JSON object on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def config_kwargs(params: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """Click's parameters -> (PeerConfig keywords, --json, --quiet)."""
    from tunefleet.p2p.config import read_key

    p = dict(params)
    as_json, quiet = p.pop("as_json"), p.pop("quiet")
    p["key"] = read_key(p.pop("key_file"))
    p["directions"] = [d.lower() for d in p["directions"]] or ["minimize"]
    p["catch"] = (Exception,) if p.pop("catch") else ()
    return p, as_json, quiet


def parse_peer_argv(argv: Sequence[str] | None) -> tuple[dict[str, Any], bool, bool]:
    """``Peer(parse=True)``: read the peer options from ARGV (default ``sys.argv[1:]``)."""

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @peer_options
    def _agent(**params: Any) -> dict[str, Any]:
        return params

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        params = _agent.main(args=args, prog_name=sys.argv[0], standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    try:
        return config_kwargs(params)
    except UsageError as exc:
        usage_exit(exc)


def usage_exit(exc: TunefleetError) -> NoReturn:
    """What ``tunefleet`` does with its own errors, for scripts using ``Peer(parse=True)``."""
    click.echo(f"tunefleet: error: {exc}", err=True)
    sys.exit(2)


def _num(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def echo_peer_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out = dict(summary, best_value=_num(summary.get("best_value")))
        click.echo(json.dumps(out, default=str))
        return
    uid = summary["uid"]
    if "best_trials" in summary:
        click.echo(f"peer {uid}: Pareto front of {len(summary['best_trials'])} trials")
        for t in summary["best_trials"]:
            click.echo(f"  values {t['values']} params {t['params']} found by {t['found_by']}")
    elif summary["best_value"] is None:
        click.echo(f"peer {uid}: no completed trial")
    else:
        click.echo(f"peer {uid}: best value {summary['best_value']} found by {summary['found_by']}")
        click.echo(f"  best params {summary['best_params']}")
    click.echo(f"  {summary['n_trials']} trials in the local study, "
               f"{summary['n_received']} received from other peers")
    peers = ", ".join(f"{p['uid']} ({p['status']})" for p in summary.get("peers", []))
    click.echo(f"  peers: {peers}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@peer_options
def peer(target: str, **params: Any) -> None:
    """Run one peer of a swarm on TARGET (path/file.py:objective or package.module:objective).

    The first peer (the seed) stands alone; others join with -s SEED_UID -d SEED_ADDRESS:

    \b
      tunefleet peer examples/quadratic.py:objective -u seed -r 10
      tunefleet peer examples/quadratic.py:objective -u p1 -b tcp://*:5556 \\
          -a tcp://localhost:5556 -s seed -d tcp://localhost:5555 -r 10
    """
    import logging

    from tunefleet.p2p.peer import Peer, _setup_logging
    from tunefleet.targets import load_target

    kwargs, as_json, quiet = config_kwargs(params)
    _setup_logging(logging.WARNING if quiet else logging.INFO)
    objective = load_target(target)
    agent = Peer(objective, **kwargs)
    try:
        agent.optimize()
        summary = agent.terminate()
    except KeyboardInterrupt:
        click.echo(f"peer {agent.uid}: interrupted, left the swarm", err=True)
        sys.exit(130)
    echo_peer_summary(summary, as_json)
