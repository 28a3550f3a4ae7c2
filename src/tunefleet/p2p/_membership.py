"""Who is in the swarm, as one peer sees it: gossip-style heartbeats and failure detection.

Each peer owns a heartbeat counter that it bumps every gossip round; its version is
``(incarnation, counter)`` where the incarnation is the start time of the process, so a peer
restarted under the same UID is newer than its dead predecessor. Peers gossip their whole table;
merging keeps the newest version of every entry. A member whose version has not grown for
``suspect_after`` seconds is suspected, and after ``drop_after`` it is dropped as failed.
Others' word is not enough to stay in: a member not heard from directly (a message of its
own) for ``direct_after`` seconds is dropped too, however its version grows in others' tables
(a ghost that others vouch for, or a forged row passed on by gossip).
No lock here: the network thread owns it; others read ``snapshot()`` copies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable

RUNNING, FINISHED, LEFT, FAILED = "running", "finished", "left", "failed"
STATUSES = (RUNNING, FINISHED, LEFT, FAILED)
_RANK = {RUNNING: 0, FINISHED: 1, LEFT: 2}  # a peer's own status only ever moves forward


@dataclasses.dataclass
class Member:
    uid: str
    address: str
    incarnation: int
    counter: int
    status: str
    updated: float  # local clock when its version last grew
    suspected: bool = False
    heard: float = 0.0  # local clock of its last message to us (or of when we learned of it)
    probed: float = 0.0  # local clock of our last probe to it (see ``unheard``)

    @property
    def version(self) -> tuple[int, int]:
        return (self.incarnation, self.counter)

    @property
    def alive(self) -> bool:
        return self.status in (RUNNING, FINISHED)


class Membership:
    """The table of peers; ``merge`` returns the peers that are new, to greet them."""

    def __init__(self, uid: str, address: str, *, suspect_after: float, drop_after: float,
                 direct_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic, incarnation: int | None = None):
        self.uid = uid
        self.clock = clock
        self.suspect_after = suspect_after
        self.drop_after = drop_after
        self.direct_after = 2 * drop_after if direct_after is None else direct_after
        inc = time.time_ns() if incarnation is None else incarnation
        self.me = Member(uid, address, inc, 0, RUNNING, clock())
        self.members: dict[str, Member] = {}

    # -- own entry --------------------------------------------------------------------------
    def tick(self) -> None:
        self.me.counter += 1

    def set_status(self, status: str) -> None:
        self.me.status = status
        self.me.counter += 1

    # -- what we tell and hear ------------------------------------------------------------
    def table(self) -> dict[str, list[Any]]:
        """Gossip payload: ``{uid: [address, incarnation, counter, status]}``; failures stay local."""
        rows = {m.uid: [m.address, m.incarnation, m.counter, m.status]
                for m in self.members.values() if m.status != FAILED}
        rows.update(self.own_row())
        return rows

    def own_row(self) -> dict[str, list[Any]]:
        """This peer's row alone: a probe and its answer carry only that (a few bytes)."""
        me = self.me
        return {me.uid: [me.address, me.incarnation, me.counter, me.status]}

    def merge(self, table: dict[str, Any], sender: str | None = None) -> list[Member]:
        """Fold a received table in; return members just learned of (or back from the dead).

        A dropped peer comes back only on its own word (SENDER), not on a third peer's older news.
        """
        fresh: list[Member] = []
        now = self.clock()
        for uid, row in table.items():
            if uid == self.uid or not _valid_row(uid, row):
                continue
            address, inc, counter, status = row
            known = self.members.get(uid)
            if known is None:
                m = Member(uid, address, inc, counter, status, now, heard=now)
                self.members[uid] = m
                if m.alive:
                    fresh.append(m)
                continue
            if known.status == FAILED and status == LEFT and inc >= known.incarnation:
                known.status = LEFT  # it did not fail, it left: all agree on who is gone
                continue
            if known.status == FAILED and uid != sender:
                continue
            if (inc, counter) > known.version:
                was_alive = known.alive
                if (inc == known.incarnation and known.status in _RANK
                        and _RANK[status] < _RANK[known.status]):
                    status = known.status  # older news of a state we know it has left
                known.address, known.incarnation, known.counter = address, inc, counter
                known.status, known.updated, known.suspected = status, now, False
                if known.alive and not was_alive:
                    fresh.append(known)
            elif (inc, counter) == known.version and known.status in _RANK and status in _RANK:
                if _RANK[status] > _RANK[known.status]:
                    known.status = status
        if sender is not None and sender in self.members:
            self.members[sender].heard = now
        return fresh

    def add(self, uid: str, address: str, incarnation: int, counter: int) -> Member:
        """A peer that joined through us."""
        now = self.clock()
        m = Member(uid, address, incarnation, counter, RUNNING, now, heard=now)
        self.members[uid] = m
        return m

    def heard_from(self, uid: str) -> None:
        """UID spoke to us itself (any authentic message): it is not only others' word."""
        m = self.members.get(uid)
        if m is not None:
            m.heard = self.clock()

    def unheard(self, after: float, every: float) -> list[Member]:
        """Live members not heard from directly for AFTER seconds, and not probed for EVERY:
        they are asked to answer (gossip picks 3 of all members at random, so in a large swarm
        a live peer may not write to us for a while); one that never does is a ghost."""
        now = self.clock()
        out = [m for m in self.members.values()
               if m.alive and now - m.heard > after and now - m.probed >= every]
        for m in out:
            m.probed = now
        return out

    def mark_left(self, uid: str) -> None:
        m = self.members.get(uid)
        if m is not None and m.status != FAILED:
            m.status = LEFT

    def forgive(self, seconds: float) -> None:
        """This peer could not listen for SECONDS (its thread starved on a loaded host): that
        silence was ours, so it does not count towards anyone's timeout."""
        for m in self.members.values():
            if m.alive:
                m.updated += seconds
                m.heard += seconds

    def check(self) -> tuple[list[Member], list[Member]]:
        """Update suspicions; return (newly suspected, newly dropped) members."""
        now = self.clock()
        suspected, dropped = [], []
        for m in self.members.values():
            if not m.alive:
                continue
            age = now - m.updated
            if age > self.drop_after or now - m.heard > self.direct_after:
                m.status, m.suspected = FAILED, False
                dropped.append(m)
            elif age > self.suspect_after and not m.suspected:
                m.suspected = True
                suspected.append(m)
        return suspected, dropped

    # -- questions --------------------------------------------------------------------------
    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if m.alive]

    def holder_of(self, uid: str) -> Member | None:
        """The live member called UID, if any (to refuse a second peer with the same UID)."""
        if uid == self.uid:
            return self.me
        m = self.members.get(uid)
        return m if m is not None and m.alive else None

    def all_finished(self) -> bool:
        """True when this peer and every live peer it knows have finished their rounds."""
        return self.me.status == FINISHED and all(m.status != RUNNING for m in self.members.values())

    def view_digest(self) -> str:
        """The peers known and not failed. Those that left count too: a peer leaves only once
        it agreed with all, so its leaving must not start the agreement again for the rest."""
        uids = sorted([self.uid, *(m.uid for m in self.members.values() if m.status != FAILED)])
        return hashlib.sha256("\n".join(uids).encode()).hexdigest()[:16]

    def snapshot(self) -> list[dict[str, Any]]:
        rows = [self.me, *self.members.values()]
        return [{"uid": m.uid, "address": m.address, "status": m.status,
                 **({"suspected": True} if m.suspected else {})}
                for m in sorted(rows, key=lambda m: m.uid)]


def _valid_row(uid: Any, row: Any) -> bool:
    return (isinstance(uid, str) and 0 < len(uid) <= 64 and isinstance(row, list) and len(row) == 4
            and isinstance(row[0], str) and row[0].startswith("tcp://")
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in row[1:3])
            and row[3] in (RUNNING, FINISHED, LEFT))
