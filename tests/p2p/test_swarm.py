"""Swarms of real peer processes on loopback: joining, sharing, terminating, failing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
import zmq

from tests.conftest import EXAMPLES, run_cli
from tests.p2p.conftest import FAST, HERE, ROOT, addr, free_port
from tunefleet import attrs
from tunefleet.p2p import wire
from tunefleet.studies import open_storage

pytestmark = pytest.mark.timeout(120)


def test_four_peers_share_bests_and_finish_together(swarm, tmp_path):
    ports = [free_port() for _ in range(4)]
    logs = [tmp_path / f"p{i}.log" for i in range(4)]
    common = [*FAST, "-r", "4", "-t", "8", "--json"]
    seed = swarm("seed", "-b", addr(ports[0]), "--wait-peers", "4", "--storage", str(logs[0]),
                 *common)
    joiners = [swarm(f"p{i}", "-b", addr(ports[i]), "-s", "seed", "-d", addr(ports[0]),
                     "--storage", str(logs[i]), *common) for i in (1, 2)]
    # the fourth peer is a script built like the seed document's agent (Peer(parse=True))
    joiners.append(swarm("p3", "-b", addr(ports[3]), "-s", "p1", "-d", addr(ports[1]),
                         "--storage", str(logs[3]), *common, script=HERE / "agent.py"))
    results = {p.uid: p.result() for p in [seed, *joiners]}

    bests = {r["best_value"] for r in results.values()}
    finders = {r["found_by"] for r in results.values()}
    assert len(bests) == 1 and len(finders) == 1, results  # one global best, everywhere
    for uid, r in results.items():
        assert r["n_received"] > 0, (uid, r)
        assert r["n_trials"] == 32 + r["n_received"]
        assert {p["uid"] for p in r["peers"]} == {"seed", "p1", "p2", "p3"}, r["peers"]
    # the local studies hold other peers' trials, marked with their origin
    for i, uid in enumerate(["seed", "p1", "p2", "p3"]):
        study = optuna.load_study(study_name=f"p2p-{uid}", storage=open_storage(str(logs[i])))
        trials = study.get_trials()
        own = [t for t in trials if attrs.ORIGIN not in t.system_attrs]
        received = [t for t in trials if attrs.ORIGIN in t.system_attrs]
        assert len(own) == 32 and all(t.system_attrs[attrs.WORKER] == uid for t in own)
        assert all(t.system_attrs[attrs.FINISHED] >= t.system_attrs[attrs.STARTED] for t in own)
        assert received and all(t.system_attrs[attrs.WORKER] != uid for t in received)
        assert all(t.system_attrs[attrs.ORIGIN].startswith(t.system_attrs[attrs.WORKER] + "#")
                   for t in received)
        assert len({t.system_attrs[attrs.ORIGIN] for t in received}) == len(received)  # once each
        assert study._storage.get_study_system_attrs(study._study_id)[attrs.MODE] == "p2p"


def test_late_joiner_receives_earlier_bests(swarm):
    p0, p1, p2 = free_port(), free_port(), free_port()
    seed = swarm("seed", "-b", addr(p0), "-r", "2", "-t", "10", *FAST, "--json")
    busy = swarm("busy", "-b", addr(p1), "-s", "seed", "-d", addr(p0), "-r", "40", "-t", "1",
                 *FAST, "--json", objective="slow")
    seed.wait_for("rounds done")
    # joins after the seed has finished: all it can have is what others found earlier
    late = swarm("late", "-b", addr(p2), "-s", "seed", "-d", addr(p0), "-r", "1", "-t", "1",
                 *FAST, "--json", objective="worse")
    r_late, r_seed, r_busy = late.result(), seed.result(), busy.result()
    assert r_late["n_received"] >= 1  # the best so far (its own trial cannot be it)
    assert r_late["found_by"] in ("seed", "busy")
    assert r_late["best_value"] == r_seed["best_value"] == r_busy["best_value"] < 1000
    assert {p["uid"] for p in r_late["peers"]} == {"seed", "busy", "late"}


def test_killed_peer_does_not_stop_the_others(swarm):
    p0, p1, p2 = free_port(), free_port(), free_port()
    seed = swarm("seed", "-b", addr(p0), "-r", "3", "-t", "5", "--wait-peers", "3", *FAST,
                 "--json")
    p1p = swarm("p1", "-b", addr(p1), "-s", "seed", "-d", addr(p0), "-r", "3", "-t", "5",
                *FAST, "--json")
    doomed = swarm("doomed", "-b", addr(p2), "-s", "seed", "-d", addr(p0), "-r", "1000",
                   "-t", "1", *FAST, objective="slow")
    doomed.wait_for("round 2/")  # in the middle of its rounds
    seed.wait_for("rounds done")
    os.kill(doomed.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    results = [seed.result(timeout=60), p1p.result(timeout=60)]
    # bounded: the 3 s peer timeout, plus generous slack for a loaded machine
    assert time.monotonic() - killed_at < 3 + 30
    for r in results:
        status = {p["uid"]: p["status"] for p in r["peers"]}
        assert status["doomed"] == "failed", status
    assert "doomed did not answer" in seed.stderr


def test_second_peer_with_the_same_uid_is_refused(swarm):
    p0, p1, p2, p3 = (free_port() for _ in range(4))
    seed = swarm("seed", "-b", addr(p0), "-r", "1", "-t", "2", "--wait-peers", "3", *FAST,
                 "--json")
    first = swarm("p1", "-b", addr(p1), "-s", "seed", "-d", addr(p0), "-r", "1", "-t", "2",
                  *FAST, "--json")
    seed.wait_for("p1 joined")
    twin = swarm("p1", "-b", addr(p2), "-s", "seed", "-d", addr(p0), "-r", "1", "-t", "2", *FAST)
    assert twin.finish(30) == 2
    lines = twin.stderr.strip().splitlines()
    assert lines[-1].startswith("tunefleet: error: peer 'p1' cannot join the swarm: UID 'p1' "
                                "is already taken"), twin.stderr
    assert "Traceback" not in twin.stderr
    other = swarm("p2", "-b", addr(p3), "-s", "seed", "-d", addr(p0), "-r", "1", "-t", "2",
                  *FAST, "--json")
    results = [seed.result(), first.result(), other.result()]
    for r in results:
        assert {p["uid"]: p["address"] for p in r["peers"]}["p1"] == addr(p1)


def test_garbage_and_forged_messages_are_dropped(swarm, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("swarm secret\n")
    p0, p1, p9 = free_port(), free_port(), free_port()
    seed = swarm("seed", "-b", addr(p0), "-r", "1", "-t", "3", "--wait-peers", "2",
                 "--key-file", str(key_file), *FAST, "--json")
    seed.wait_for("listening on")
    with socket.create_connection(("127.0.0.1", p0)) as raw:  # not even ZeroMQ
        raw.sendall(b"\x00\xffGET / HTTP/1.0\r\n\r\n" * 50)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(addr(p0))
    forged_join = {"type": "join", "from": "intruder", "address": addr(p9), "incarnation": 1,
                   "counter": 1, "directions": ["minimize"]}
    push.send(b"garbage")
    push.send_multipart([wire.PROTOCOL, b"", b"{not json"])
    push.send_multipart(wire.encode(forged_join, b"wrong key"))  # bad tag
    bad_trial = {"key": "x#1", "params": {"x": 500.0},
                 "dists": {"x": '{"name": "FloatDistribution", "attributes": {"low": 0.0, '
                                '"high": 1.0, "log": false, "step": null}}'},
                 "values": [-1e9], "inter": {}, "user_attrs": {}, "system": {}}
    push.send_multipart(wire.encode({"type": "trials", "from": "x", "trials": [bad_trial]},
                                    b"swarm secret"))  # authentic but not a valid trial
    far_future = dict(bad_trial, params={"x": 0.5}, start=1e300)
    push.send_multipart(wire.encode({"type": "trials", "from": "x", "trials": [far_future]},
                                    b"swarm secret"))  # a timestamp no clock can hold
    deep = b"[" * 100_000 + b"]" * 100_000
    push.send_multipart([wire.PROTOCOL, wire._tag(b"swarm secret", deep), deep])  # too deep
    bad_join = dict(forged_join, address="tcp://*:0")
    push.send_multipart(wire.encode(bad_join, b"swarm secret"))  # nobody can reach that
    push.close(linger=2000)
    ctx.term()
    seed.wait_for("dropped a message")
    # a peer with another key cannot get in; one with the right key can
    wrong = swarm("p9", "-b", addr(p9), "-s", "seed", "-d", addr(p0), "--join-timeout", "2",
                  *FAST, env={"TUNEFLEET_P2P_KEY": "not the secret"})
    assert wrong.finish(30) == 2
    assert "no answer from seed peer 'seed'" in wrong.stderr.strip().splitlines()[-1]
    good = swarm("p1", "-b", addr(p1), "-s", "seed", "-d", addr(p0), "-r", "1", "-t", "3",
                 *FAST, "--json", env={"TUNEFLEET_P2P_KEY": "swarm secret"})
    r_seed, r_good = seed.result(), good.result()
    assert {p["uid"] for p in r_seed["peers"]} == {"seed", "p1"}
    assert r_seed["best_value"] == r_good["best_value"] > -1e9  # the forged trial never got in
    assert "intruder" not in {p["uid"] for p in r_good["peers"]}
    assert "Traceback" not in seed.stderr and "network thread failed" not in seed.stderr


def test_seed_document_two_terminals():
    """The seed document's commands, with only the program name changed (default ports)."""
    target = f"{EXAMPLES / 'quadratic.py'}:objective"
    base = [sys.executable, "-m", "tunefleet", "peer", target]
    # the second terminal first: it keeps asking the seed until the seed answers
    second = subprocess.Popen([*base, "-u", "p1", "-b", "tcp://*:5556", "-a",
                               "tcp://localhost:5556", "-s", "seed", "-d",
                               "tcp://localhost:5555", "-r", "10"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = run_cli("peer", target, "-u", "seed", "-r", "10", cwd=ROOT, timeout=90)
        out2, err2 = second.communicate(timeout=60)
    finally:
        second.kill()
    assert first.returncode == 0 and second.returncode == 0, first.stderr + err2
    lines1, lines2 = first.stdout.splitlines(), out2.splitlines()
    assert lines1[0].startswith("peer seed: best value ") and lines2[0].startswith("peer p1: ")
    assert lines1[0].split(": ", 1)[1] == lines2[0].split(": ", 1)[1]  # same best, same finder
    assert "peers: p1 (" in first.stdout and "seed (" in out2


@pytest.mark.parametrize("args, message", [
    (["-s", "seed"], "give both the seed peer's UID (-s) and address (-d)"),
    (["-b", "localhost:5555"], "-b/--bind 'localhost:5555' must look like tcp://host:port"),
    (["-u", "a b"], "-u/--uid 'a b': a UID is"),
    (["-u", "p1", "-s", "p1", "-d", "tcp://localhost:5555"], "is the seed's UID"),
    (["--key-file", "/nonexistent/key"], "--key-file /nonexistent/key"),
    (["--storage", "nowhere"], "is not a URL"),
])
def test_bad_input_is_one_line(args, message):
    r = run_cli("peer", f"{HERE / 'objectives.py'}:quadratic", *args, cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_agent_script_bad_input_is_one_line():
    """A script built like the seed document's agent (parse=True) behaves like the command."""
    for args, message in [(["-r", "0"], "Invalid value for '-r'"),
                          (["-b", "nowhere"], "-b/--bind 'nowhere' must look like")]:
        r = subprocess.run([sys.executable, str(HERE / "agent.py"), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_busy_port_is_one_line(swarm):
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = run_cli("peer", f"{HERE / 'objectives.py'}:quadratic", "-b", addr(port), cwd=ROOT,
                    timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith(f"tunefleet: error: cannot listen on {addr(port)}"), r.stderr
    assert r.stderr.count("\n") == 1


def test_json_summary_fields(swarm):
    p = swarm("solo", "-b", "tcp://127.0.0.1:0", "-r", "2", "-t", "3", *FAST, "--json")
    r = p.result()
    assert set(r) >= {"best_value", "best_params", "found_by", "n_trials", "n_received", "peers"}
    assert r["found_by"] == "solo" and r["n_trials"] == 6 and r["n_received"] == 0
    assert r["best_value"] == r["best_params"]["x"] ** 2 + r["best_params"]["y"]
    assert json.dumps(r)  # plain data
