"""The pieces of a peer without processes: wire format, membership, settings, the Python API."""

from __future__ import annotations

import json
import os
import re

import optuna
import pytest

from tunefleet import _attrs as attrs
from tunefleet.errors import UsageError
from tunefleet.p2p import Peer, PeerConfig
from tunefleet.p2p import _wire as wire
from tunefleet.p2p._config import check_address, resolve_addresses
from tunefleet.p2p._options import parse_peer_argv
from tunefleet.transport import P2P_KEY_ENV, Address, load_key, parse_address, read_key
from tunefleet._studies import open_storage
from tunefleet.p2p._membership import FAILED, FINISHED, LEFT, RUNNING, Membership

pytestmark = pytest.mark.timeout(60)


def _study_with_trials(n: int = 5) -> optuna.Study:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: t.suggest_float("x", -10, 10) ** 2
                   + t.suggest_categorical("c", ["a", "b"]).count("a"), n_trials=n)
    return study


# ---- wire -----------------------------------------------------------------------------------

def test_messages_round_trip_and_tampering_is_caught():
    msg = {"type": "gossip", "from": "p1", "table": {}}
    assert wire.decode(wire.encode(msg, b"k"), b"k") == msg
    assert wire.decode(wire.encode(msg, None), None) == msg
    frames = wire.encode(msg, b"k")
    with pytest.raises(wire.WireError, match="HMAC"):
        wire.decode([frames[0], frames[1], frames[2].replace(b"p1", b"p2")], b"k")
    with pytest.raises(wire.WireError, match="HMAC"):
        wire.decode(wire.encode(msg, None), b"k")  # unsigned, but we expect a key
    with pytest.raises(wire.WireError):
        wire.decode([b"x"], None)
    with pytest.raises(wire.WireError, match="JSON"):
        wire.decode([wire.PROTOCOL, b"", b"\xff\xfe"], None)
    with pytest.raises(wire.WireError, match="type"):
        wire.decode(wire.encode({"type": "exec", "from": "p1"}, None), None)
    with pytest.raises(wire.WireError, match="sender"):
        wire.decode(wire.encode({"type": "bye"}, None), None)


def test_a_trial_travels_as_json_and_keeps_its_origin():
    study = _study_with_trials()
    best = study.best_trial
    payload = json.loads(json.dumps(wire.trial_to_payload(best, "p1")))
    key, copy = wire.payload_to_trial(payload, "p1")
    assert key == f"p1#{best.number}"
    assert copy.params == best.params and copy.values == best.values
    assert copy.distributions == best.distributions
    assert copy.system_attrs[attrs.WORKER] == "p1" and copy.system_attrs[attrs.ORIGIN] == key
    other = optuna.create_study()
    other.add_trial(copy)
    forwarded = wire.trial_to_payload(other.trials[0], "p2")  # p2 passes it on
    assert forwarded["key"] == key and forwarded["system"][attrs.WORKER] == "p1"


@pytest.mark.parametrize("change", [
    {"params": {"x": 99.0, "c": "a"}},  # outside its distribution
    {"values": []},
    {"values": ["1"]},
    {"key": "no-number"},
    {"dists": {"x": "{}", "c": "{}"}},
    {"params": {"x": 1.0}},  # params and distributions disagree
])
def test_malformed_trials_are_refused(change):
    payload = wire.trial_to_payload(_study_with_trials().best_trial, "p1")
    payload.update(change)
    with pytest.raises(wire.WireError):
        wire.payload_to_trial(payload, "p1")


def test_what_a_peer_shares():
    study = _study_with_trials(8)
    ranked = sorted(study.trials, key=lambda t: t.value)
    assert wire.best_trials(study, "best", 3) == ranked[:1]
    assert wire.best_trials(study, "top-k", 3) == ranked[:3]
    assert len(wire.best_trials(study, "all", 3)) == 8
    maxi = optuna.create_study(direction="maximize")
    maxi.add_trials(study.trials)
    assert wire.best_trials(maxi, "best", 1)[0].value == ranked[-1].value


