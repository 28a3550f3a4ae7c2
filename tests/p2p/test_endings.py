"""The swarm always ends: a restarted peer, two records under one trial key (issue 20).

Real peer processes on loopback, with a key. Each test ends well within the last exchange's
bound (``--final-timeout``, 120 s by default); before the fix both exchanges never ended.
"""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
import zmq

from tests.helpers import free_port
from tests.p2p.conftest import FAST, addr, key_file
from tunefleet import _attrs as attrs
from tunefleet.p2p import _wire as wire
from tunefleet._studies import open_storage

# --final-timeout's default, as docs/p2p.md says (test_units checks the two agree); written
# out so that this file still loads on code without the option, and fails there on its own
FINAL_TIMEOUT = 120.0
pytestmark = pytest.mark.timeout(int(FINAL_TIMEOUT) + 240)
SLACK = 60  # a loaded machine: peers start slowly, but the exchange itself is short


def _study(path) -> optuna.Study:
    storages = open_storage(str(path))
    name = optuna.get_all_study_names(storages)[0]
    return optuna.load_study(study_name=name, storage=storages)


def _received(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if attrs.ORIGIN in t.system_attrs]


def _token(key: str) -> str:
    """TOKEN of ``UID#TOKEN.number``."""
    return key.rpartition("#")[2].split(".")[0]


def test_a_peer_killed_and_restarted_under_its_uid_does_not_reuse_its_trial_keys(swarm,
                                                                                  tmp_path):
    """p1's first life finds the best (the seed's objective never beats it) and is SIGKILLed;
    p1 starts again at once, same UID and address, a new study in memory whose trials are all
    worse. Its trial keys used to start at p1#0 again: the seed kept the first life's records
    under them and p1 refused its own UID's trials, so the exchange never ended."""
    key = key_file(tmp_path)
    p0, p1 = free_port(), free_port()
    logs = {"seed": tmp_path / "seed.log", "p1": tmp_path / "p1-second-life.log"}
    common = [*FAST, "--key-file", str(key), "--json", "--explore-rounds", "0"]
    seed = swarm("seed", "-b", addr(p0), "-r", "150", "-t", "1", "--wait-peers", "2",
                 "--storage", str(logs["seed"]), *common, objective="slow_worse")
    first = swarm("p1", "-b", addr(p1), "-s", "seed", "-d", addr(p0), "-r", "1000", "-t", "1",
                  *common, objective="slow")
    seed.wait_for("(by p1)", timeout=120)  # the seed holds the first life's best
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    second = swarm("p1", "-b", addr(p1), "-s", "seed", "-d", addr(p0), "-r", "2", "-t", "2",
                   "--storage", str(logs["p1"]), *common, objective="worse")
    results = {"seed": seed.result(FINAL_TIMEOUT + SLACK),
               "p1": second.result(FINAL_TIMEOUT + SLACK)}
    for uid, r in results.items():
        assert r["agreed"] is True and r["final_exchange_s"] < FINAL_TIMEOUT, (uid, r)
        assert "no agreement" not in (seed if uid == "seed" else second).stderr
    assert results["seed"]["best_value"] == results["p1"]["best_value"] < 1_000_000
    assert results["seed"]["best_params"] == results["p1"]["best_params"]
    assert results["seed"]["found_by"] == results["p1"]["found_by"] == "p1"
    assert results["seed"]["n_trials"] == 150 + results["seed"]["n_received"]
    assert results["p1"]["n_trials"] == 4 + results["p1"]["n_received"]
    # the two lives' keys differ in their token; the second life took in the first one's best
    seed_got = _received(_study(logs["seed"]))
    assert len(seed_got) == results["seed"]["n_received"]
    assert all(t.system_attrs[attrs.WORKER] == "p1" for t in seed_got)
    assert len({t.system_attrs[attrs.ORIGIN] for t in seed_got}) == len(seed_got)
    second_study = _study(logs["p1"])
    own_token = second_study._storage.get_study_system_attrs(second_study._study_id)[
        wire.TOKEN_ATTR]
    # all the first life's (the second's best is one of them, so it shared nothing of its own)
    assert {_token(t.system_attrs[attrs.ORIGIN]) for t in seed_got} - {own_token}
    earlier_life = [t for t in _received(second_study)
                    if t.system_attrs[attrs.ORIGIN].startswith("p1#")]
    assert earlier_life and all(_token(t.system_attrs[attrs.ORIGIN]) != own_token
                                for t in earlier_life)
    assert min(t.value for t in earlier_life) == results["p1"]["best_value"]


