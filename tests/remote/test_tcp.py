"""`tunefleet serve` and `tunefleet worker --connect` as separate processes, and
`optimize(backend="tcp")` with such workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

import tunefleet
from tunefleet import _attrs as attrs
from tests.remote import objectives
from tests.helpers import free_port, wait_until

TARGET = str(Path(objectives.__file__))


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="tunefleet", storage=f"sqlite:///{tmp_path}/hub.db")


def count(tmp_path: Path, state: TrialState) -> int:
    if not (tmp_path / "hub.db").exists():
        return 0
    try:
        return sum(t.state == state for t in load(tmp_path).get_trials(deepcopy=False))
    except Exception:  # the study is not created yet
        return 0


def finish(proc, timeout: float = 180) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (getattr(proc, "stderr_head", "") + err)[-3000:]
    return out, err


def test_serve_and_two_workers_run_60_trials(procs, tmp_path):
    serve = procs.serve(f"{TARGET}:quadratic_when_two_joined", 0, "--n-trials", "60",
                        "--sampler", "random", "--seed", "1")
    port = procs.port_of(serve)
    workers = [procs.worker(port) for _ in range(2)]
    out, err = finish(serve)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["states"]["complete"] == 60 and summary["n_trials"] == 60
    study = load(tmp_path)
    values = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
    assert summary["best_value"] == pytest.approx(min(values))
    used = {t.system_attrs[attrs.WORKER] for t in study.trials}
    assert len(used) == 2  # both workers took trials
    for w in workers:
        finish(w, timeout=30)  # a worker exits 0 when the study is done


def test_worker_killed_mid_trial_fails_its_trial_and_the_study_finishes(procs, tmp_path):
    serve = procs.serve(f"{TARGET}:hangs_at_5", 0, "--n-trials", "50", "--sampler", "random")
    port = procs.port_of(serve)
    victim_and_other = [procs.worker(port) for _ in range(2)]
    wait_until(lambda: (tmp_path / "hung.pid").exists(), 120, "trial 5 to start")
    wait_until(lambda: " " in (tmp_path / "hung.pid").read_text(), 10, "the pid")
    pid, x = (tmp_path / "hung.pid").read_text().split()
    pid = int(pid)
    assert pid in [w.pid for w in victim_and_other]
    os.kill(pid, signal.SIGKILL)
    out, err = finish(serve)
    study = load(tmp_path)
    failed = study.trials[5]
    assert failed.state == TrialState.FAIL
    assert "connection" in failed.system_attrs[attrs.FAIL_REASON]
    retries = [t for t in study.trials if t.system_attrs.get(attrs.RETRY_OF) == 5]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == {"x": float(x)}  # the same parameters, run again
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 50
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_workers_exit_when_the_coordinator_is_killed(procs, tmp_path):
    serve = procs.serve(f"{TARGET}:sleepy", 0, "--n-trials", "1000")
    port = procs.port_of(serve)
    workers = [procs.worker(port, "hub.key", "--reconnect-timeout", "0") for _ in range(2)]
    wait_until(lambda: count(tmp_path, TrialState.COMPLETE) >= 4, 120, "some trials")
    serve.send_signal(signal.SIGKILL)
    serve.wait(10)
    deadline = time.monotonic() + 30
    for w in workers:
        w.wait(max(0.1, deadline - time.monotonic()))  # TimeoutExpired if a worker hangs
        assert w.returncode == 0, w.stderr.read()[-2000:]


@contextlib.contextmanager
def _telling_what_workers_said(workers: list) -> Iterator[None]:
    """A failure inside tells what the workers said (their stderr); else they must exit 0."""
    try:
        yield
    except BaseException as exc:
        said = []
        for w in workers:
            w.kill()
            said.append(w.communicate(timeout=30)[1][-3000:])
        raise AssertionError(f"{exc}\nworkers said: {said}") from exc
    for w in workers:
        finish(w, timeout=60)


@pytest.mark.timeout(600)  # the reclaim window (120 s) may have to close
def test_serve_killed_and_started_again_gets_the_running_trials_back(procs, tmp_path):
    """Workers outlive their coordinator: they finish their trials, join the coordinator
    started again on the same study, and hand the results over; nothing finished is lost and
    the budget ends exact. A trial the dead coordinator had stored as RUNNING and sent, but no
    worker received (it died in between), or whose parameter it died drawing (on a loaded
    machine the coordinator draws no values ahead), is the only kind failed, when the reclaim
    window closes, and retried: every trial that had its parameters was handed back whole
    (``started`` holds those). The workers stay
    until then (they were told to stop once the rest of the budget was run, and the serve
    waited for ever for a worker to run that retry: an intermittent failure under load)."""
    args = ("--n-trials", "40", "--sampler", "random")
    serve = procs.serve(f"{TARGET}:sleepy_noted", 0, *args)
    port = procs.port_of(serve)  # the one started again listens there too
    workers = [procs.worker(port, "hub.key", "--reconnect-timeout", "300") for _ in range(2)]
    wait_until(lambda: count(tmp_path, TrialState.COMPLETE) >= 6, 120, "some trials")
    serve.send_signal(signal.SIGKILL)
    serve.wait(10)
    left_running = count(tmp_path, TrialState.RUNNING)
    assert left_running >= 1  # the workers were in the middle of trials
    again = procs.serve(f"{TARGET}:sleepy_noted", port, *args, "--reclaim-window", "120")
    with _telling_what_workers_said(workers):
        out, err = finish(again, timeout=400)  # the reclaim window may have to close: 120 s
        summary = json.loads(out.strip().splitlines()[-1])
        study = load(tmp_path)
        states = [t.state for t in study.trials]
        assert states.count(TrialState.COMPLETE) == 40 and summary["states"]["complete"] == 40
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states
        started = {int(p.name) for p in (tmp_path / "started").iterdir()}
        for failed in (t for t in study.trials if t.state == TrialState.FAIL):
            assert failed.number not in started, (failed.number, err[-3000:])  # never run
            assert failed.system_attrs[attrs.FAIL_REASON] == \
                "its coordinator died before the trial ended"
            retry = next(t for t in study.trials
                         if t.system_attrs.get(attrs.RETRY_OF) == failed.number)
            assert retry.state == TrialState.COMPLETE
        assert [t.number for t in study.trials] == list(range(len(study.trials)))


def _notes(tmp_path: Path) -> list[tuple[str, int, int, float]]:
    """The lines of ``held_on_request``: (what, trial number, worker pid, x), in file order."""
    path = tmp_path / "notes.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(w, int(n), int(pid), float(x)) for w, n, pid, x in (ln.split() for ln in lines)]


@pytest.mark.timeout(600)
def test_results_a_killed_serve_answered_but_had_not_stored_are_handed_to_the_next(
        procs, tmp_path, postgres):
    """A coordinator answers a result (the worker's next trial) before its group commit stores
    it. Killed in between, it loses the result; the worker keeps it until the coordinator says
    it is stored, and hands it, with the trial's parameters, to the serve started again.

    Made certain with a lock: each worker holds a trial the storage has as RUNNING; the test
    locks PostgreSQL's trials table, lets those trials end and waits until a worker has been
    given its next trial (answered, nothing stored: the lock), then kills the serve."""
    import sqlalchemy as sa

    url = postgres.new_database("unstored_results")
    args = ("--n-trials", "30", "--sampler", "random", "--storage", url)
    (tmp_path / "hold").touch()  # the first trial of each worker waits for ./go
    serve = procs.serve(f"{TARGET}:held_on_request", 0, *args)
    port = procs.port_of(serve)
    workers = [procs.worker(port, "hub.key", "--reconnect-timeout", "300") for _ in range(2)]

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name="tunefleet", storage=url).trials
        except KeyError:  # not created yet
            return []

    wait_until(lambda: len({pid for w, _, pid, _ in _notes(tmp_path) if w == "held"}) == 2,
               120, "both workers to hold a trial")
    held = {n: x for w, n, _, x in _notes(tmp_path) if w == "held"}
    wait_until(lambda: all(t.state == TrialState.RUNNING for t in trials()
                           if t.number in held) and max(t.number for t in trials()) >= max(held),
               120, "the held trials to be stored as RUNNING")
    engine = sa.create_engine(url)
    lock = engine.connect()
    try:
        lock.execute(sa.text("LOCK TABLE trials IN EXCLUSIVE MODE"))  # no write gets through
        (tmp_path / "hold").unlink()
        (tmp_path / "go").touch()

        def answered_unstored() -> bool:  # a held trial ended, then its worker began another
            ended: set[int] = set()
            for what, number, pid, _ in _notes(tmp_path):
                if what == "end" and number in held:
                    ended.add(pid)
                elif what == "start" and pid in ended:
                    return True
            return False

        wait_until(answered_unstored, 120, "a worker given a trial after its held one ended")
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
    finally:
        lock.rollback()
        lock.close()
        engine.dispose()
    assert all(t.state == TrialState.RUNNING for t in trials() if t.number in held)
    again = procs.serve(f"{TARGET}:held_on_request", port, *args, "--reclaim-window", "60")
    with _telling_what_workers_said(workers):
        finish(again, timeout=400)
        final = trials()
        states = [t.state for t in final]
        assert states.count(TrialState.COMPLETE) == 30, states
        assert TrialState.RUNNING not in states and TrialState.FAIL not in states, states
        for number, x in held.items():  # reclaimed whole: the value and the parameter drawn
            assert final[number].state == TrialState.COMPLETE
            assert final[number].params == {"x": x}
            assert final[number].value == pytest.approx((x - 2) ** 2)


def test_a_worker_tries_again_when_the_coordinator_does_not_greet_it(procs, tmp_path):
    """A coordinator that accepts a connection and says nothing before it closes (starting,
    busy, restarted) is tried again until the connect timeout, not given up on: the worker
    then joins the coordinator that listens there and runs the study."""
    procs.key()
    with socket.create_server(("127.0.0.1", 0)) as mute:
        mute.settimeout(60)
        port = mute.getsockname()[1]
        worker = procs.worker(port, "hub.key")
        conn, _ = mute.accept()
        conn.close()  # not a word
    serve = procs.serve(f"{TARGET}:sleepy", port, "--n-trials", "4", "--sampler", "random")
    out, _ = finish(serve)
    assert json.loads(out.strip().splitlines()[-1])["states"]["complete"] == 4
    finish(worker, 60)
    assert {t.system_attrs[attrs.WORKER] for t in load(tmp_path).trials} \
        == {f"{socket.gethostname()}/{worker.pid}"}


def test_a_worker_tries_again_when_the_coordinator_greets_it_then_falls_silent(procs,
                                                                                tmp_path):
    """A coordinator that greets a new connection and then does not answer the worker's proof
    within the socket's timeout (a restarted serve busy loading its study on a loaded machine)
    is tried again, not given up on: reconnecting workers gave up there and exited 0, and the
    restarted serve waited for them for ever."""
    from tunefleet.transport._tcp import MAGIC, NONCE, _frame

    procs.key()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        busy.settimeout(60)
        port = busy.getsockname()[1]
        worker = procs.worker(port, "hub.key")
        conn, _ = busy.accept()
        conn.sendall(_frame(MAGIC + os.urandom(NONCE)))  # a greeting, then silence
        conn.settimeout(60)
        conn.recv(1024)  # the worker's proof, left unanswered
        # The worker's side times out (10 s) and tries again: a second connection comes.
        again, _ = busy.accept()
        again.close()
        conn.close()
    serve = procs.serve(f"{TARGET}:sleepy", port, "--n-trials", "3", "--sampler", "random")
    out, _ = finish(serve)
    assert json.loads(out.strip().splitlines()[-1])["states"]["complete"] == 3
    finish(worker, 60)


def test_a_worker_before_its_coordinator_says_it_waits_then_joins(procs, tmp_path):
    """Started before serve (or after the study ended): one line says what it waits for and
    how long, instead of a silent minute."""
    procs.key()
    port = free_port()
    worker = procs.worker(port, "hub.key")
    procs.said(worker, rf"no coordinator at tcp://127\.0\.0\.1:{port} yet \(.*\); trying for "
                       r"up to 60 s")
    assert worker.poll() is None
    serve = procs.serve(f"{TARGET}:sleepy", port, "--n-trials", "3", "--sampler", "random")
    finish(serve)
    finish(worker, 60)


def test_a_remote_worker_exits_1_when_the_objective_raised(procs, tmp_path):
    """serve exits 1 (the objective's exception stops the study, as in Optuna); the worker
    that ran it exits 1 too, with one line, so that a job script sees the failure."""
    serve = procs.serve(f"{TARGET}:raises", 0, "--n-trials", "5")
    worker = procs.worker(procs.port_of(serve))
    _, err = serve.communicate(timeout=180)
    assert serve.returncode == 1, err
    assert "the objective's own error" in err
    _, werr = worker.communicate(timeout=60)
    assert worker.returncode == 1, werr
    assert werr.splitlines()[-1].startswith("tunefleet worker: the study stopped on an error: "
                                            "ValueError: the objective's own error"), werr


def test_elastic_workers_join_and_leave_and_serve_waits_for_them(procs, tmp_path):
    serve = procs.serve(f"{TARGET}:sleepy", 0, "--n-trials", "24", "--sampler", "random")
    port = procs.port_of(serve)
    procs.said(serve, "tunefleet: waiting for workers on")  # no worker yet: the coordinator waits
    assert serve.poll() is None
    assert count(tmp_path, TrialState.COMPLETE) == 0
    first = procs.worker(port)
    wait_until(lambda: count(tmp_path, TrialState.COMPLETE) >= 3, 120, "the first worker's trials")
    first.send_signal(signal.SIGTERM)  # leaves (mid-trial, most likely)
    first.wait(30)
    # none again: the coordinator has dealt with the trial the first worker left
    wait_until(lambda: count(tmp_path, TrialState.RUNNING) == 0, 60,
               "the coordinator to close the trial of the worker that left")
    assert serve.poll() is None
    second = procs.worker(port)
    third = procs.worker(port)
    finish(serve)
    finish(second, 30)
    finish(third, 30)
    study = load(tmp_path)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 24
    assert len({t.system_attrs[attrs.WORKER] for t in study.trials}) == 3
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_optimize_with_backend_tcp_and_worker_processes(procs, tmp_path):
    key_file = tmp_path / "hub.key"
    key_file.write_text("s3cret-for-this-test\n")
    key_file.chmod(0o600)  # workers refuse a key file others can read
    port = free_port()
    workers = [procs.worker(port) for _ in range(2)]  # they wait for the coordinator
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial({"x": 2.0, "y": 0})
    # Each worker's first trial waits for the other's: however late the second one starts,
    # both join before the study is done (a worker that came after the end would wait for it).
    tunefleet.optimize(study, objectives.quadratic_when_two_joined, n_trials=50, backend="tcp",
                       listen=f"tcp://127.0.0.1:{port}", key=key_file.read_bytes().strip())
    assert len(study.trials) == 50
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.best_value == 0.0 and study.best_params == {"x": 2.0, "y": 0}
    assert len({t.system_attrs[attrs.WORKER] for t in study.trials}) == 2
    for w in workers:
        finish(w, 30)


def test_setup_runs_once_per_tcp_worker(procs, tmp_path):
    (tmp_path / "hub.key").write_text("another-secret\n")
    (tmp_path / "hub.key").chmod(0o600)
    port = free_port()
    workers = [procs.worker(port) for _ in range(2)]
    calls = tmp_path / "setup-calls"
    calls.mkdir()
    study = optuna.create_study()
    tunefleet.optimize(study, objectives.tagging_when_two_joined, n_trials=30, backend="tcp",
                       listen=f"tcp://127.0.0.1:{port}", key=b"another-secret",
                       setup=objectives.make_setup(str(calls)))
    tokens = {t.user_attrs["token"] for t in study.trials}
    assert tokens == {p.name for p in calls.iterdir()}
    assert len(tokens) == len({t.system_attrs[attrs.WORKER] for t in study.trials}) == 2
    for w in workers:
        finish(w, 30)


def test_one_worker_command_forks_several_workers_that_share_the_study(procs, tmp_path):
    serve = procs.serve(f"{TARGET}:slow_quadratic_when_four_joined", 0, "--n-trials", "40",
                        "--sampler", "random")
    port = procs.port_of(serve)
    worker = procs.worker(port, "hub.key", "--processes", "4")
    out, err = finish(serve)
    assert json.loads(out.strip().splitlines()[-1])["states"]["complete"] == 40
    used = {t.system_attrs[attrs.WORKER] for t in load(tmp_path).trials}
    assert len(used) == 4  # each forked worker took trials, under its own pid
    finish(worker, timeout=30)  # the parent exits 0 once its workers saw the study done


def test_a_worker_keeps_its_result_through_a_rejoin_that_fails(procs, tmp_path):
    """A worker whose coordinator died keeps the result of the trial it was running, for the
    coordinator started again to reclaim. A rejoin that fails after its Hello (that
    coordinator drops it, or dies in turn) must not lose it: the next Hello still carries it.
    It was dropped there, and the trial then waited out the reclaim window and was failed and
    run again (the lab's hub-host test, once in a CI rehearsal)."""
    from tunefleet.hub import _protocol as P
    from tunefleet.transport import TcpListener, load_key

    # 2 s trials: a trial past its suggest is seen RUNNING in the storage however late the
    # coordinator's writes come on a loaded machine (0.3 s ones could end before it was).
    serve = procs.serve(f"{TARGET}:reports_steadily", 0, "--n-trials", "20", "--sampler",
                        "random")
    port = procs.port_of(serve)
    worker = procs.worker(port, "hub.key", "--reconnect-timeout", "120")

    def past_its_suggest() -> bool:  # (a trial cut at its suggest has no result to keep)
        try:
            return any(t.state == TrialState.RUNNING and "x" in t.params
                       for t in load(tmp_path).get_trials(deepcopy=False))
        except Exception:  # the study is not created yet
            return False

    wait_until(past_its_suggest, 120, "a trial past its suggest", interval=0.02)
    serve.kill()  # in the middle of the worker's trial (2 s)
    serve.communicate(timeout=30)
    listener = TcpListener(f"tcp://127.0.0.1:{port}", load_key(str(tmp_path / "hub.key")))
    hellos: list[P.Hello] = []
    try:
        def next_hello() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"the worker exited: {worker.communicate()[1][-2000:]}")
            for link, raw in listener.poll(0.1):
                if raw is not None and type(P.decode(raw)) is P.Hello:
                    hellos.append(P.decode(raw))
                    listener.drop(link)  # dropped right after its Hello
                    return True
            return False

        for n in (1, 2):
            wait_until(next_hello, 120, f"the worker's Hello number {n}")
    finally:
        listener.close()
        worker.kill()
        worker.communicate(timeout=30)
    numbers = [[number for number, _ in hello.reclaim] for hello in hellos]
    assert numbers[0] and numbers[1] == numbers[0], numbers


@pytest.mark.timeout(300)
def test_a_trial_whose_coordinator_died_between_reports_is_finished_and_reclaimed(procs,
                                                                                  tmp_path):
    """The coordinator dies while a rejoining worker's trial reports (the reports go out on
    their own, with no reply): the trial runs on, and the coordinator started again keeps its
    result with every report, instead of the trial ending at its next report and being failed
    once the reclaim window closed (the lab's hub-host test, once in a CI rehearsal)."""
    args = ("--n-trials", "3", "--sampler", "random")
    serve = procs.serve(f"{TARGET}:reports_steadily", 0, *args)
    port = procs.port_of(serve)
    worker = procs.worker(port, "hub.key", "--reconnect-timeout", "120")

    def reporting() -> bool:  # a trial whose first reports the coordinator has stored
        try:
            return any(t.state == TrialState.RUNNING and len(t.intermediate_values) >= 3
                       for t in load(tmp_path).get_trials(deepcopy=False))
        except Exception:  # the study is not created yet
            return False

    wait_until(reporting, 120, "a trial's first reports stored", interval=0.02)
    serve.kill()
    serve.communicate(timeout=30)
    again = procs.serve(f"{TARGET}:reports_steadily", port, *args, "--reclaim-window", "120")
    out, err = finish(again, timeout=240)
    finish(worker, 60)
    trials = load(tmp_path).trials
    # No FAIL and no retry: the cut trial kept its number and got its result.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, err[-3000:]
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(20)), t.intermediate_values
