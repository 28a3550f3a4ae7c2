"""A peer written like the seed document's agent: options come from the command line."""

from objectives import Shifted

from tunefleet.p2p import Peer

if __name__ == "__main__":
    agent = Peer(parse=True, objective_object=Shifted(offset=0.0))
    agent.optimize()
    agent.terminate()
