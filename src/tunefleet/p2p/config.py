"""A peer's settings, checked once so that bad input is one clear line, not a traceback later."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from typing import Sequence

from tunefleet.errors import UsageError

KEY_ENV = "TUNEFLEET_P2P_KEY"
SHARE_MODES = ("best", "top-k", "all")
DEFAULT_ADVERTISE = "tcp://localhost:5555"
_ADDRESS = re.compile(r"^tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5}|\*)$")
_UID = re.compile(r"^[A-Za-z0-9_.:@\-]{1,64}$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]", "ip6-localhost")


@dataclasses.dataclass
class PeerConfig:
    """Everything a peer needs besides the objective; the CLI and ``parse=True`` fill it."""

    uid: str | None = None  # None: "seed" for a peer that starts a swarm, else HOST-PORT
    rounds: int = 10
    trials: int = 10
    bind: str | None = None  # None: the port of ``advertise``, on loopback if it is local
    advertise: str | None = None  # None: tcp://localhost:<port of bind>, or DEFAULT_ADVERTISE
    seed_uid: str | None = None
    seed_address: str | None = None
    directions: Sequence[str] = ("minimize",)
    sampler: str | None = None
    sampler_seed: int | None = None
    share: str = "best"
    explore_rounds: int | None = None  # None: a third of the rounds, on own trials only
    top_k: int = 5
    key: bytes | None = None
    storage: str | None = None  # None: the local study lives in memory
    study_name: str | None = None  # None: p2p-<uid>
    heartbeat: float = 0.5  # seconds between two gossip rounds
    peer_timeout: float = 10.0  # silent this long: dropped (suspected at half of it)
    join_timeout: float = 30.0
    wait_peers: int = 1  # do not start the first round before this many peers are known
    catch: tuple[type[BaseException], ...] = ()

    def checked(self) -> "PeerConfig":
        """Return a copy with defaults resolved, raising UsageError on anything wrong."""
        c = dataclasses.replace(self)
        c.bind, c.advertise = resolve_addresses(c.bind, c.advertise)
        if c.uid is None:
            c.uid = "seed" if c.seed_uid is None else joiner_uid(c.advertise)
        check_uid(c.uid, "-u/--uid")
        if c.rounds < 1 or c.trials < 1:
            raise UsageError("rounds (-r) and trials per round (-t) must be at least 1")
        if c.explore_rounds is None:
            c.explore_rounds = c.rounds // 3
        if c.explore_rounds < 0:
            raise UsageError("--explore-rounds must be 0 or more")
        if c.share not in SHARE_MODES:
            raise UsageError(f"--share {c.share!r}: choose one of {', '.join(SHARE_MODES)}")
        if c.top_k < 1:
            raise UsageError("--top-k must be at least 1")
        if (c.seed_uid is None) != (c.seed_address is None):
            raise UsageError("to join a swarm give both the seed peer's UID (-s) and address (-d)")
        if c.seed_uid is not None:
            check_uid(c.seed_uid, "-s/--seed-uid")
            if c.seed_uid == c.uid:
                raise UsageError(f"this peer's UID {c.uid!r} is the seed's UID: choose another -u")
            check_address(c.seed_address or "", "-d/--seed-address", connect=True)
        if c.heartbeat <= 0 or c.peer_timeout <= 2 * c.heartbeat or c.join_timeout <= 0:
            raise UsageError("--peer-timeout must be more than twice --heartbeat, both positive")
        if c.wait_peers < 1:
            raise UsageError("--wait-peers must be at least 1")
        c.directions = [d.lower() for d in c.directions] or ["minimize"]
        for d in c.directions:
            if d not in ("minimize", "maximize"):
                raise UsageError(f"direction {d!r} must be minimize or maximize")
        if c.key is not None and not c.key:
            raise UsageError("the shared key is empty")
        c.study_name = c.study_name or f"p2p-{c.uid}"
        return c


def joiner_uid(advertise: str) -> str:
    """A UID for a joining peer given no -u (the seed document's second terminal has none):
    this host's name and the advertised port, unique among the live peers of a host."""
    port = advertise.rsplit(":", 1)[1]
    tail = f"-{port}" if port not in ("0", "*") else f"-pid{os.getpid()}"
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname().split(".")[0]) or "peer"
    return host[: 64 - len(tail)] + tail


def check_uid(uid: str, what: str) -> None:
    if not isinstance(uid, str) or not _UID.match(uid):
        raise UsageError(f"{what} {uid!r}: a UID is 1-64 letters, digits or _ . : @ -")


def check_address(address: str, what: str, *, connect: bool = False) -> tuple[str, str]:
    """Split ``tcp://host:port``; a peer's address to connect to needs a real host and port."""
    m = _ADDRESS.match(address or "")
    if not m:
        raise UsageError(f"{what} {address!r} must look like tcp://host:port (e.g. tcp://localhost:5555)")
    host, port = m.group(1), m.group(2)
    if port != "*" and not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} {address!r}: port {port} is out of range")
    if connect and (host == "*" or port in ("*", "0")):
        raise UsageError(f"{what} {address!r}: other peers cannot connect to {host}:{port}")
    return host, port


def resolve_addresses(bind: str | None, advertise: str | None) -> tuple[str, str]:
    """Fill the missing one of bind/advertise from the other.

    Listeners stay on loopback unless told otherwise: advertising ``localhost`` binds
    127.0.0.1, advertising another host name binds every interface (other hosts must reach it).
    Port 0 (or ``*``) binds a free port; the advertised port then follows the bound one.
    """
    if bind is None and advertise is None:
        advertise = DEFAULT_ADVERTISE
    if advertise is not None:
        a_host, a_port = check_address(advertise, "-a/--advertise")
        if a_host == "*":
            raise UsageError(f"-a/--advertise {advertise!r}: advertise a host name other peers can reach")
    if bind is None:
        assert advertise is not None
        host = "127.0.0.1" if a_host in _LOOPBACK else "*"
        bind = f"tcp://{host}:{a_port}"
    check_address(bind, "-b/--bind")
    if advertise is None:
        b_host, b_port = check_address(bind, "-b/--bind")
        host = b_host if b_host not in ("*", "0.0.0.0") else "localhost"
        advertise = f"tcp://{host}:{b_port}"
    return bind, advertise


def read_key(key_file: str | None) -> bytes | None:
    """The shared HMAC key: the file's content, else the TUNEFLEET_P2P_KEY variable, else None."""
    if key_file:
        try:
            with open(key_file, "rb") as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"--key-file {key_file}: {exc.strerror}") from None
        if not key:
            raise UsageError(f"--key-file {key_file} is empty")
        return key
    env = os.environ.get(KEY_ENV)
    if env is not None:
        if not env.strip():
            raise UsageError(f"{KEY_ENV} is set but empty")
        return env.strip().encode()
    return None
