"""The hub's messages: each type travels as a plain tuple and comes back as the same value, and
anything else is refused with ValueError (never a worse error)."""

from __future__ import annotations

import datetime
import pickle

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tunefleet.hub import _protocol as P

DIST = FloatDistribution(-1.0, 1.0)
OPS = [P.Param("x", DIST, 0.5), P.Report(3, 1.25), P.UserAttr("k", {"a": [1]}),
       P.Constraint("c", -1.0)]
RESULT = P.Result(7, P.FAIL, None, OPS, P.Error(ValueError("boom"), "ValueError('boom')",
                                                "Traceback...", False))

MESSAGES = [
    P.Hello(12, "host", "label", [(4, RESULT), (5, P.Result(9, P.COMPLETE, [1.0], [], None))]),
    P.Hello(12, "host"),
    P.Next(None),
    P.Next(RESULT),
    P.Call(7, OPS, P.Suggest("y", CategoricalDistribution(["a", "b"]))),
    P.Call(7, [], P.Prune()),
    P.Call(7, [], P.StudyGet("best_value")),
    P.Call(7, [], P.StudyCall("enqueue_trial", ({"x": 1},), {"skip_if_exists": True})),
    P.Call(7, [], P.StorageCall("get_trial", (7,), {})),
    P.Ops(7, OPS),
    P.Beat(),
    P.Failed("could not load the objective"),
    P.Config(b"payload"),
    P.NewTrial(7, 3, datetime.datetime(2026, 1, 1), {"x": 0.1}, {"y": "a"}, {"x": DIST}, {}, 3),
    P.NewTrial(7, 3, None, {}, {}, None, {"u": 1}, 1),
    P.Next(RESULT, True),
    P.Call(7, [], P.CkptLatest()),
    P.Call(7, [], P.CkptRead("000000003-17", "model/state.pt", 4194304, 4194304)),
    P.Call(7, [], P.CkptBegin()),
    P.Call(7, [], P.CkptWrite(2, "state.pt", 0, b"\x00" * 100)),
    P.Call(7, [], P.CkptCommit(2)),
    P.Reply(True, 3.5),
    P.Reply(False, KeyError("x")),
    P.Stop(),
]


def _same(a, b) -> bool:
    """Equal, with exceptions compared by type and arguments (they have no __eq__)."""
    if isinstance(a, BaseException):
        return type(a) is type(b) and a.args == b.args
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_comes_back_whole_through_the_wire(msg):
    wire = P.encode(msg)
    raw = pickle.loads(pickle.dumps(wire))
    assert _same(P.decode(raw), msg)


def _holds_only_builtins(value) -> bool:
    if isinstance(value, tuple) and type(value) is not tuple:
        return False  # a NamedTuple: its class would travel by name
    if isinstance(value, (tuple, list)):
        return all(map(_holds_only_builtins, value))
    if isinstance(value, dict):
        return all(map(_holds_only_builtins, value.values()))
    return True


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_the_wire_holds_plain_tuples_only(msg):
    """A pickled class costs an import lookup at both ends: the hot path sends none."""
    assert _holds_only_builtins(P.encode(msg))


@pytest.mark.parametrize("raw", [(), ("nope",), ("next",), ("call", 1, [], ("nope",)),
                                 ("ops", 1, [("param", "x")]), ("param", "x", DIST, 1.0),
                                 ("suggest", "x", DIST), "text", None, 42,
                                 ("newtrial", 1, 2)])
def test_anything_else_is_refused_with_value_error(raw):
    with pytest.raises(ValueError, match="not a hub message"):
        P.decode(raw)


def test_a_worker_may_only_read_and_annotate_through_storage():
    class Storage:
        def get_trial(self, trial_id):
            return ("trial", trial_id)

    assert P.answer_storage(Storage(), P.StorageCall("get_trial", (3,), {})) == ("trial", 3)
    with pytest.raises(NotImplementedError, match="create_new_trial"):
        P.answer_storage(Storage(), P.StorageCall("create_new_trial", (0,), {}))
