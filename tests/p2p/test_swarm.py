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
from tests.helpers import free_port
from tests.p2p.conftest import FAST, HERE, ROOT, addr, key_file
from tunefleet import _attrs as attrs
from tunefleet.p2p import _wire as wire
from tunefleet._studies import open_storage

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


def _signed(msg: dict, key: bytes | None, seq: int, to: str = "seed") -> list[bytes]:
    """A message as a peer sends it: addressed, numbered, timed, tagged with KEY."""
    body = dict(msg, to=to, inc=1, seq=seq, ts=time.time())
    return wire.encode(body, key)


def test_garbage_forged_and_replayed_messages_are_dropped(swarm, tmp_path):
    key = key_file(tmp_path)
    p0, p1, p9 = free_port(), free_port(), free_port()
    seed = swarm("seed", "-b", addr(p0), "-r", "1", "-t", "3", "--wait-peers", "2",
                 "--key-file", str(key), *FAST, "--json")
    seed.wait_for("listening on")
    ctx = zmq.Context()

    def client(curve_key: bytes | None) -> zmq.Socket:
        """A PUSH socket to the seed; with CURVE_KEY it does the swarm's key handshake."""
        sock = ctx.socket(zmq.PUSH)
        sock.linger = 2000
        if curve_key is not None:  # the swarm's server key is derived from its key
            public, secret = wire.curve_keys(curve_key)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                public, public, secret)
        sock.connect(addr(p0))
        return sock

    # outsiders (no key handshake, or a wrong key): their connections are closed in the
    # handshake, so nothing they send is ever read, however big or well forged
    with socket.create_connection(("127.0.0.1", p0)) as raw:  # not even ZeroMQ
        raw.sendall(b"\x00\xffGET / HTTP/1.0\r\n\r\n" * 50)
    plain = client(None)
    forged_join = {"type": "join", "from": "intruder", "address": addr(p9), "incarnation": 1,
                   "counter": 1, "directions": ["minimize"]}
    # an outsider's gossip (a ghost member that would stall termination) and a trial that
    # would be everyone's best, unsigned or signed with the right key itself
    ghost = {"type": "gossip", "from": "ghost",
             "table": {"ghost": [addr(p9), 1, 10**9, "running"]}}
    evil = {"key": "evil#1", "params": {"x": 0.5, "y": 0},
            "dists": {"x": '{"name": "FloatDistribution", "attributes": {"low": -100.0, '
                           '"high": 100.0, "log": false, "step": null}}',
                      "y": '{"name": "IntDistribution", "attributes": {"low": -1, "high": 1, '
                           '"log": false, "step": 1}}'},
             "values": [-1e9], "inter": {}, "user_attrs": {}, "system": {}}
    for sock in (plain, client(b"wrong key")):
        for frames in ([b"garbage"], [wire.PROTOCOL, b"", b"x" * (10 * wire.MAX_MESSAGE)],
                       _signed(forged_join, b"wrong key", seq=2), _signed(ghost, None, seq=3),
                       _signed(ghost, b"swarm secret", seq=4),
                       _signed({"type": "trials", "from": "evil", "trials": [evil]},
                               b"swarm secret", 5)):
            try:  # once the seed closed the connection, ZeroMQ has nowhere to queue them
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                pass
    seed.wait_for("refused a connection: it did not complete the key handshake")
    # an insider's messages: an authentic message replayed, the copy is dropped
    push = client(b"swarm secret")
    bye = _signed({"type": "bye", "from": "x"}, b"swarm secret", seq=1)
    push.send_multipart(bye)
    push.send_multipart(bye)
    seed.wait_for("replayed: message 1 of 'x' seen before")
    push.send(b"garbage")
    push.send_multipart([wire.PROTOCOL, b"", b"{not json"])
    push.send_multipart(_signed(forged_join, b"wrong key", seq=2))  # bad tag
    bad_trial = dict(evil, params={"x": 500.0, "y": 0})
    push.send_multipart(_signed({"type": "trials", "from": "x", "trials": [bad_trial]},
                                b"swarm secret", seq=6))  # authentic but not a valid trial
    far_future = dict(evil, start=1e300, values=[5e9])
    push.send_multipart(_signed({"type": "trials", "from": "x", "trials": [far_future]},
                                b"swarm secret", seq=7))  # a timestamp no clock can hold
    stale = _signed({"type": "bye", "from": "y"}, b"swarm secret", seq=1)
    body = json.loads(stale[2])
    body["ts"] -= 3600
    stale_body = json.dumps(body).encode()
    push.send_multipart([wire.PROTOCOL, wire._tag(b"swarm secret", stale_body), stale_body])
    elsewhere = _signed({"type": "bye", "from": "z"}, b"swarm secret", seq=1, to="p1")
    push.send_multipart(elsewhere)  # meant for another peer
    deep = b"[" * 100_000 + b"]" * 100_000
    push.send_multipart([wire.PROTOCOL, wire._tag(b"swarm secret", deep), deep])  # too deep
    bad_join = dict(forged_join, address="tcp://*:0")
    push.send_multipart(_signed(bad_join, b"swarm secret", seq=8))  # nobody can reach that
    # over the bound: ZeroMQ closes the connection before it is buffered (so it goes last)
    push.send_multipart([wire.PROTOCOL, b"", b"x" * (wire.MAX_MESSAGE + 1)])
    ctx.destroy(linger=2000)
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
    for r in (r_seed, r_good):  # at most the other peer's best: nothing from outsiders
        assert r["n_received"] <= 1 and r["n_trials"] == 3 + r["n_received"], r
    assert not {"intruder", "ghost"} & {p["uid"] for p in r_good["peers"]}
    assert "Traceback" not in seed.stderr and "network thread failed" not in seed.stderr
    assert "swarm is open" not in seed.stderr


