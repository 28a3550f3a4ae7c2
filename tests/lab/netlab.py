"""A network lab for tests: hosts that are Linux network namespaces joined by one switch.

Each ``Lab`` has its own *switch* namespace holding a bridge; every host is another namespace
with one veth pair: ``eth0`` (its address, ``10.213.0.N/24``) on the host's side, a port of the
bridge on the switch's. Nothing is added to the machine's own namespace, so no address, route or
packet of a lab is seen outside it, and labs of tests running at once never meet (each has its
own switch, so all may use the same subnet).

A fault is what happens to real hosts: ``partition()`` takes the host's switch port down (its
packets are dropped silently, as behind a cut cable: TCP retransmits, nobody gets a reset),
``heal()`` brings it back; ``kill_all()`` SIGKILLs every process of the host at once; a single
process is stopped or killed with ``os.kill`` as usual (``Host.run`` returns a ``Popen`` whose
pid is the command's own: ``ip netns exec`` execs it).

Needs root and iproute2 (``ip netns``). Where it cannot run, ``require_netns()`` says why and
the test fails: a lab test never passes without its lab. ``Lab.close()`` removes everything,
also after a failed test; a lab left behind by a killed test run (its name holds the pid of its
pytest process) is removed by the next one.

Typical use, through the ``netlab`` fixture of ``tests/lab/conftest.py``::

    def test_x(netlab):
        db, w1 = netlab.host("db"), netlab.host("w1")
        proc = w1.run([sys.executable, "-m", "tunefleet", "worker", ...])
        w1.partition(); ...; w1.heal()
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

#: The lab's subnet (its /24); the hosts get .1, .2, ... in the order they are made.
SUBNET = "10.213.0"
_PREFIX = "tflab"
_labs = itertools.count()


class LabError(RuntimeError):
    """The lab could not be built; the message says why (not root, no iproute2, ...)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed ({proc.returncode}): "
                       f"{proc.stderr.strip()[-500:]}")
    return proc


def require_netns() -> None:
    """Raise ``LabError`` saying why, unless network namespaces can be made here."""
    if shutil.which("ip") is None:
        raise LabError("the network lab needs `ip` (Debian's iproute2: "
                       "bash scripts/install-system-deps.sh)")
    if os.geteuid() != 0:
        raise LabError(f"the network lab needs root for `ip netns` (running as uid "
                       f"{os.geteuid()}); CI runs the tests as root")
    probe = f"{_PREFIX}-{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        raise LabError(f"`ip netns add` does not work here: {made.stderr.strip()} (a "
                       "container needs CAP_SYS_ADMIN and CAP_NET_ADMIN for the network lab)")
    try:
        bridge = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if bridge.returncode != 0:
            raise LabError(f"cannot make a bridge in a network namespace: "
                           f"{bridge.stderr.strip()} (kernel module `bridge`)")
    finally:
        _ip("netns", "del", probe, check=False)


def _netns_pids(netns: str) -> list[int]:
    proc = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def remove_stale_labs() -> None:
    """Remove the namespaces of labs whose pytest process is gone (killed mid-test)."""
    listing = _ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({_PREFIX}-(\d+)-\S+)", listing, flags=re.M):
        netns, pid = name
        if int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        for p in _netns_pids(netns):
            _kill(p, signal.SIGKILL)
        _ip("netns", "del", netns, check=False)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class Host:
    """One host of the lab: a namespace with ``eth0`` at ``address`` and its own loopback."""

    def __init__(self, lab: "Lab", name: str, index: int) -> None:
        self.lab = lab
        self.name = name
        self.netns = f"{lab.name}-{name}"
        self.address = f"{SUBNET}.{index}"
        self.port_name = f"p{index}"  # its port on the switch
        self.procs: list[subprocess.Popen] = []

    def run(self, cmd: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start CMD on this host (``ip netns exec``); the ``Popen`` is CMD's own process.
        Keyword arguments go to ``subprocess.Popen`` (``env``, ``cwd``, ``stdout``, ...)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *cmd], **popen)
        self.procs.append(proc)
        return proc

    def run_wait(self, cmd: Sequence[str], timeout: float = 120,
                 **kw: Any) -> subprocess.CompletedProcess:
        """Run CMD on this host to its end and capture its output."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], capture_output=True,
                              text=True, timeout=timeout, **kw)

    def python(self, code: str, *args: str, **popen: Any) -> subprocess.Popen:
        """Start ``python -c CODE ARGS`` (this interpreter, so the venv) on this host."""
        return self.run([sys.executable, "-c", code, *args], **popen)

    def tunefleet(self, *args: str, logs: Path, **popen: Any) -> subprocess.Popen:
        """Start ``tunefleet ARGS`` on this host, its stdout and stderr in LOGS/<host>.out
        and .err (files: a flood of log lines never blocks it on a full pipe)."""
        logs.mkdir(parents=True, exist_ok=True)
        n = len(self.procs)
        return self.run([sys.executable, "-m", "tunefleet", *args],
                        stdout=open(logs / f"{self.name}-{n}.out", "w"),
                        stderr=open(logs / f"{self.name}-{n}.err", "w"), **popen)

    def can_reach(self, address: str, port: int, timeout: float = 3.0) -> bool:
        """Whether a TCP connection from this host to ADDRESS:PORT is accepted."""
        code = ("import socket, sys\n"
                "try:\n"
                f"    socket.create_connection(({address!r}, {port}), timeout={timeout})\n"
                "except OSError:\n"
                "    sys.exit(1)\n")
        return self.run_wait([sys.executable, "-c", code], timeout=timeout + 60).returncode == 0

    def partition(self) -> None:
        """Cut this host off the switch: its packets, and those sent to it, are dropped."""
        _ip("-n", self.lab.switch, "link", "set", self.port_name, "down")

    def heal(self) -> None:
        """Plug this host back into the switch."""
        _ip("-n", self.lab.switch, "link", "set", self.port_name, "up")

    def pids(self) -> list[int]:
        """Every process running in this host's namespace."""
        return _netns_pids(self.netns)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Send SIG to every process of this host at once (a host that dies)."""
        for pid in self.pids():
            _kill(pid, sig)


class Lab:
    """A switch and the hosts plugged into it; ``close()`` removes all of it."""

    def __init__(self) -> None:
        self.name = f"{_PREFIX}-{os.getpid()}-{next(_labs)}"
        self.switch = f"{self.name}-sw"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        try:
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def host(self, name: str) -> Host:
        """A new host called NAME (letters, digits), plugged in and up."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name) or name in self.hosts or name == "sw":
            raise ValueError(f"host name {name!r}: a new, short lowercase name")
        host = Host(self, name, len(self.hosts) + 1)
        self.hosts[name] = host
        _ip("netns", "add", host.netns)
        _ip("link", "add", "eth0", "netns", host.netns, "type", "veth",
            "peer", "name", host.port_name, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", host.port_name, "master", "br0")
        _ip("-n", self.switch, "link", "set", host.port_name, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Kill every process of every host, then remove the namespaces (which removes the
        veth pairs and the bridge). Safe to call twice, and on a half-built lab."""
        for host in self.hosts.values():
            host.kill_all()
            for proc in host.procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        for netns in [h.netns for h in self.hosts.values()] + [self.switch]:
            _ip("netns", "del", netns, check=False)
        self.hosts.clear()
