"""Checkpoints across hosts (issue 19): ``tunefleet serve`` on one lab host, workers on two
others that share no folder with it (each works in a folder of its own, its temporary files
there too, and the objective writes only there): checkpoints travel through the workers'
connections. Every process of one worker host is killed at once: its trials continue on the
other host from their checkpoints."""

from __future__ import annotations

import os
import re
import secrets

import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.hub import checkpoint_objectives as co
from tests.lab.test_hub_lab import trials
from tunefleet import _attrs as attrs

TARGET = f"{co.__file__}:steps"
N_TRIALS = 6


@pytest.mark.timeout(600)
def test_a_dead_hosts_trials_continue_on_the_other_host_from_their_checkpoints(netlab,
                                                                                tmp_path):
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    key = hub_dir / "hub.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    hub = netlab.host("hub")
    serve = hub.tunefleet("serve", TARGET, "--listen", f"tcp://{hub.address}:0", "--key-file",
                          str(key), "--storage", "sqlite:///hub.db", "--n-trials",
                          str(N_TRIALS), "--sampler", "random", "--max-retries", "1",
                          "--no-progress", "--json", logs=tmp_path / "logs", cwd=hub_dir)
    err = tmp_path / "logs" / "hub-0.err"
    wait_until(lambda: re.search(r" on (tcp://\S+);", err.read_text())
               or serve.poll() is not None, 120, "serve to listen")
    address = re.search(r" on (tcp://\S+);", err.read_text()).group(1)
    workers = {}
    for name in ("w1", "w2"):
        home = tmp_path / name  # the worker host's own disk
        (home / "tmp").mkdir(parents=True)
        env = {**os.environ, "TF_CK_STEPS": "15", "TF_CK_HOST": name,
               "TMPDIR": str(home / "tmp")}
        env.pop("TF_CK_LOG", None)  # the objective records into its working folder
        host = netlab.host(name)
        workers[name] = host, host.tunefleet(
            "worker", "--connect", address, "--key-file", str(key), "--processes", "2",
            "--reconnect-timeout", "0", logs=tmp_path / "logs", cwd=home, env=env)
    dead_host, _ = workers["w1"]
    kept = hub_dir / "hub.db.checkpoints" / "tunefleet"

    def both_busy_with_checkpoints() -> dict[int, tuple[int, int]] | None:
        if serve.poll() is not None:
            raise AssertionError(f"serve ended early: {err.read_text()[-2000:]}")
        seen = co.now(tmp_path / "w1")
        if len(seen) == 2 and all(3 <= s < 10 and any((kept / str(n)).glob("*/step"))
                                  for n, s in seen.values()):
            return seen
        return None

    seen = wait_until(both_busy_with_checkpoints, 300,
                      "both workers of w1 past step 3, their checkpoints on the hub")
    dead_host.kill_all()  # the host dies: every process at once
    assert serve.wait(300) == 0, err.read_text()[-3000:]
    assert workers["w2"][1].wait(120) == 0
    done = trials(hub_dir / "hub.db")
    states = [t.state for t in done]
    assert states.count(TrialState.COMPLETE) == N_TRIALS, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert states.count(TrialState.FAIL) == 2, states
    by_number = {t.number: t for t in done}
    for number, step in seen.values():
        cut = by_number[number]
        assert cut.state == TrialState.FAIL, (number, cut.state)
        assert "connection" in cut.system_attrs[attrs.FAIL_REASON]
        [retry] = [t for t in done if t.system_attrs.get(attrs.RETRY_OF) == number]
        assert retry.state == TrialState.COMPLETE
        assert retry.user_attrs["host"] == "w2"
        assert retry.user_attrs["start"] >= step >= 3  # from its checkpoint
        first = min(s for _, n, s in co.recorded(tmp_path / "w2") if n == retry.number)
        assert first == retry.user_attrs["start"]
    # The objectives wrote on their own hosts only; the hub's folder holds no record of theirs,
    # and (every trial finished) no checkpoint.
    assert not list(hub_dir.glob("steps-*")) and not list(hub_dir.glob("now-*"))
    assert not [p for p in kept.rglob("*") if p.is_file()]