@pytest.mark.timeout(400)
def test_seed_document_two_terminals_in_its_order(tmp_path):
    """The P2P document's two terminals word for word, with default flags, the seed first and
    the second terminal only once the seed has finished its rounds. The document's ports are
    fixed (5555, 5556), so the run gets a network namespace of its own (root, as in CI)."""
    out = tmp_path / "terminals.json"
    r = subprocess.run(["unshare", "--net", "--", sys.executable, str(HERE / "terminals.py"),
                        str(out)], capture_output=True, text=True, timeout=360)
    if r.returncode != 0 or not out.exists():
        pytest.fail(f"the two terminals could not run in a network namespace of their own "
                    f"(unshare --net needs root or CAP_SYS_ADMIN): rc {r.returncode}\n"
                    f"{r.stderr}")
    t = json.loads(out.read_text())
    first, second = t["first"], t["second"]
    assert first["rc"] == 0 and second["rc"] == 0, first["stderr"] + second["stderr"]
    assert "waiting up to 60 s for one (--alone-wait)" in first["stderr"]
    assert "joined the swarm through seed" in second["stderr"]
    lines1, lines2 = first["stdout"].splitlines(), second["stdout"].splitlines()
    joiner = lines2[0].split(":")[0].removeprefix("peer ")
    assert joiner.endswith("-5556"), lines2  # HOST-PORT: the second terminal gives no -u
    assert lines1[0].startswith("peer seed: best value ")
    assert lines1[0].split(": ", 1)[1] == lines2[0].split(": ", 1)[1]  # same best, same finder
    assert lines1[1] == lines2[1]  # same parameters
    assert f"peers: seed (finished), {joiner} (" in first["stdout"]
    assert "seed (" in second["stdout"]
    for term in (first, second):
        assert "Traceback" not in term["stderr"]
        assert "no key: the swarm is open" in term["stderr"]
    # -b tcp://*:5556 without a key listens on loopback only, and says so
    assert "listening on tcp://127.0.0.1:5556 only, not on tcp://*:5556" in second["stderr"]


