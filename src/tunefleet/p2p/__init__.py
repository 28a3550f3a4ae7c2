"""Peer-to-peer mode: a swarm of peers, each with its own local study, sharing best trials.

    from tunefleet.p2p import Peer
    peer = Peer(objective, uid="p1", rounds=10, trials=10,
                seed_uid="seed", seed_address="tcp://localhost:5555")
    peer.optimize()
    summary = peer.terminate()
"""

from tunefleet.p2p._config import PeerConfig
from tunefleet.p2p._peer import Peer

__all__ = ["Peer", "PeerConfig"]
