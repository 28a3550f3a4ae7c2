"""``tunefleet peer``: run one peer of a peer-to-peer swarm (no database, no coordinator).

The options are ``tunefleet.p2p.peer_options`` and also serve ``Peer(parse=True)``, so a script
written like the P2P document's agent takes the command line of ``tunefleet peer`` minus the
target.
"""

from __future__ import annotations

import sys
from typing import Any

import click

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
    try:
        agent.optimize()
        summary = agent.terminate()
    except KeyboardInterrupt:
        click.echo(f"peer {agent.uid}: interrupted, left the swarm", err=True)
        sys.exit(130)
    echo_peer_summary(summary, as_json)