def test_agent_script_help_exits_0():
    for script in (HERE / "agent.py", EXAMPLES / "p2p" / "quadratic.py"):
        r = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "--alone-wait" in r.stdout and r.stderr == ""
        assert "tcp://localhost:5555 for Peer(parse=True)" in " ".join(r.stdout.split())


def test_swarm_of_twelve_agrees_on_the_best(swarm, tmp_path):
    """Started at once (joiners before their seed is up), different round counts, with a key
    (every connection through the key handshake): every peer ends, all with the same best
    and finder, after the last exchange of bests."""
    n = 12
    p0 = free_port()
    key = key_file(tmp_path)
    common = [*FAST, "-t", "3", "--wait-peers", str(n), "--json", "-q", "--key-file", str(key)]
    peers = [swarm("p0", "-b", addr(p0), "-r", "2", *common)]
    for i in range(1, n):
        peers.append(swarm(f"p{i}", "-b", "tcp://127.0.0.1:0", "-s", "p0", "-d", addr(p0),
                           "-r", str(2 + i % 4), *common))
    results = [p.result(timeout=280) for p in peers]
    assert {r["best_value"] for r in results} == {min(r["best_value"] for r in results)}
    assert len({r["found_by"] for r in results}) == 1
    assert len({json.dumps(r["best_params"], sort_keys=True) for r in results}) == 1
    uids = {f"p{i}" for i in range(n)}
    for r in results:
        assert {p["uid"] for p in r["peers"]} == uids, r["peers"]
        assert r["n_trials"] == 3 * r["rounds"] + r["n_received"]
        assert r["final_exchange_s"] >= 0


@pytest.mark.parametrize("args, message", [
    (["-s", "seed"], "give both the seed peer's UID (-s) and address (-d)"),
    (["-b", "localhost:5555"], "-b/--bind 'localhost:5555' must look like tcp://HOST:PORT"),
    (["-u", "a b"], "-u/--uid 'a b': a UID is"),
    (["-u", "p1", "-s", "p1", "-d", "tcp://localhost:5555"], "is the seed's UID"),
    (["--key-file", "/nonexistent/key"], "key file /nonexistent/key does not exist"),
    (["--storage", "nowhere"], "is not a URL"),
    (["--key-file", "/"], "key file / is a directory, not a file"),
    (["-a", "tcp://node7:6000"], "other hosts could not reach tcp://node7:6000"),
    (["-d", "tcp://localhost:99999", "-s", "seed"], "(Port out of range 0-65535)"),
    (["-b", "tcp://localhost"], "must look like tcp://HOST:PORT"),
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
    p = swarm("solo", "-b", "tcp://127.0.0.1:0", "-r", "2", "-t", "3", *FAST, "--json",
              "--alone-wait", "0")
    r = p.result()
    assert set(r) >= {"best_value", "best_params", "found_by", "n_trials", "n_received", "peers"}
    assert r["found_by"] == "solo" and r["n_trials"] == 6 and r["n_received"] == 0
    assert r["best_value"] == r["best_params"]["x"] ** 2 + r["best_params"]["y"]
    assert json.dumps(r)  # plain data


def test_key_file_readable_by_others_is_refused(tmp_path):
    key = key_file(tmp_path)
    key.chmod(0o640)
    r = run_cli("peer", f"{HERE / 'objectives.py'}:quadratic", "--key-file", str(key), cwd=ROOT,
                timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"key file {key} is accessible by others (mode 640): refused" in r.stderr


def test_insecure_listens_where_told_and_says_the_swarm_is_open(swarm):
    port = free_port()
    p = swarm("solo", "-b", f"tcp://*:{port}", "-a", f"tcp://localhost:{port}", "--insecure",
              "-r", "1", "-t", "1", "--alone-wait", "0", *FAST, "--json")
    p.result()
    assert f"no key: the swarm is open, anyone who can reach tcp://0.0.0.0:{port}" in p.stderr
