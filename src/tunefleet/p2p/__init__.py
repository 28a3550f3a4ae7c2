"""Peer-to-peer mode: a swarm of peers, each with its own local study, sharing best trials.

    from tunefleet.p2p import Peer
    peer = Peer(objective, uid="p1", rounds=10, trials=10,
                seed_uid="seed", seed_address="tcp://localhost:5555")
    peer.optimize()
    summary = peer.terminate()

``peer_options`` are the command line of ``tunefleet peer``, which ``Peer(parse=True)`` reads
too; ``config_kwargs``, ``echo_peer_summary`` and ``setup_logging`` let a command built on them
do what ``tunefleet peer`` does.
"""

from tunefleet.p2p._config import PeerConfig
from tunefleet.p2p._options import config_kwargs, echo_peer_summary, peer_options
from tunefleet.p2p._peer import Peer, setup_logging

__all__ = ["Peer", "PeerConfig", "config_kwargs", "echo_peer_summary", "peer_options",
           "setup_logging"]