# ---- membership ------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_gossip_spreads_members_and_drops_the_silent():
    clock = Clock()
    a = Membership("a", "tcp://h:1", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    b = Membership("b", "tcp://h:2", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    c = Membership("c", "tcp://h:3", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    b.merge(c.table(), "c")
    fresh = a.merge(b.table(), "b")  # a learns of c through b
    assert {m.uid for m in fresh} == {"b", "c"}
    assert a.merge(b.table(), "b") == []  # nothing new the second time
    clock.now = 1.5
    b.tick()
    a.merge(b.table(), "b")
    suspected, dropped = a.check()
    assert [m.uid for m in suspected] == ["c"] and dropped == []
    clock.now = 2.5
    suspected, dropped = a.check()
    assert [m.uid for m in dropped] == ["c"] and a.members["c"].status == FAILED
    a.merge(b.table(), "b")  # b's old news about c does not bring it back
    assert a.members["c"].status == FAILED
    c.tick()
    assert [m.uid for m in a.merge(c.table(), "c")] == ["c"]  # c itself does
    assert a.members["c"].status == RUNNING


def test_termination_waits_for_every_live_peer():
    clock = Clock()
    a = Membership("a", "tcp://h:1", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    b = Membership("b", "tcp://h:2", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    a.merge(b.table(), "b")
    a.set_status(FINISHED)
    assert not a.all_finished()
    b.set_status(FINISHED)
    a.merge(b.table(), "b")
    assert a.all_finished()
    a.mark_left("b")
    old_news = {"b": ["tcp://h:2", 1, b.me.counter + 1, FINISHED]}
    a.merge(old_news, "x")
    assert a.members["b"].status == LEFT  # a peer's status never goes backwards


def test_a_peer_starved_of_cpu_does_not_drop_others_for_its_own_silence():
    clock = Clock()
    a = Membership("a", "tcp://h:1", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    b = Membership("b", "tcp://h:2", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    a.merge(b.table(), "b")
    clock.now = 5.0  # a's thread did not run for 5 s: it heard nothing, b was not silent
    a.forgive(4.8)
    assert a.check() == ([], [])
    clock.now = 7.5  # silent for 2.7 s of a's listening time
    assert [m.uid for m in a.check()[1]] == ["b"]


def _node(uid: str):
    from tunefleet.p2p._gossip import Node

    return Node(PeerConfig(uid=uid, bind="tcp://127.0.0.1:0", heartbeat=0.1,
                           peer_timeout=3).checked())


def test_two_peers_that_dropped_each_other_take_each_other_back_in_the_last_exchange():
    """a and b dropped each other (both starved on a loaded host) while c still counts both:
    only their own words bring them back (c's news does not), and they never spoke to a
    dropped peer, so no two views could agree. Finals go to dropped peers too, and a final
    is its sender's own word: all three agree and are done."""
    nodes = {uid: _node(uid) for uid in "abc"}
    try:
        for n in nodes.values():
            for other in nodes.values():
                if other is not n:
                    me = other.membership.me
                    n.membership.add(other.uid, other.address, me.incarnation, me.counter)
            n.finish()
            n.set_best("same best", [])
        nodes["a"].membership.members["b"].status = FAILED
        nodes["b"].membership.members["a"].status = FAILED
        for n in nodes.values():
            n.start()
        for n in nodes.values():
            assert n.done.wait(30), n.uid
        digests = {n._view_digest() for n in nodes.values()}
        assert len(digests) == 1
        assert all(m.status == FINISHED for n in nodes.values()
                   for m in n.membership.members.values())
    finally:
        for n in nodes.values():
            n.leave()


# ---- settings ------------------------------------------------------------------------------

def test_default_addresses_stay_on_loopback_unless_told():
    assert resolve_addresses(None, None) == ("tcp://127.0.0.1:5570", "tcp://localhost:5570")
    assert resolve_addresses(None, "tcp://node7:6000") == ("tcp://*:6000", "tcp://node7:6000")
    assert resolve_addresses("tcp://*:5556", None) == ("tcp://*:5556", "tcp://localhost:5556")
    assert resolve_addresses("tcp://*:5556", "tcp://localhost:5556")[0] == "tcp://*:5556"
    with pytest.raises(UsageError, match="must look like"):
        resolve_addresses("5555", None)


def test_peers_and_the_hub_check_addresses_with_one_checker():
    """A peer hands its address to ZeroMQ as written (port * too); the hub's sockets take the
    parts, so it accepts a few more spellings. IPv6 in brackets in both."""
    assert check_address("tcp://[::1]:5556", "-b/--bind") == Address("[::1]", "5556")
    assert check_address("tcp://*:*", "-b/--bind") == Address("*", "*")
    assert parse_address("tcp://[::1]:5556") == ("::1", 5556)
    assert parse_address("127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert parse_address("tcp://:0/") == ("127.0.0.1", 0)
    assert parse_address("tcp://*:5555") == ("0.0.0.0", 5555)
    for bad in ("127.0.0.1:5555", "tcp://:5555", "tcp://h:5555/", "udp://h:1"):
        with pytest.raises(UsageError, match=f"^-b/--bind '{re.escape(bad)}' must look like "
                                             r"tcp://HOST:PORT$"):
            check_address(bad, "-b/--bind")
    with pytest.raises(UsageError, match=r"\(Port could not be cast to integer value as '\*'\)"):
        parse_address("tcp://h:*")
    with pytest.raises(UsageError, match="other peers cannot connect to"):
        check_address("tcp://h:0", "-d/--seed-address", connect=True)


def test_peer_needs_one_objective():
    with pytest.raises(UsageError, match="exactly one"):
        Peer()
    with pytest.raises(UsageError, match="exactly one"):
        Peer(lambda t: 0.0, objective_object=lambda t: 0.0)
    with pytest.raises(UsageError, match="rounds"):
        Peer(lambda t: 0.0, rounds=0)


def test_python_api_alone_records_worker_and_times():
    peer = Peer(objective_function=lambda t: t.suggest_float("x", 0, 1), uid="solo",
                bind="tcp://127.0.0.1:0", rounds=2, trials=3, heartbeat=0.05, peer_timeout=1,
                alone_wait=0)
    study = peer.optimize()
    summary = peer.terminate(timeout=10)
    assert summary["n_trials"] == 6 and summary["found_by"] == "solo"
    assert summary["best_value"] == min(t.value for t in study.trials)
    for t in study.trials:
        assert t.system_attrs[attrs.WORKER] == "solo"
        assert t.system_attrs[attrs.STARTED] <= t.system_attrs[attrs.FINISHED]
    assert peer.node is not None and peer.node.stopped.is_set()


def test_a_joiner_without_uid_gets_host_and_port():
    """The seed document's second terminal gives no -u: it must not collide with 'seed'."""
    joiner = PeerConfig(bind="tcp://*:5556", insecure=True, advertise="tcp://localhost:5556", seed_uid="seed",
                        seed_address="tcp://localhost:5555").checked()
    assert joiner.uid.endswith("-5556") and joiner.uid != "seed"
    assert joiner.study_name == f"p2p-{joiner.uid}"
    assert PeerConfig().checked().uid == "seed"
    assert PeerConfig(uid="p7", seed_uid="seed", seed_address="tcp://h:1").checked().uid == "p7"


def test_out_of_range_timestamp_is_a_wire_error():
    payload = wire.trial_to_payload(_study_with_trials().best_trial, "p1")
    payload["start"] = 1e300
    with pytest.raises(wire.WireError, match="timestamp"):
        wire.payload_to_trial(payload, "p1")


def test_config_checks():
    with pytest.raises(UsageError, match="twice"):
        PeerConfig(heartbeat=1, peer_timeout=1).checked()
    with pytest.raises(UsageError, match="--share"):
        PeerConfig(share="some").checked()
    assert PeerConfig(uid="p1").checked().study_name == "p2p-p1"


# ---- sampling: peers must explore apart -----------------------------------------------------

def test_peers_with_identical_studies_suggest_different_points():
    """One --seed, one study content: the UID still gives each peer its own sampler stream."""
    trials = [wire.payload_to_trial(wire.trial_to_payload(t, "p9"), "p9")[1]
              for t in _study_with_trials(30).trials]
    suggested = []
    for uid in ("p1", "p2"):
        peer = Peer(lambda t: 0.0, uid=uid, bind="tcp://127.0.0.1:0", sampler_seed=7)
        peer.start()
        assert peer.study is not None
        try:
            for t in trials:
                peer.study.add_trial(t)
            trial = peer.study.ask()
            suggested.append((trial.suggest_float("x", -10, 10),
                              trial.suggest_categorical("c", ["a", "b"])))
        finally:
            peer._abort()
    assert suggested[0] != suggested[1]


def test_received_trials_wait_for_the_exploration_rounds():
    """The first explore_rounds use the peer's own trials only (its random start-up included);
    what arrived meanwhile is added afterwards, and the summary knows it."""
    sent = [wire.payload_to_trial(wire.trial_to_payload(t, "p9"), "p9")
            for t in _study_with_trials(20).trials]
    peer = Peer(lambda t: t.suggest_float("x", -10, 10) ** 2 + 1, uid="p1",
                bind="tcp://127.0.0.1:0", rounds=3, trials=4, explore_rounds=2,
                heartbeat=0.05, peer_timeout=1, alone_wait=0)
    peer.start()
    assert peer.node is not None and peer.config.explore_rounds == 2
    for key, trial in sent:
        peer.node.received.put((key, "p9", trial))
    study = peer.optimize()
    mine = [attrs.ORIGIN not in t.system_attrs for t in study.trials]
    assert mine == [True] * 8 + [False] * 20 + [True] * 4
    summary = peer.terminate(timeout=10)
    assert summary["n_received"] == 20 and summary["found_by"] == "p9"
    assert PeerConfig(rounds=10).checked().explore_rounds == 3
    with pytest.raises(UsageError, match="explore"):
        PeerConfig(explore_rounds=-1).checked()


# ---- hardening -------------------------------------------------------------------------------

def test_no_key_listens_on_loopback_only_unless_insecure():
    c = PeerConfig(bind="tcp://*:5556", advertise="tcp://localhost:5556").checked()
    assert c.bind == "tcp://127.0.0.1:5556" and "--insecure" in c.warnings[0]
    assert PeerConfig(bind="tcp://*:5556", insecure=True).checked().bind == "tcp://*:5556"
    assert PeerConfig(bind="tcp://*:5556", key=b"k").checked().bind == "tcp://*:5556"
    assert PeerConfig(bind="tcp://[::]:5556").checked().bind == "tcp://[::1]:5556"
    with pytest.raises(UsageError, match="other hosts could not reach tcp://node7:6000"):
        PeerConfig(advertise="tcp://node7:6000").checked()
    assert PeerConfig(advertise="tcp://node7:6000", key=b"k").checked().bind == "tcp://*:6000"


def test_key_file_readable_by_others_is_refused(tmp_path):
    key = tmp_path / "key"
    key.write_text("secret\n")
    key.chmod(0o644)
    with pytest.raises(UsageError, match="accessible by others .mode 644.: refused; run chmod 600"):
        read_key(str(key), P2P_KEY_ENV)
    key.chmod(0o600)
    assert read_key(str(key), P2P_KEY_ENV) == b"secret"
    with pytest.raises(UsageError, match="is a directory, not a file"):
        read_key(str(tmp_path), P2P_KEY_ENV)


def test_a_key_path_that_is_not_a_regular_file_is_refused(tmp_path):
    """A FIFO (read at once, not waited on) or a device is no key file, as for the hub."""
    os.mkfifo(tmp_path / "fifo")
    for path in (str(tmp_path / "fifo"), "/dev/null"):
        with pytest.raises(UsageError, match=f"^key file {path} is not a regular file$"):
            read_key(path, P2P_KEY_ENV)


def test_a_bad_key_file_is_the_same_line_as_for_the_hub(tmp_path, capsys):
    """`tunefleet peer --key-file` and the hub's key loading share one reader and its words."""
    (tmp_path / "open").write_text("secret\n")
    (tmp_path / "open").chmod(0o640)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for name in ("open", "empty", "folder", "fifo", "missing"):
        path = str(tmp_path / name)
        with pytest.raises(UsageError) as hub:
            load_key(path)
        with pytest.raises(SystemExit) as peer:
            parse_peer_argv(["--key-file", path])
        assert peer.value.code == 2
        assert capsys.readouterr().err == f"tunefleet: error: {hub.value}\n"
        assert str(hub.value).startswith(f"key file {path} ")


def test_replayed_misdirected_and_stale_messages_are_dropped():
    now = [1000.0]
    guard = wire.ReplayGuard("p2", window=60, clock=lambda: now[0])

    def msg(seq: int, inc: int = 5, to: str = "p2", ts: float = 1000.0, kind: str = "gossip"):
        return {"type": kind, "from": "p1", "to": to, "inc": inc, "seq": seq, "ts": ts}

    guard.check(msg(1))
    guard.check(msg(3))  # a gap: a message lost on the way, or late
    guard.check(msg(2))  # late: it came on another connection
    guard.check(msg(5000))
    for bad, why in [(msg(3), "seen before"), (msg(2), "seen before"),
                     (msg(4000 - wire.ReplayGuard.REORDER), "seen before"),  # too far behind
                     (msg(5001, inc=4), "seen before"),  # an older incarnation of p1
                     (msg(9, to="p3"), "meant for 'p3'"),
                     (msg(9, ts=900.0), "sent 100 s ago")]:
        with pytest.raises(wire.WireError, match=why):
            guard.check(bad)
    guard.check(msg(1, inc=6))  # p1 restarted under the same UID
    guard.check(msg(2, inc=6, to="seed", kind="join"))  # a join names the seed as -s says
    with pytest.raises(wire.WireError):
        guard.check({"type": "gossip", "from": "p1", "to": "p2"})  # no numbers at all


def test_final_best_is_the_same_whatever_the_order_of_trials():
    """Peers that hold the same trials pick the same best, ties included (smallest key)."""
    trials = [wire.payload_to_trial(wire.trial_to_payload(t, f"p{i}"), f"p{i}")[1]
              for i, t in enumerate(_study_with_trials(6).trials)]
    tie = wire.payload_to_trial(dict(wire.trial_to_payload(trials[0], "x"), key="a#1"), "a")[1]
    tie.value = min(t.value for t in trials)
    picks = set()
    for order in (trials + [tie], [tie] + trials[::-1]):
        study = optuna.create_study()
        study.add_trials(order)
        digest, best = wire.final_best(study, "me")
        picks.add(digest)
        assert best[0].system_attrs[attrs.ORIGIN] == "a#1"
    assert len(picks) == 1
    assert wire.final_best(optuna.create_study(), "me") == ("none", [])


def test_the_library_does_not_import_the_cli():
    """Arrows point down: tunefleet.cli uses tunefleet.p2p, never the reverse."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, tunefleet.p2p, tunefleet.p2p._peer, tunefleet.p2p._options; "
            "print(sorted(m for m in sys.modules if m.startswith('tunefleet.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    src = Path(wire.__file__).parent
    imports = re.compile(r"^\s*(from|import)\s+tunefleet\.cli", re.M)
    assert not [p.name for p in src.glob("*.py") if imports.search(p.read_text())]


def test_peer_and_serve_default_ports_differ():
    from tunefleet.cli._serve import serve

    listen = next(p.default for p in serve.params if p.name == "listen")
    peer_port = PeerConfig().checked().advertise.rsplit(":", 1)[1]
    assert peer_port != str(listen).rsplit(":", 1)[1]


# ---- reproducible resume ---------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_seeded_peer_continued_later_draws_what_one_run_would(tmp_path, sampler):
    """Two half-runs on one --storage against one full run: the same parameters, in order."""
    def run(storage: str, rounds: int) -> None:
        peer = Peer(lambda t: t.suggest_float("x", -10, 10) ** 2 + t.suggest_int("n", 0, 9),
                    uid="solo", bind="tcp://127.0.0.1:0", rounds=rounds, trials=4,
                    sampler=sampler, sampler_seed=3, storage=storage, alone_wait=0,
                    heartbeat=0.05, peer_timeout=1)
        peer.optimize()
        peer.terminate(timeout=30)

    halves, full = f"journal:///{tmp_path}/halves.log", f"journal:///{tmp_path}/full.log"
    run(halves, 2)
    run(halves, 2)
    run(full, 4)
    params = []
    for url in (halves, full):
        study = optuna.load_study(study_name="p2p-solo", storage=open_storage(url))
        params.append([t.params for t in study.trials])
    assert len(params[0]) == len(params[1]) == 16
    assert params[0] == params[1]
    assert len({p["x"] for p in params[0]}) == 16  # and no trial repeats an earlier one


# ---- issue 20: the swarm always ends -------------------------------------------------------

def test_trial_keys_carry_the_local_study_token_and_records_are_told_apart():
    study = _study_with_trials(3)
    token = wire.study_token(study)
    assert wire.study_token(study) == token  # kept with the study (a --storage resumed)
    assert wire.study_token(_study_with_trials(3)) != token  # a new study: a new life
    payload = wire.trial_to_payload(study.trials[2], "p1", token)
    assert payload["key"] == f"p1#{token}.2"
    key, copy = wire.payload_to_trial(json.loads(json.dumps(payload)), "p1")
    assert key == f"p1#{token}.2" and copy.system_attrs[attrs.WORKER] == "p1"
    # the record a peer holds of its own trial is the one that comes back to it
    assert wire.record_of(copy, "x") == wire.record_of(study.trials[2], "p1", token)
    for bad in ("p1#XY.2", "p1#.2", "p1#abc.", "#abc.2"):
        with pytest.raises(wire.WireError, match="bad trial key"):
            wire.payload_to_trial(dict(payload, key=bad), "p1")


def test_two_records_under_one_key_the_better_wins_whatever_the_order():
    base = wire.trial_to_payload(_study_with_trials(1).trials[0], "m")
    records = [wire.payload_to_trial(dict(base, key="m#1", values=[v], params=p), "m")[1]
               for v, p in [(5.0, {"x": 1.0, "c": "a"}), (3.0, {"x": 2.0, "c": "a"}),
                            (3.0, {"x": 4.0, "c": "b"})]]
    picks = set()
    for order in (records, records[::-1], records[1:] + records[:1]):
        study = optuna.create_study()
        study.add_trials(order)
        digest, best = wire.final_best(study, "me")
        picks.add((digest, best[0].params["x"]))
    assert len(picks) == 1 and next(iter(picks))[1] in (2.0, 4.0)
    assert len({wire.fingerprint(t) for t in records}) == 3


def test_a_member_only_others_vouch_for_is_probed_then_dropped():
    clock = Clock()
    a = Membership("a", "tcp://h:1", suspect_after=1, drop_after=2, clock=clock, incarnation=1)
    assert a.direct_after == 4
    for t in range(1, 12):  # b says "ghost is alive" every second, its counter growing
        clock.now = float(t)
        a.merge({"b": ["tcp://h:2", 1, t, RUNNING], "ghost": ["tcp://h:9", 1, t, RUNNING]}, "b")
        suspected, dropped = a.check()  # as a peer's heartbeat does: check, then probe
        probed = [m.uid for m in a.unheard(2, 0.5)]
        # not heard from itself for over 2 s: asked to speak (b spoke itself: never asked)
        assert probed == (["ghost"] if t in (4, 5) else []), t
        if t < 6:
            assert dropped == [] and a.members["ghost"].status == RUNNING
        elif t == 6:  # 5 s since a learned of it, never a word of its own
            assert [m.uid for m in dropped] == ["ghost"]
    assert a.members["ghost"].status == FAILED and a.members["b"].status == RUNNING
    a.merge({"ghost": ["tcp://h:9", 1, 99, RUNNING]}, "b")  # others' word: still out
    assert a.members["ghost"].status == FAILED
    a.merge({"ghost": ["tcp://h:9", 1, 100, RUNNING]}, "ghost")  # its own word: back in
    assert a.members["ghost"].status == RUNNING and a.check() == ([], [])


def test_a_last_exchange_that_cannot_agree_ends_after_the_final_timeout(caplog):
    """Two peers that hold different bests for good (a misbehaving peer's doing): each ends
    after --final-timeout with one warning line naming the other, and is not counted agreed."""
    assert PeerConfig().final_timeout == 120.0  # the default docs/p2p.md gives
    with pytest.raises(UsageError, match="--final-timeout"):
        PeerConfig(final_timeout=0).checked()
    from tunefleet.p2p._gossip import Node

    nodes = [Node(PeerConfig(uid=uid, bind="tcp://127.0.0.1:0", heartbeat=0.1, peer_timeout=3,
                             final_timeout=1.0).checked()) for uid in "ab"]
    try:
        a, b = nodes
        a.membership.add("b", b.address, b.membership.me.incarnation, 0)
        b.membership.add("a", a.address, a.membership.me.incarnation, 0)
        for n, best in zip(nodes, ("best of a", "best of b")):
            n.finish()
            n.set_best(best, [])
        with caplog.at_level("WARNING", logger="tunefleet.p2p"):
            for n in nodes:
                n.start()
            for n in nodes:
                assert n.done.wait(60), n.uid
        for n, other in ((a, "b"), (b, "a")):
            assert n.agreed is False
            assert n.final_done - n.final_started >= 1.0
            said = [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith(f"peer {n.uid}: no agreement")]
            assert len(said) == 1, said
            assert f"0 of 1 live peers agree; another best: {other};" in said[0]
            assert "(--final-timeout 1)" in said[0]
    finally:
        for n in nodes:
            n.leave()
