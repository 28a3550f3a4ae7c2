"""The peer's command line, shared by ``tunefleet peer`` and ``Peer(parse=True)`` scripts.

It lives in the library (not in ``tunefleet.cli``) because ``Peer(parse=True)`` needs it: the
CLI uses the library, never the reverse.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable, NoReturn, Sequence

import click

from tunefleet.errors import TunefleetError, UsageError
from tunefleet.p2p._config import (ALONE_WAIT, DEFAULT_ADVERTISE, DOCUMENT_ADVERTISE,
                                    FINAL_TIMEOUT, JOIN_TIMEOUT)
from tunefleet._studies import SAMPLERS, load_search_space
from tunefleet.transport import P2P_KEY_ENV, read_key


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
                     help="Address to listen on. Default: the port of --advertise on 127.0.0.1. "
                          "Without a key a peer listens on 127.0.0.1 only, whatever the host "
                          "here, unless --insecure. Port 0 picks a free port."),
        click.option("-a", "--advertise", default=None,
                     help=f"Address other peers use to reach this one [default: "
                          f"{DEFAULT_ADVERTISE} for tunefleet peer, {DOCUMENT_ADVERTISE} for "
                          f"Peer(parse=True) scripts, as in the P2P document]."),
        click.option("-s", "--seed-uid", default=None, help="UID of a peer already in the swarm."),
        click.option("-d", "--seed-address", default=None, help="Its address (tcp://host:port)."),
        click.option("--direction", "directions", multiple=True,
                     type=click.Choice(["minimize", "maximize"], case_sensitive=False),
                     help="Repeat for several objectives. Default: minimize."),
        click.option("--sampler", type=click.Choice(SAMPLERS, case_sensitive=False), default=None,
                     help="Default: tpe (nsga2 for several objectives); grid needs "
                          "--search-space."),
        click.option("--search-space", type=click.Path(dir_okay=False), default=None,
                     help="JSON or YAML file of the grid for --sampler grid, as for tunefleet "
                          'run: each parameter name mapped to its values, e.g. {"x": [0, 1, 2]}. '
                          "Each peer walks the grid in its own order."),
        click.option("--seed", "sampler_seed", type=int, default=None,
                     help="Sampler seed, mixed with the UID so that peers still differ. With "
                          "--storage, a peer run again later goes on drawing as one "
                          "uninterrupted run would."),
        click.option("--share", type=click.Choice(["best", "top-k", "all"]), default="best",
                     show_default=True, help="What to send after each round."),
        click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
                     help="How many trials --share top-k sends."),
        click.option("--explore-rounds", type=click.IntRange(min=0), default=None,
                     help="First rounds run on this peer's own trials only, received ones "
                          "used afterwards, so peers explore apart. Default: a third of -r."),
        click.option("--key-file", default=None,
                     help="File holding the swarm's shared key (mode 600: a file others can "
                          "read is refused): connections pass a CurveZMQ handshake derived "
                          "from it, messages are HMAC-SHA256 signed, and unsigned, replayed "
                          f"or misdirected ones dropped. Or set {P2P_KEY_ENV}."),
        click.option("--insecure", is_flag=True,
                     help="Without a key, listen where -b says (e.g. every interface) "
                          "instead of 127.0.0.1 only: anyone who reaches the port can join."),
        click.option("--storage", default=None,
                     help="Keep this peer's local study in a storage (e.g. journal:///p1.log) "
                          "instead of memory."),
        click.option("--study", "study_name", default=None,
                     help="Local study name. Default: p2p-UID."),
        click.option("--heartbeat", type=float, default=0.5, show_default=True,
                     help="Seconds between gossip rounds."),
        click.option("--peer-timeout", type=float, default=10.0, show_default=True,
                     help="A peer silent this long is dropped (suspected at half)."),
        click.option("--join-timeout", type=float, default=JOIN_TIMEOUT, show_default=True,
                     help="Seconds to keep asking the seed peer (-s/-d) to let us in, with "
                          "back-off from 0.5 to 5 s between asks."),
        click.option("--alone-wait", type=click.FloatRange(min=0), default=ALONE_WAIT,
                     show_default=True,
                     help="A seed that has met no other peer when its rounds are done waits "
                          "this many seconds for one to join before ending (0: end at once)."),
        click.option("--final-timeout", type=click.FloatRange(min=0, min_open=True),
                     default=FINAL_TIMEOUT, show_default=True,
                     help="Seconds the last exchange of bests may take once every peer has "
                          "finished its rounds; past them a peer that still sees another best "
                          "ends with its own and one warning line naming who disagrees."),
        click.option("--wait-peers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Start the first round only once this many peers (this one "
                          "included) have been heard of."),
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
    p = dict(params)
    as_json, quiet = p.pop("as_json"), p.pop("quiet")
    p["key"] = read_key(p.pop("key_file"), P2P_KEY_ENV)
    p["directions"] = [d.lower() for d in p["directions"]] or ["minimize"]
    p["catch"] = (Exception,) if p.pop("catch") else ()
    p["search_space"] = _grid(p.pop("search_space"), p["sampler"])
    return p, as_json, quiet


def _grid(path: str | None, sampler: str | None) -> dict[str, list[Any]] | None:
    """The grid of ``--search-space FILE``, read as ``tunefleet run`` reads it."""
    if path is None:
        return None
    if (sampler or "").lower() != "grid":
        raise UsageError("--search-space is the grid of --sampler grid: add --sampler grid")
    return load_search_space(path)


def parse_peer_argv(argv: Sequence[str] | None) -> tuple[dict[str, Any], bool, bool]:
    """``Peer(parse=True)``: read the peer options from ARGV (default ``sys.argv[1:]``).

    ``--help`` prints the help and exits 0; bad options are one line and exit 2. Without -b and
    -a the peer uses the P2P document's address (tcp://localhost:5555), so the document's two
    terminals work unchanged.
    """

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @peer_options
    def _agent(**params: Any) -> dict[str, Any]:
        return params

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        params = _agent.main(args=args, prog_name=sys.argv[0], standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    if not isinstance(params, dict):  # click returns the exit code of --help without raising
        sys.exit(params if isinstance(params, int) else 0)
    if params["bind"] is None and params["advertise"] is None:
        params["advertise"] = DOCUMENT_ADVERTISE
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
    """The result a peer prints at the end: the global best, who found it, whom it met."""
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
