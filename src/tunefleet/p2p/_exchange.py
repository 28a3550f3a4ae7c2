"""The last exchange's bookkeeping: how long it has run, and who disagrees with whom.

The exchange ends when every live peer shows the same best and the same set of peers. That
is reached whenever the peers hold the same trials (``wire.final_best``), but a peer that
misbehaves, or a network that loses a peer's every message, could keep it from ever being
reached: past ``--final-timeout`` seconds of exchange a peer ends anyway, with one warning
line that says who showed what (``Disagreement.line``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence


class ExchangeClock:
    """Seconds spent in the last exchange. A peer that runs rounds again (restarted, or met
    late) pauses it rather than resetting it, so no sequence of such events makes it endless."""

    def __init__(self) -> None:
        self._spent = 0.0
        self._since: float | None = None

    def run(self, now: float) -> float:
        """The exchange goes on at NOW: its seconds so far."""
        if self._since is None:
            self._since = now
        return self._spent + now - self._since

    def pause(self, now: float) -> None:
        """Some live peer is running its rounds: that wait is not the exchange."""
        if self._since is not None:
            self._spent += now - self._since
            self._since = None


class Final(NamedTuple):
    """What a peer's ``final`` showed: digests of its best and of the peers it knows."""

    best: str
    view: str


class Disagreement(NamedTuple):
    """The live peers of a last exchange, by what their latest ``final`` shows against ours."""

    agree: list[str]
    other_best: list[str]
    other_view: list[str]
    silent: list[str]

    @classmethod
    def of(cls, mine: Final, finals: dict[str, Final], alive: Sequence[str]) -> "Disagreement":
        d = cls([], [], [], [])
        for uid in sorted(alive):
            theirs = finals.get(uid)
            if theirs is None:
                d.silent.append(uid)
            elif theirs == mine:
                d.agree.append(uid)
            elif theirs.best != mine.best:
                d.other_best.append(uid)
            else:
                d.other_view.append(uid)
        return d

    def line(self) -> str:
        """``1 of 3 live peers agree; another best: p2; another set of peers: none; ...``"""
        n = len(self.agree) + len(self.other_best) + len(self.other_view) + len(self.silent)
        return (f"{len(self.agree)} of {n} live peers agree; another best: "
                f"{names(self.other_best)}; another set of peers: {names(self.other_view)}; "
                f"no final yet: {names(self.silent)}")


def names(uids: Sequence[str], most: int = 5) -> str:
    """``a, b, c and 4 more`` (``none`` for no one): a line stays short at 128 peers."""
    if not uids:
        return "none"
    shown = ", ".join(uids[:most])
    return shown if len(uids) <= most else f"{shown} and {len(uids) - most} more"
