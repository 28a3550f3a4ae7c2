"""A peer stopped by SIGTERM (what Slurm, Kubernetes and systemd send) ends as Ctrl-C does: it
leaves the swarm, prints its summary, and exits 128 + 15 (issue 20). A real peer process; its
own progress lines say when it is running."""

from __future__ import annotations

import json
import signal

import pytest

from tests.helpers import free_port
from tests.p2p.conftest import FAST, addr

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_peer_prints_its_summary_and_exits_128_plus_the_signal(swarm, signum):
    peer = swarm("seed", "-b", addr(free_port()), "-r", "1000", "-t", "2", "--json", *FAST,
                 objective="slow")
    peer.wait_for("round 2/1000")  # it ran trials: a best to report
    peer.proc.send_signal(signum)
    rc = peer.finish(30)
    assert rc == 128 + signum, peer.stderr
    summary = json.loads(peer.stdout.strip().splitlines()[-1])
    assert summary["uid"] == "seed" and summary["n_trials"] >= 4, summary
    assert summary["best_value"] is not None and summary["interrupted"] == signum.name
    assert f"interrupted by {signum.name}, left the swarm" in peer.stderr
    assert "Traceback" not in peer.stderr, peer.stderr
