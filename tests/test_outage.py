"""The one retry loop of database calls (``tunefleet._outage.with_backoff``), without a
database: errors made up in the drivers' words."""

from __future__ import annotations

import logging
import random

import pytest

from tunefleet._outage import Notice, with_backoff


class _Gone(Exception):
    def __init__(self, seconds: float, words: str) -> None:
        super().__init__(f"{words} for {seconds:.1f} s")
        self.words = words


NOTICE = Notice(logging.getLogger("tunefleet.test"), away="away during {what} ({words}), "
                "{wait:g} s", back="back after {seconds:.0f} s ({what})", gone=_Gone)


def failing(times: int, message: str):
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise OSError(message)
        return "done"

    return call, calls


def test_an_outage_is_waited_out_and_said_in_the_callers_words(caplog):
    call, calls = failing(3, "could not connect to server: Connection refused")
    with caplog.at_level(logging.WARNING, "tunefleet.test"):
        assert with_backoff(call, what="a write", notice=NOTICE, first=0.001,
                            outage_wait=30) == "done"
    assert calls["n"] == 4
    assert [r.getMessage() for r in caplog.records] == [
        "away during a write (could not connect to server), 30 s", "back after 0 s (a write)"]


def test_past_the_outage_wait_the_callers_exception_comes_from_the_last_error():
    call, calls = failing(10**6, "server closed the connection unexpectedly")
    with pytest.raises(_Gone) as raised:
        with_backoff(call, what="a write", notice=NOTICE, first=0.001, cap=0.01,
                     outage_wait=0.05)
    assert raised.value.words == "server closed the connection unexpectedly"
    assert isinstance(raised.value.__cause__, OSError) and calls["n"] > 1


def test_other_errors_are_not_retried_unless_asked():
    call, calls = failing(1, "UNIQUE constraint failed: trials.number")
    with pytest.raises(OSError):
        with_backoff(call, what="a write", notice=NOTICE, outage_wait=30)
    assert calls["n"] == 1
    call, calls = failing(2, "database is locked")
    assert with_backoff(call, what="a write", notice=NOTICE, first=0.001,
                        retry_if=lambda e: "locked" in str(e)) == "done"
    assert calls["n"] == 3


def test_the_jitter_leaves_the_users_random_sequence_alone():
    """A seeded objective's draws must not depend on whether the storage was away."""
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    call, _ = failing(3, "connection refused")
    with_backoff(call, what="a write", notice=NOTICE, first=0.001, outage_wait=30)
    assert [random.random() for _ in range(3)] == expected
