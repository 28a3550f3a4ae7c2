"""The network side of a peer: one thread that owns every ZeroMQ socket.

It listens on a PULL socket, talks to each peer through a PUSH socket, answers joins, gossips
the membership table every heartbeat, drops silent peers, and hands received trials to the
optimizing thread through a thread-safe queue, so receiving never blocks optimizing (and a
slow objective never stops the heartbeats). Sends never block: a peer that cannot keep up
loses messages rather than stalling the swarm; what must arrive (joins, the last exchange of
bests) is sent again until it is answered.

Termination: once this peer and every live peer it knows have finished their rounds, peers
exchange ``final`` messages carrying their best trial and a digest of it and of the set of live
peers they know. A peer says ``bye`` only when every live peer's latest ``final`` shows the same
best and the same peers as its own, so every peer that ends prints the same global best; or,
should that never happen (a misbehaving peer), after ``final_timeout`` seconds of exchange,
with a warning line naming who disagrees.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections import Counter
from typing import Any

import zmq
from optuna.trial import FrozenTrial

from tunefleet.errors import UsageError
from tunefleet.p2p import _wire as wire
from tunefleet.p2p._config import PeerConfig, check_address, check_uid
from tunefleet.p2p._exchange import Disagreement, ExchangeClock, Final
from tunefleet.p2p._membership import FAILED, FINISHED, LEFT, RUNNING, Member, Membership

log = logging.getLogger("tunefleet.p2p")

# Peers gossiped to per heartbeat: news reaches all of 128 peers in about 4 heartbeats, and the
# work per peer stays small enough for 128 peers on 2 cores (8 cost 2.5 times as much).
FANOUT = 3
RCVHWM = 100  # messages queued per sending peer before ZeroMQ stops reading its connection
_IDLE_SOCKET_S = 10.0
_JOIN_FIRST_S, _JOIN_MAX_S = 0.5, 5.0  # back-off between two asks to join
_STUCK_SAY_S = 10.0  # a last exchange not over says this often what it waits for


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
        self.inbox.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE)
        self.inbox.setsockopt(zmq.RCVHWM, RCVHWM)
        self._curve = wire.curve_keys(cfg.key) if cfg.key else None
        self.monitor: zmq.Socket | None = None
        if self._curve is not None:
            # No ZAP handler: the server key is derived from the shared key and never sent, so
            # knowing it is holding the key; a handler in this thread made every handshake wait
            # for it, and 128 loaded peers then timed handshakes out by the hundred.
            self.inbox.curve_server = True
            self.inbox.curve_publickey, self.inbox.curve_secretkey = self._curve
            self.monitor = self.inbox.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.n_refused = 0
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
                                     drop_after=cfg.peer_timeout,
                                     direct_after=2 * cfg.peer_timeout)
        self.guard = wire.ReplayGuard(cfg.uid) if cfg.key else None
        self._seq = 0
        self.received: queue.Queue[tuple[str, str, FrozenTrial]] = queue.Queue()
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()  # the optimizing thread wakes the poller with it
        os.set_blocking(self._wake_w, False)
        self._shared: list[dict[str, Any]] = []
        self._view: list[dict[str, Any]] = self.membership.snapshot()
        self._view_lock = threading.Lock()
        self._joining: tuple[str, str] | None = None
        self.joined = threading.Event()
        self.refusal: str | None = None
        self.done = threading.Event()  # every live peer agrees on the best: time to leave
        self._finished_at: float | None = None
        self._alone_said = False
        # the last exchange: my best (digest, payloads), what I last sent, what each peer said
        self._best: tuple[str, list[dict[str, Any]]] | None = None
        self._final_sent: tuple[str, str] | None = None
        self._final_sent_at = 0.0
        self._resend_gap = 2 * cfg.heartbeat
        self._finals: dict[str, Final] = {}
        self.final_started: float | None = None  # monotonic: every live peer finished
        self.final_done: float | None = None  # monotonic: every live peer agreed (or timeout)
        self.agreed: bool | None = None  # None: no last exchange ended; False: timed out
        self._exchange = ExchangeClock()
        self.n_bad = 0
        self.bad_reasons: Counter[str] = Counter()  # why messages were dropped, in short
        self.n_dropped_sends = 0
        self._stuck_said = 0.0  # when the last exchange last said what it waits for
        self._last_tick = 0.0
        self._thread = threading.Thread(target=self._run, name=f"tunefleet-peer-{cfg.uid}",
                                        daemon=True)

    # ---- called from the optimizing thread -----------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _command(self, what: str, arg: Any) -> None:
        self._commands.put((what, arg))
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):  # the pipe is full (already awake) or closed
            pass

    def join_swarm(self, seed_uid: str, seed_address: str, timeout: float) -> None:
        """Ask the seed peer to let us in; UsageError when refused or unanswered."""
        self._joining = (seed_uid, seed_address)
        self._command("join", None)
        if not self.joined.wait(timeout) or self.refusal:
            reason = self.refusal
            self.leave(wait=False)
            if reason:
                raise UsageError(f"peer {self.uid!r} cannot join the swarm: {reason}")
            hint = "does it use the same key?" if self.key else "does it expect a key?"
            raise UsageError(f"no answer from seed peer {seed_uid!r} at {seed_address} "
                             f"within {timeout:g} s (--join-timeout): is it running, and "
                             f"reachable ({hint})")

    def share(self, new: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
        """Send NEW trial payloads to every peer; greet peers met later with CURRENT."""
        self._command("share", (new, current))

    def finish(self) -> None:
        self._command("status", FINISHED)

    def set_best(self, digest: str, payloads: list[dict[str, Any]]) -> None:
        """This peer's current best for the last exchange (the optimizing thread computes it)."""
        self._command("best", (digest, payloads))

    def leave(self, wait: bool = True) -> None:
        """Say goodbye to every live peer, then close the sockets."""
        if self._thread.is_alive():
            self._command("leave", None)
            self._thread.join(timeout=5.0 if wait else 2.0)
        if not self._thread.is_alive():
            self.close()

    def view(self) -> list[dict[str, Any]]:
        """The membership as of the last heartbeat (refreshed then, not on every message)."""
        with self._view_lock:
            return [dict(row) for row in self._view]

    def n_known(self) -> int:
        """This peer plus every peer it has heard of, live or not (--wait-peers): on a loaded
        host a slow peer may be dropped for a while and come back, and the swarm must not wait
        for a moment when all of them happen to be live at once."""
        return len(self.view())

    # ---- the network thread --------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        hb = self.cfg.heartbeat
        next_tick = time.monotonic()
        next_join, join_gap = 0.0, _JOIN_FIRST_S
        try:
            while True:
                now = time.monotonic()
                due = next_tick if not (self._joining and not self.joined.is_set()) \
                    else min(next_tick, next_join)
                events = dict(poller.poll(max(0.0, due - now) * 1000))
                if self._wake_r in events:
                    os.read(self._wake_r, 4096)
                if self.monitor is not None and self.monitor in events:
                    self._on_monitor()
                if self.inbox in events:
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
                    self._send_join()  # a slow seed (a loaded host) is asked again, less often
                    next_join = now + join_gap * random.uniform(0.8, 1.2)
                    join_gap = min(join_gap * 2, _JOIN_MAX_S)
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
                        self._send_trials(m, new)
            elif what == "status":
                self.membership.set_status(arg)
                self._finished_at = time.monotonic()
                self._gossip(self.membership.alive())
            elif what == "best":
                self._best = arg
            elif what == "join":
                pass  # _run sends it on its own schedule
            elif what == "leave":
                self._refresh_view()  # the summary shows the last word of every peer
                self.membership.set_status(LEFT)
                self._send_all(self.membership.alive(), {"type": "bye"})
                return True

    def _tick(self, now: float) -> None:
        ms = self.membership
        ms.tick()
        # A tick more than two heartbeats late: this thread was starved (128 peers on 2 cores)
        # and heard nobody meanwhile; dropping peers for our own deafness made the others
        # drop us back and kept views from ever agreeing.
        late = now - self._last_tick - 2 * self.cfg.heartbeat
        if self._last_tick and late > 0:
            ms.forgive(late)
        self._last_tick = now
        suspected, dropped = ms.check()
        for m in suspected:
            log.info("peer %s: %s is silent, suspected", self.uid, m.uid)
        for m in dropped:
            if ms.clock() - m.heard > ms.direct_after:
                log.warning("peer %s: %s did not write to us itself for %g s (only others "
                            "vouched for it), dropped", self.uid, m.uid, ms.direct_after)
            else:
                log.warning("peer %s: %s did not answer for %g s, dropped", self.uid, m.uid,
                            ms.drop_after)
            self._close_out(m.address)
        # members only others have spoken of lately are asked to speak for themselves
        probe = {"type": "gossip", "table": self.membership.own_row(), "probe": True}
        self._send_all(ms.unheard(ms.drop_after, ms.drop_after / 4), probe)
        alive = ms.alive()
        if alive:
            self._gossip(random.sample(alive, min(FANOUT, len(alive))))
        if (self.joined.is_set() or not self._joining) and not self._waiting_alone(now):
            self._last_exchange(now, alive)
        keep = {m.address for m in alive}
        for address, (_, used) in list(self._outs.items()):
            if address not in keep and now - used > _IDLE_SOCKET_S:
                self._close_out(address)
        self._refresh_view()

    def _waiting_alone(self, now: float) -> bool:
        """A seed that has met nobody by the end of its rounds waits a while for a joiner."""
        if (self.cfg.seed_uid is not None or self.membership.members
                or self._finished_at is None):
            return False
        left = self.cfg.alone_wait - (now - self._finished_at)
        if left > 0 and not self._alone_said:
            self._alone_said = True
            log.info("peer %s: no other peer has joined yet; waiting up to %g s for one "
                     "(--alone-wait) at %s", self.uid, self.cfg.alone_wait, self.address)
        return left > 0

    def _last_exchange(self, now: float, alive: list[Member]) -> None:
        """Once every live peer has finished: exchange bests until all agree, then be done."""
        if not self.membership.all_finished():
            self.final_started = None
            self._exchange.pause(now)
            return
        spent = self._exchange.run(now)
        if self.final_started is None:
            self.final_started = now
            log.info("peer %s: every peer finished; exchanging bests before leaving", self.uid)
        if self._best is None:
            return  # the optimizing thread has not told us its best yet
        mine = Final(self._best[0], self._view_digest())
        # Dropped peers get our finals too: one that is alive takes us back on our own word
        # (and we take it back on its own). Two peers that dropped each other (both starved on
        # a loaded host) never spoke again otherwise, while all others still counted both:
        # no two views could ever agree.
        dropped = [m for m in self.membership.members.values() if m.status == FAILED]
        if mine != self._final_sent:
            targets, self._resend_gap = alive + dropped, 2 * self.cfg.heartbeat
        elif now - self._final_sent_at >= self._resend_gap:  # in case a message was lost
            targets = [m for m in alive if self._finals.get(m.uid) != mine] + dropped
            self._resend_gap = min(2 * self._resend_gap, 8 * self.cfg.heartbeat)
        else:
            targets = []
        if targets:
            trials = self._best[1]
            small = len(wire.encode({"t": trials}, None)[2]) < wire.MAX_MESSAGE // 2
            msg = {"type": "final", "address": self.address, "best": mine[0], "view": mine[1],
                   "counter": self.membership.me.counter, "trials": trials if small else []}
            if not small:  # a large Pareto front goes first, in chunks
                for m in targets:
                    self._send_trials(m, trials)
            self._send_all(targets, msg)
            self._final_sent, self._final_sent_at = mine, now
        if self.done.is_set():
            return
        if all(self._finals.get(m.uid) == mine for m in alive):
            self.final_done, self.agreed = now, True
            self.done.set()
        elif spent > self.cfg.final_timeout:
            self.final_done, self.agreed = now, False
            log.warning("peer %s: no agreement after %.0f s of last exchange (--final-timeout "
                        "%g): ending with its own best %s; %s", self.uid, spent,
                        self.cfg.final_timeout, mine.best,
                        Disagreement.of(mine, self._finals, [m.uid for m in alive]).line())
            self.done.set()
        elif now - max(self.final_started, self._stuck_said) >= _STUCK_SAY_S:
            self._stuck_said = now
            self._say_waiting(now, alive, mine)

    def _say_waiting(self, now: float, alive: list[Member], mine: Final) -> None:
        """A last exchange that does not end says, now and then, what it waits for."""
        d = Disagreement.of(mine, self._finals, [m.uid for m in alive])
        bad = ", ".join(f"{n} {why}" for why, n in self.bad_reasons.most_common(3)) or "none"
        failed = sum(m.status == FAILED for m in self.membership.members.values())
        log.info("peer %s: last exchange for %.0f s: %s; %d dropped as failed; messages "
                 "dropped: %s; handshakes refused: %d; sends dropped: %d", self.uid,
                 now - (self.final_started or now), d.line(), failed, bad, self.n_refused,
                 self.n_dropped_sends)

    def _view_digest(self) -> str:
        return self.membership.view_digest()

    def _refresh_view(self) -> None:
        view = self.membership.snapshot()
        with self._view_lock:
            self._view = view

    # ---- receiving -----------------------------------------------------------------------
    def _on_monitor(self) -> None:
        """Connections closed in the key handshake: nothing of theirs was ever read."""
        assert self.monitor is not None
        while True:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.n_refused += 1
            level = logging.WARNING if self.n_refused <= 3 else logging.DEBUG
            log.log(level, "peer %s: refused a connection: it did not complete the key "
                    "handshake (another key, or not a tunefleet peer)", self.uid)

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames, self.key)
            if self.guard is not None:
                self.guard.check(msg)
            getattr(self, "_on_" + msg["type"])(msg)
            self.membership.heard_from(msg["from"])
        except Exception as exc:  # WireError, or anything odd a stranger's data set off
            self.n_bad += 1
            self.bad_reasons[str(exc).split(":")[0][:40]] += 1
            level = logging.WARNING if self.n_bad <= 3 else logging.DEBUG
            why = exc if isinstance(exc, wire.WireError) else f"{type(exc).__name__}: {exc}"
            log.log(level, "peer %s: dropped a message: %s", self.uid, why)
            return

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
        newcomer = Member(uid, address, inc, counter, RUNNING, 0.0)
        if reason:
            log.warning("peer %s: refused %s at %s: %s", self.uid, uid, address, reason)
            self._send(newcomer, {"type": "refuse", "reason": reason})
            return
        if holder is None:
            log.info("peer %s: %s joined from %s", self.uid, uid, address)
            self.membership.add(uid, address, inc, counter)
        self._send(newcomer, {"type": "welcome", "address": self.address,
                              "table": self.membership.table()})
        if self._shared:
            self._send_trials(newcomer, self._shared)
        if holder is None:  # tell some others at once; gossip does the rest
            alive = [m for m in self.membership.alive() if m.uid != uid]
            self._gossip(random.sample(alive, min(FANOUT, len(alive))))

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
        asker = self.membership.members.get(msg["from"])
        if msg.get("probe") is True and asker is not None and asker.status != LEFT:
            self._send(asker, {"type": "gossip", "table": self.membership.own_row()})  # "I am here"

    def _on_trials(self, msg: dict[str, Any]) -> None:
        for p in wire.field(msg, "trials", list)[: wire.MAX_TRIALS_PER_MESSAGE]:
            key, trial = wire.payload_to_trial(p, msg["from"])
            self.received.put((key, msg["from"], trial))

    def _on_final(self, msg: dict[str, Any]) -> None:
        """A peer's best and view in the last exchange. A peer we had not heard of, or had
        dropped, is (back) in: a final is its own word that it is alive and has finished.

        A final showing another set of peers is not answered with our table (it was, once per
        heartbeat and sender): at 128 peers every change of one view then cost 127 tables of
        128 rows, more than 2 cores could do, so heartbeats starved, peers were dropped, views
        changed again and the exchange never ended. Gossip spreads the tables anyway."""
        sender = msg["from"]
        best, view = wire.field(msg, "best", str), wire.field(msg, "view", str)
        address = wire.field(msg, "address", str)
        self._on_trials(msg)
        self._finals[sender] = Final(best, view)
        m = self.membership.members.get(sender)
        if m is None or m.status == FAILED:
            try:
                check_uid(sender, "UID")
                check_address(address, "address", connect=True)
            except UsageError as exc:
                raise wire.WireError(f"bad final: {exc}") from None
            counter = msg.get("counter", 0)
            if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
                raise wire.WireError("bad final: its counter is not a count")
            row = [address, wire.field(msg, "inc", int), counter, FINISHED]
            self._greet(self.membership.merge({sender: row}, sender))

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
                self._send_trials(m, self._shared)

    def _send_join(self) -> None:
        assert self._joining is not None
        me = self.membership.me
        seed = Member(self._joining[0], self._joining[1], 0, 0, RUNNING, 0.0)
        self._send(seed, {"type": "join", "address": self.address,
                          "incarnation": me.incarnation, "counter": me.counter,
                          "directions": list(self.cfg.directions)})

    def _gossip(self, members: list[Member]) -> None:
        self._send_all(members, {"type": "gossip", "table": self.membership.table()})

    def _send_trials(self, to: Member, payloads: list[dict[str, Any]]) -> None:
        """Trials in messages below the size bound that every peer enforces."""
        chunks, too_big = wire.trial_chunks(payloads)
        for key, n in too_big:
            log.warning("peer %s: trial %s not sent: %d bytes of data (user attributes?) "
                        "is more than a message may carry", self.uid, key, n)
        for chunk in chunks:
            self._send(to, {"type": "trials", "trials": chunk})

    def _send(self, to: Member, msg: dict[str, Any]) -> None:
        self._send_all([to], msg)

    def _send_all(self, members: list[Member], msg: dict[str, Any]) -> None:
        """MSG to each of MEMBERS: the body is encoded once, addressee and number appended."""
        if not members:
            return
        head = json.dumps(dict(msg, **{"from": self.uid}), separators=(",", ":"),
                          allow_nan=True)[:-1]
        inc = self.membership.me.incarnation
        for m in members:
            self._seq += 1
            tail = json.dumps({"to": m.uid, "inc": inc, "seq": self._seq, "ts": time.time()},
                              separators=(",", ":"))
            self._send_body(m.address, (head + "," + tail[1:]).encode())

    def _send_body(self, address: str, body: bytes) -> None:
        entry = self._outs.get(address)
        if entry is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if "[" in address:
                sock.setsockopt(zmq.IPV6, 1)
            if self._curve is not None:
                sock.curve_serverkey = self._curve[0]
                sock.curve_publickey, sock.curve_secretkey = self._curve
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
            sock.send_multipart(wire.frames(body, self.key), zmq.NOBLOCK)
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
        if getattr(self, "monitor", None) is not None:
            self.inbox.disable_monitor()
            self.monitor.close(0)

        self.inbox.close(0)
        self.ctx.term()
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            try:
                os.close(fd)
            except OSError:
                pass
