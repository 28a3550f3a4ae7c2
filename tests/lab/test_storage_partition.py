"""Lab test (c) of issue 12: storage mode on PostgreSQL on its own host, one worker on each of
three other hosts; one worker's host is cut off the network past the grace period, then healed.
The others fail its trial and run its parameters again; the returning worker drops its late
result with one warning and carries on; the study holds exactly its budget, nothing RUNNING."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.lab.netlab import Lab
from tests.services import Postgres
from tests.storage_mode.test_fleet import trials_of
from tunefleet import _attrs as attrs

OBJECTIVES = Path(__file__).resolve().parents[1] / "storage_mode" / "objectives.py"
DROPPED = "was failed by another worker while this one was silent"


@pytest.fixture
def lab_postgres(netlab: Lab):
    """PostgreSQL on the lab's host "db", listening on that host's address only."""
    db = netlab.host("db")
    server = Postgres(listen=db.address, netns=db.netns).start()
    yield server
    server.stop()


@pytest.mark.timeout(420)
def test_storage_workers_on_three_hosts_survive_a_partition(netlab, lab_postgres, tmp_path,
                                                            cli):
    total = 24
    url = lab_postgres.url  # what the workers use: the db host's address, over the switch
    here = lab_postgres.socket_url()  # what this test uses: the Unix socket
    assert cli("init", "--storage", here, "--study", "lab", "--sampler",
               "random").returncode == 0
    marks = tmp_path / "marks"
    marks.mkdir()
    gate = tmp_path / "gate"
    env = {**os.environ, "TF_MARKS": str(marks), "TF_SLEEP": "0.3", "TF_STEPS": "5",
           "TF_GATE": str(gate)}
    hosts = [netlab.host(f"w{i}") for i in (1, 2, 3)]
    workers = {}
    for host in hosts:
        out, err = open(tmp_path / f"{host.name}.out", "w"), open(tmp_path / f"{host.name}.err",
                                                                   "w")
        workers[host.name] = host.run(
            [sys.executable, "-m", "tunefleet", "worker", f"{OBJECTIVES}:reporting", "--storage",
             url, "--study", "lab", "--n-trials", str(total), "--heartbeat-interval", "1",
             "--grace-period", "4", "-q"], env=env, stdout=out, stderr=err)
    victim_host = hosts[1]
    victim = workers[victim_host.name]

    def done() -> int:
        return sum(t.state == TrialState.COMPLETE for t in trials_of(here, "lab"))

    def alive() -> None:
        if victim.poll() is not None:
            raise AssertionError(f"the worker on {victim_host.name} exited early: "
                                 f"{(tmp_path / 'w2.err').read_text()[-2000:]}")

    wait_until(lambda: alive() or done() >= 3, 240, "3 complete trials")
    # Then the workers hold in their trials (the objective waits while the gate exists) until
    # the victim's is cut: a trial of 1.5 s could end between a look and the cut.
    gate.touch()
    held = marks / f"{victim.pid}.held"
    wait_until(lambda: alive() or held.exists(), 120, "the worker on w2 held in a trial")
    number = int(held.read_text().split()[0])
    victim_host.partition()
    gate.unlink()

    def what_the_others_did() -> str:
        said = [f"{name} (exit code {proc.poll()}): "
                f"{(tmp_path / f'{name}.err').read_text()[-1500:]}"
                for name, proc in workers.items() if name != victim_host.name]
        return f"states {[t.state.name for t in trials_of(here, 'lab')]}; " + "; ".join(said)

    def its_trial() -> object:
        return next(t for t in trials_of(here, "lab") if t.number == number)

    try:
        wait_until(lambda: its_trial().state == TrialState.FAIL, 120,
                   lambda: f"the other hosts to fail trial {number} of the cut-off worker; "
                           f"{what_the_others_did()}")
    finally:
        victim_host.heal()
    for name, proc in workers.items():
        assert proc.wait(240) == 0, (tmp_path / f"{name}.err").read_text()[-3000:]

    errs = {name: (tmp_path / f"{name}.err").read_text() for name in workers}
    assert all("Traceback" not in e for e in errs.values()), errs
    assert errs["w2"].count(f"trial {number} {DROPPED}") == 1
    assert "dropped (failed by others" in (tmp_path / "w2.out").read_text()
    trials = trials_of(here, "lab")
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == total
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    cut = next(t for t in trials if t.number == number)
    assert cut.state == TrialState.FAIL
    assert "stopped sending heartbeats" in cut.system_attrs[attrs.FAIL_REASON]
    retry = [t for t in trials if t.system_attrs.get(attrs.RETRY_OF) == number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == cut.params
    # Every FAIL is a trial whose worker went silent, and each such worker said so once:
    # no placeholder, no failure of another kind (a loaded machine may make a second one).
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all("stopped sending heartbeats" in t.system_attrs[attrs.FAIL_REASON] for t in failed)
    assert len(failed) == sum(e.count(DROPPED) for e in errs.values())
    # The workers of all three hosts took trials.
    assert {t.system_attrs[attrs.WORKER].rsplit("/", 1)[1] for t in trials} == {
        str(p.pid) for p in workers.values()}
