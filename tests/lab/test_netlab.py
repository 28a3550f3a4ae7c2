"""The lab itself: hosts reach each other over the switch and nothing else does; a partition
cuts a host off and a heal brings it back; a host's processes die at once; nothing is left."""

from __future__ import annotations

import socket
import subprocess

from tests.lab.netlab import Lab

SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""


def test_partition_heal_kill_and_teardown(netlab: Lab):
    a, b = netlab.host("a"), netlab.host("b")
    assert (a.address, b.address) == ("10.213.0.1", "10.213.0.2")
    server = b.python(SERVER, b.address, stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    assert a.can_reach(b.address, port)
    b.partition()
    assert not a.can_reach(b.address, port, timeout=2)
    b.heal()
    assert a.can_reach(b.address, port)
    # The lab's addresses exist only inside it: this (the machine's own) namespace has none.
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex((b.address, port)) != 0
    assert b.pids() == [server.pid]
    b.kill_all()
    assert server.wait(30) == -9
    assert not a.can_reach(b.address, port)
    names = [h.netns for h in netlab.hosts.values()] + [netlab.switch]
    netlab.close()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in listing.split()]
