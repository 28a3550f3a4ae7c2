"""A peer's settings, checked once so that bad input is one clear line, not a traceback later."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from typing import Sequence

from tunefleet.errors import UsageError
from tunefleet.transport import LOOPBACK_HOSTS, P2P_KEY_ENV, Address, is_loopback, split_address

SHARE_MODES = ("best", "top-k", "all")
# `tunefleet serve` listens on 5555: a peer's default port differs, so the two never meet.
DEFAULT_ADVERTISE = "tcp://localhost:5570"
# The P2P document's seed listens on 5555 and its second terminal dials it there: scripts built
# on Peer(parse=True), the document's API, keep that address so its commands work unchanged.
DOCUMENT_ADVERTISE = "tcp://localhost:5555"
JOIN_TIMEOUT = 120.0  # 128 peers started at once on 2 cores take about a minute to import
ALONE_WAIT = 60.0  # time to type the second terminal's command after the seed's
# The last exchange took 38 s at most with 128 peers on 2 loaded cores: 2 minutes bound it
# with room to spare, while a swarm that cannot agree (a misbehaving peer) still ends.
FINAL_TIMEOUT = 120.0
_UID = re.compile(r"^[A-Za-z0-9_.:@\-]{1,64}$")


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
    search_space: dict | None = None  # the grid of sampler "grid" (--search-space FILE)
    share: str = "best"
    explore_rounds: int | None = None  # None: a third of the rounds, on own trials only
    top_k: int = 5
    key: bytes | None = None
    storage: str | None = None  # None: the local study lives in memory
    study_name: str | None = None  # None: p2p-<uid>
    heartbeat: float = 0.5  # seconds between two gossip rounds
    peer_timeout: float = 10.0  # silent this long: dropped (suspected at half of it)
    join_timeout: float = JOIN_TIMEOUT
    alone_wait: float = ALONE_WAIT  # a seed that met nobody waits this long for a joiner
    final_timeout: float = FINAL_TIMEOUT  # the last exchange ends after this long, agreed or not
    insecure: bool = False  # without a key, listen beyond loopback anyway
    wait_peers: int = 1  # do not start the first round before this many peers are known
    catch: tuple[type[BaseException], ...] = ()
    warnings: list[str] = dataclasses.field(default_factory=list)  # said at start


    def checked(self) -> "PeerConfig":
        """Return a copy with defaults resolved, raising UsageError on anything wrong."""
        c = dataclasses.replace(self)
        if c.key is not None and not c.key:
            raise UsageError("the shared key is empty")
        c.bind, c.advertise = resolve_addresses(c.bind, c.advertise)
        c.warnings = list(c.warnings)
        if c.key is None and not c.insecure:
            c.bind = _loopback_only(c.bind, c.advertise, c.warnings)
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
        if c.alone_wait < 0:
            raise UsageError("--alone-wait must be 0 or more")
        if not c.final_timeout > 0:
            raise UsageError("--final-timeout must be more than 0")
        if c.wait_peers < 1:
            raise UsageError("--wait-peers must be at least 1")
        c.directions = [d.lower() for d in c.directions] or ["minimize"]
        for d in c.directions:
            if d not in ("minimize", "maximize"):
                raise UsageError(f"direction {d!r} must be minimize or maximize")
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


def check_address(address: str, what: str, *, connect: bool = False) -> Address:
    """Split ``tcp://host:port`` (given to ZeroMQ as written); a peer's address to connect to
    needs a real host and port."""
    checked = split_address(address or "", what, verbatim=True)
    if connect and (checked.host == "*" or checked.port in ("*", "0")):
        raise UsageError(f"{what} {address!r}: other peers cannot connect to "
                         f"{checked.host}:{checked.port}")
    return checked


def resolve_addresses(bind: str | None, advertise: str | None) -> tuple[str, str]:
    """Fill the missing one of bind/advertise from the other.

    Listeners stay on loopback unless told otherwise: advertising ``localhost`` binds
    127.0.0.1, advertising another host name binds every interface (other hosts must reach it).
    Port 0 (or ``*``) binds a free port; the advertised port then follows the bound one.
    """
    if bind is None and advertise is None:
        advertise = DEFAULT_ADVERTISE
    if advertise is not None:
        a = check_address(advertise, "-a/--advertise")
        if a.host == "*":
            raise UsageError(f"-a/--advertise {advertise!r}: advertise a host name other peers can reach")
        if bind is None:
            bind = f"tcp://{'127.0.0.1' if a.host in LOOPBACK_HOSTS else '*'}:{a.port}"
    assert bind is not None
    b = check_address(bind, "-b/--bind")
    if advertise is None:
        host = b.host if b.host not in ("*", "0.0.0.0", "[::]") else "localhost"
        advertise = f"tcp://{host}:{b.port}"
    return bind, advertise


def _loopback_only(bind: str, advertise: str, warnings: list[str]) -> str:
    """Without a key (and no --insecure) a peer listens on loopback only, whatever -b says."""
    if not is_loopback(check_address(advertise, "-a/--advertise").host):
        raise UsageError(f"without a key a peer listens on 127.0.0.1 only, so other hosts could "
                         f"not reach {advertise}: give --key-file FILE (or {P2P_KEY_ENV}), or "
                         "--insecure to open the swarm to the network")
    b = check_address(bind, "-b/--bind")
    if is_loopback(b.host):
        return bind
    local = f"tcp://{'[::1]' if b.host.startswith('[') else '127.0.0.1'}:{b.port}"
    warnings.append(f"no key: listening on {local} only, not on {bind} "
                    "(give --key-file, or --insecure to listen there without one)")
    return local