def _evil_trial(x: float, value: float) -> dict:
    """One trial of the quadratic's space, as the wire carries it, under the key evil#1."""
    trial = optuna.trial.create_trial(
        params={"x": x, "y": 0}, value=value,
        distributions={"x": optuna.distributions.FloatDistribution(-100, 100),
                       "y": optuna.distributions.IntDistribution(-1, 1)})
    return dict(wire.trial_to_payload(trial, "evil"), key="evil#1")


def test_a_peer_that_sends_two_values_under_one_trial_key(swarm, tmp_path):
    """An insider (it holds the key) sends the seed and p1 two different records under one
    trial key, each better than anything they find. Each peer used to keep the first record it
    got and ignore the other: "0 of 1 agree" for good. Now both records are kept and the
    better one wins everywhere."""
    key = key_file(tmp_path)
    p0, p1 = free_port(), free_port()
    logs = {"seed": tmp_path / "seed.log", "p1": tmp_path / "p1.log"}
    common = [*FAST, "-r", "20", "-t", "2", "--key-file", str(key), "--json",
              "--explore-rounds", "0"]
    seed = swarm("seed", "-b", addr(p0), "--wait-peers", "2", "--storage", str(logs["seed"]),
                 *common, objective="slow")
    other = swarm("p1", "-b", addr(p1), "-s", "seed", "-d", addr(p0),
                  "--storage", str(logs["p1"]), *common, objective="slow")
    seed.wait_for("round 1/", timeout=120)
    other.wait_for("round 1/", timeout=120)
    ctx = zmq.Context()
    public, secret = wire.curve_keys(b"swarm secret")
    try:
        for seq, (uid, port, x, value) in enumerate([("seed", p0, 1.0, -1e6),
                                                     ("p1", p1, 2.0, -2e6)], start=1):
            sock = ctx.socket(zmq.PUSH)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                public, public, secret)
            sock.connect(addr(port))
            body = {"type": "trials", "from": "evil", "trials": [_evil_trial(x, value)],
                    "to": uid, "inc": 1, "seq": seq, "ts": time.time()}
            sock.send_multipart(wire.encode(body, b"swarm secret"))
    finally:
        ctx.destroy(linger=5000)  # sent before the peers end: they have many rounds to go
    results = {"seed": seed.result(FINAL_TIMEOUT + SLACK),
               "p1": other.result(FINAL_TIMEOUT + SLACK)}
    for uid, r in results.items():
        assert r["agreed"] is True and r["final_exchange_s"] < FINAL_TIMEOUT, (uid, r)
        assert r["best_value"] == -2e6 and r["found_by"] == "evil", (uid, r)
        assert r["best_params"] == {"x": 2.0, "y": 0}, (uid, r)
        assert r["n_trials"] == 40 + r["n_received"], (uid, r)
        evil = [t for t in _received(_study(logs[uid]))
                if t.system_attrs[attrs.ORIGIN] == "evil#1"]
        assert sorted(t.value for t in evil)[0] == -2e6
        assert len({t.value for t in evil}) == len(evil) <= 2  # each record once
    # the seed got -1e6 from evil and -2e6 from p1 (p1's best, in its share or final)
    seed_evil = [t.value for t in _received(_study(logs["seed"]))
                 if t.system_attrs[attrs.ORIGIN] == "evil#1"]
    assert sorted(seed_evil) == [-2e6, -1e6]
