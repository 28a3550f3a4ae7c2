"""The fleet-wide trial budget, exact without a coordinator.

Trial numbers are handed out by the storage in one atomic step (a row lock on the study in a
database, the order of the log in a journal file), so they order every trial ever created.
A trial *counts* unless it FAILED. The trial numbered ``n`` is *within the budget* when fewer
than TOTAL counting trials have smaller numbers::

    rank(n) = n - (failed trials numbered below n)      within budget  <=>  rank(n) < TOTAL

A worker runs a trial only after checking its rank, so the study can never hold more than TOTAL
complete-or-pruned trials (the last of them had fewer than TOTAL counting trials before it, and
every earlier one that completed was counting then). Failed trials stop counting, which frees a
place for a new trial or a retry, so the total is reached as long as one worker is alive.

On databases and journal files a new trial (or retry) is created only when fewer than TOTAL
trials count, counted and created in one step (:func:`.atomic.create_within_budget`), so its
rank is below TOTAL by construction and workers racing for the last places leave nothing behind.
Only on another storage can a trial be found over the budget after it was made; it is then
closed at once, unrun, as FAIL with ``tunefleet:void`` (at most one per worker, at the end).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from optuna.trial import FrozenTrial, TrialState

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Census:
    """What a worker needs to know about the study, from one read of its trials."""

    done: int
    live: int  # trials that count: all but FAIL
    running: int
    claimable_waiting: int  # WAITING trials that are within the budget
    failed_numbers: list[int]  # sorted

    def rank(self, number: int) -> int:
        return number - bisect.bisect_left(self.failed_numbers, number)


def census(trials: Sequence[FrozenTrial], total: int) -> Census:
    failed = sorted(t.number for t in trials if t.state == TrialState.FAIL)
    c = Census(done=sum(t.state in DONE for t in trials),
               live=len(trials) - len(failed),
               running=sum(t.state == TrialState.RUNNING for t in trials),
               claimable_waiting=0, failed_numbers=failed)
    c.claimable_waiting = sum(1 for t in trials
                              if t.state == TrialState.WAITING and c.rank(t.number) < total)
    return c


def has_room(c: Census, total: int) -> bool:
    """Whether claiming or creating a trial now can be within the budget."""
    return c.live < total or c.claimable_waiting > 0


def within_budget(trials: Sequence[FrozenTrial], number: int, total: int) -> bool:
    """The rule above, checked after trial NUMBER exists, on a read made after it was created."""
    failed = sum(1 for t in trials if t.state == TrialState.FAIL and t.number < number)
    return number - failed < total
