"""``tunefleet peer``: run one peer of a peer-to-peer swarm (no database, no coordinator).

The options are ``tunefleet.p2p.peer_options`` and also serve ``Peer(parse=True)``, so a script
written like the P2P document's agent takes the command line of ``tunefleet peer`` minus the
target.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from tunefleet.errors import Interrupted
from tunefleet.p2p import config_kwargs, echo_peer_summary, peer_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@peer_options
def peer(target: str, **params: Any) -> None:
    """Run one peer of a swarm on TARGET (path/file.py:objective or package.module:objective).

    The first peer (the seed) stands alone; others join with -s SEED_UID -d SEED_ADDRESS. A seed
    that has met nobody by the end of its rounds waits --alone-wait seconds for a joiner:

    \b
      tunefleet peer examples/p2p/quadratic.py:objective -u seed -r 10
      tunefleet peer examples/p2p/quadratic.py:objective -u p1 -b tcp://*:5571 \\
          -a tcp://localhost:5571 -s seed -d tcp://localhost:5570 -r 10
    """
    import logging

    from tunefleet.p2p import Peer, setup_logging
    from tunefleet._targets import load_target

    kwargs, as_json, quiet = config_kwargs(params)
    setup_logging(logging.WARNING if quiet else logging.INFO)
    objective = load_target(target)
    agent = Peer(objective, **kwargs)
    # SIGTERM (Slurm, Kubernetes, systemd, kill) ends the peer as Ctrl-C does: it leaves the
    # swarm at once and still says what it found.
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        agent.optimize()
        summary = agent.terminate()
    except KeyboardInterrupt as exc:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)  # the summary is printed whole
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        click.echo(f"peer {agent.uid}: interrupted by {name}, left the swarm", err=True)
        if agent.study is not None:  # else it was stopped before its study opened
            echo_peer_summary(dict(agent.summary(), interrupted=name), as_json)
        sys.exit(128 + signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    echo_peer_summary(summary, as_json)


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGINT and SIGTERM as a ``KeyboardInterrupt`` (``Interrupted``), the trial it stops
    failed without Optuna's warning and traceback: the peer's one line says why it ended."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    raise Interrupted(signum)
