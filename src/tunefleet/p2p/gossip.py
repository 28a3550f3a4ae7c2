"""The network side of a peer: one thread that owns every ZeroMQ socket.

It listens on a PULL socket, talks to each peer through a PUSH socket, answers joins, gossips
the membership table every heartbeat, drops silent peers, and hands received trials to the
optimizing thread through a thread-safe queue, so receiving never blocks optimizing (and a
slow objective never stops the heartbeats). Sends never block: a peer that cannot keep up
loses messages rather than stalling the swarm.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any

import zmq
from optuna.trial import FrozenTrial

from tunefleet.errors import UsageError
from tunefleet.p2p import wire
from tunefleet.p2p.config import PeerConfig, check_address, check_uid
from tunefleet.p2p.membership import FAILED, FINISHED, LEFT, Member, Membership

log = logging.getLogger("tunefleet.p2p")

MAX_MESSAGE = 32 * 1024 * 1024
FANOUT = 8  # peers gossiped to per heartbeat (all of them in swarms this small or smaller)
_IDLE_SOCKET_S = 10.0


class Node:
    """Binds at construction (so a busy port is a UsageError right away); ``start()`` runs it."""

    def __init__(self, cfg: PeerConfig) -> None:
        self.cfg = cfg
        self.uid = cfg.uid
        self.key = cfg.key
        self._outs: dict[str, tuple[zmq.Socket, float]] = {}
        self.stopped = threading.Event()
        self.ctx = zmq.Context()
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        assert cfg.bind is not None and cfg.advertise is not None
        if "[" in cfg.bind:
            self.inbox.setsockopt(zmq.IPV6, 1)
        try:
            self.inbox.bind(cfg.bind)
        except zmq.ZMQError as exc:
            self.close()
            raise UsageError(f"cannot listen on {cfg.bind}: {exc} "
                             "(another peer there? choose another port with -b and -a)") from None
        self.bound = self.inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        port = self.bound.rsplit(":", 1)[1]
        advertise = cfg.advertise
        if advertise.endswith((":0", ":*")):
            advertise = advertise.rsplit(":", 1)[0] + ":" + port
        self.address = advertise
        self.membership = Membership(cfg.uid, advertise, suspect_after=cfg.peer_timeout / 2,
                                     drop_after=cfg.peer_timeout)
        self.received: queue.Queue[tuple[str, str, FrozenTrial]] = queue.Queue()
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._shared: list[dict[str, Any]] = []
        self._view: list[dict[str, Any]] = self.membership.snapshot()
        self._view_lock = threading.Lock()
        self._joining: tuple[str, str] | None = None
        self.joined = threading.Event()
        self.refusal: str | None = None
        self.done = threading.Event()  # every live peer has finished: time to leave
        self._quiet_since: float | None = None
        self.n_bad = 0
        self.n_dropped_sends = 0
        self._thread = threading.Thread(target=self._run, name=f"tunefleet-peer-{cfg.uid}",
                                        daemon=True)

    # ---- called from the optimizing thread -----------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join_swarm(self, seed_uid: str, seed_address: str, timeout: float) -> None:
        """Ask the seed peer to let us in; UsageError when refused or unanswered."""
        self._joining = (seed_uid, seed_address)
        self._commands.put(("join", None))
        if not self.joined.wait(timeout) or self.refusal:
            reason = self.refusal
            self.leave(wait=False)
            if reason:
                raise UsageError(f"peer {self.uid!r} cannot join the swarm: {reason}")
            hint = "does it use the same key?" if self.key else "does it expect a key?"
            raise UsageError(f"no answer from seed peer {seed_uid!r} at {seed_address} "
                             f"within {timeout:g} s: is it running, and reachable ({hint})")

    def share(self, new: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
        """Send NEW trial payloads to every peer; greet peers met later with CURRENT."""
        self._commands.put(("share", (new, current)))

    def finish(self) -> None:
        self._commands.put(("status", FINISHED))

    def leave(self, wait: bool = True) -> None:
        """Say goodbye to every live peer, then close the sockets."""
        if self._thread.is_alive():
            self._commands.put(("leave", None))
            self._thread.join(timeout=5.0 if wait else 2.0)
        if not self._thread.is_alive():
            self.close()

    def view(self) -> list[dict[str, Any]]:
        with self._view_lock:
            return [dict(row) for row in self._view]

    def n_known(self) -> int:
        """This peer plus the live peers it knows."""
        return sum(1 for row in self.view() if row["status"] not in (FAILED, LEFT))

    # ---- the network thread --------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        hb = self.cfg.heartbeat
        next_tick = time.monotonic()
        next_join = 0.0
        try:
            while True:
                now = time.monotonic()
                wait_s = max(0.0, min(next_tick - now, 0.05))
                if poller.poll(wait_s * 1000):
                    for _ in range(200):
                        try:
                            frames = self.inbox.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                if self._commands_done():
                    return
                now = time.monotonic()
                if self._joining and not self.joined.is_set() and now >= next_join:
                    self._send_join()
                    next_join = now + max(hb, 0.5)
                if now >= next_tick:
                    self._tick(now)
                    next_tick = max(next_tick + hb, now + hb / 2)
        except Exception:  # a bug here must not leave the optimizing thread waiting forever
            log.exception("peer %s: network thread failed", self.uid)
            self.refusal = self.refusal or "the network thread failed"
            self.joined.set()
            self.done.set()
        finally:
            self.close()

    def _commands_done(self) -> bool:
        """Run the optimizing thread's requests; True when it asked us to leave."""
        while True:
            try:
                what, arg = self._commands.get_nowait()
            except queue.Empty:
                return False
            if what == "share":
                new, current = arg
                self._shared = current
                if new:
                    for m in self.membership.alive():
                        self._send_trials(m.address, new)
            elif what == "status":
                self.membership.set_status(arg)
                self._gossip(self.membership.alive())
            elif what == "join":
                pass  # _run sends it on its own schedule
            elif what == "leave":
                self.membership.set_status(LEFT)
                for m in self.membership.alive():
                    self._send(m.address, {"type": "bye", "from": self.uid})
                return True

    def _tick(self, now: float) -> None:
        ms = self.membership
        ms.tick()
        suspected, dropped = ms.check()
        for m in suspected:
            log.info("peer %s: %s is silent, suspected", self.uid, m.uid)
        for m in dropped:
            log.warning("peer %s: %s did not answer for %g s, dropped", self.uid, m.uid,
                        ms.drop_after)
            self._close_out(m.address)
        alive = ms.alive()
        if alive:
            self._gossip(random.sample(alive, min(FANOUT, len(alive))))
        if self.joined.is_set() or not self._joining:
            if ms.all_finished():
                if self._quiet_since is None:
                    self._quiet_since = now
                elif now - self._quiet_since >= 2 * self.cfg.heartbeat:
                    self.done.set()
            else:
                self._quiet_since = None
        keep = {m.address for m in alive}
        for address, (_, used) in list(self._outs.items()):
            if address not in keep and now - used > _IDLE_SOCKET_S:
                self._close_out(address)
        self._refresh_view()

    def _refresh_view(self) -> None:
        view = self.membership.snapshot()
        with self._view_lock:
            self._view = view

    # ---- receiving -----------------------------------------------------------------------
    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames, self.key)
            getattr(self, "_on_" + msg["type"])(msg)
        except Exception as exc:  # WireError, or anything odd a stranger's data set off
            self.n_bad += 1
            level = logging.WARNING if self.n_bad <= 3 else logging.DEBUG
            why = exc if isinstance(exc, wire.WireError) else f"{type(exc).__name__}: {exc}"
            log.log(level, "peer %s: dropped a message: %s", self.uid, why)
            return
        self._refresh_view()

    def _on_join(self, msg: dict[str, Any]) -> None:
        if self._joining and not self.joined.is_set():
            return  # not in a swarm ourselves yet: the newcomer will ask again
        uid, address = msg["from"], wire.field(msg, "address", str)
        try:
            check_uid(uid, "UID")
            check_address(address, "address", connect=True)
        except UsageError as exc:
            raise wire.WireError(f"bad join: {exc}") from None
        inc, counter = wire.field(msg, "incarnation", int), wire.field(msg, "counter", int)
        directions = wire.field(msg, "directions", list)
        holder = self.membership.holder_of(uid)
        reason = None
        if holder is not None and holder.address != address:
            reason = (f"UID {uid!r} is already taken by the live peer at {holder.address}; "
                      "choose another -u")
        elif directions != list(self.cfg.directions):
            reason = (f"it would {' '.join(directions)} but the swarm's peer {self.uid!r} "
                      f"does {' '.join(self.cfg.directions)}; pass the same --direction")
        if reason:
            log.warning("peer %s: refused %s at %s: %s", self.uid, uid, address, reason)
            self._send(address, {"type": "refuse", "from": self.uid, "reason": reason})
            return
        if holder is None:
            log.info("peer %s: %s joined from %s", self.uid, uid, address)
        self.membership.add(uid, address, inc, counter)
        self._send(address, {"type": "welcome", "from": self.uid, "address": self.address,
                             "table": self.membership.table()})
        if self._shared:
            self._send_trials(address, self._shared)
        self._gossip(self.membership.alive())  # tell the others at once

    def _on_welcome(self, msg: dict[str, Any]) -> None:
        table = wire.field(msg, "table", dict)
        if self._joining and not self.joined.is_set():
            seed_uid, seed_address = self._joining
            if msg["from"] != seed_uid:
                self.refusal = (f"the peer at {seed_address} is {msg['from']!r}, "
                                f"not {seed_uid!r} (-s)")
            else:
                self.membership.merge(table, msg["from"])
                log.info("peer %s: joined the swarm through %s (%d peers known)", self.uid,
                         seed_uid, len(self.membership.alive()) + 1)
            self.joined.set()
            return
        self._greet(self.membership.merge(table, msg["from"]))

    def _on_refuse(self, msg: dict[str, Any]) -> None:
        if self._joining and not self.joined.is_set():
            self.refusal = str(wire.field(msg, "reason", str))[:300]
            self.joined.set()

    def _on_gossip(self, msg: dict[str, Any]) -> None:
        if self._joining and not self.joined.is_set():
            return
        self._greet(self.membership.merge(wire.field(msg, "table", dict), msg["from"]))

    def _on_trials(self, msg: dict[str, Any]) -> None:
        for p in wire.field(msg, "trials", list)[: wire.MAX_TRIALS_PER_MESSAGE]:
            key, trial = wire.payload_to_trial(p, msg["from"])
            self.received.put((key, msg["from"], trial))

    def _on_bye(self, msg: dict[str, Any]) -> None:
        m = self.membership.members.get(msg["from"])
        if m is not None and m.alive:
            log.info("peer %s: %s left", self.uid, m.uid)
            self.membership.mark_left(m.uid)
            self._close_out(m.address)

    # ---- sending -------------------------------------------------------------------------
    def _greet(self, fresh: list[Member]) -> None:
        """Peers we just learned of get our table and our current best trials."""
        for m in fresh:
            log.info("peer %s: met %s at %s", self.uid, m.uid, m.address)
            self._gossip([m])
            if self._shared:
                self._send_trials(m.address, self._shared)

    def _send_join(self) -> None:
        assert self._joining is not None
        me = self.membership.me
        self._send(self._joining[1], {
            "type": "join", "from": self.uid, "address": self.address,
            "incarnation": me.incarnation, "counter": me.counter,
            "directions": list(self.cfg.directions)})

    def _gossip(self, members: list[Member]) -> None:
        msg = {"type": "gossip", "from": self.uid, "table": self.membership.table()}
        for m in members:
            self._send(m.address, msg)

    def _send_trials(self, address: str, payloads: list[dict[str, Any]]) -> None:
        step = wire.MAX_TRIALS_PER_MESSAGE
        for i in range(0, len(payloads), step):
            self._send(address, {"type": "trials", "from": self.uid,
                                 "trials": payloads[i:i + step]})

    def _send(self, address: str, msg: dict[str, Any]) -> None:
        entry = self._outs.get(address)
        if entry is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if "[" in address:
                sock.setsockopt(zmq.IPV6, 1)
            try:
                sock.connect(address)
            except zmq.ZMQError as exc:
                sock.close(0)
                log.warning("peer %s: cannot reach %s: %s", self.uid, address, exc)
                return
        else:
            sock = entry[0]
        self._outs[address] = (sock, time.monotonic())
        try:
            sock.send_multipart(wire.encode(msg, self.key), zmq.NOBLOCK)
        except zmq.Again:
            self.n_dropped_sends += 1

    def _close_out(self, address: str, linger: int = 0) -> None:
        entry = self._outs.pop(address, None)
        if entry is not None:
            entry[0].close(linger)

    def close(self) -> None:
        """Close every socket; goodbyes to live peers get half a second to go out."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        alive = {m.address for m in self.membership.alive()} if hasattr(self, "membership") else set()
        for address in list(self._outs):
            self._close_out(address, 500 if address in alive else 0)
        self.inbox.close(0)
        self.ctx.term()
