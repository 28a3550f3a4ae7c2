"""The TCP listener against clients without the key, garbage, oversized and replayed messages,
floods of unauthenticated connections, running out of file descriptors, and bad key files and
addresses: each is dropped (or refused in one line) and logged once, and the coordinator goes on
serving real workers. The hardening tests run real `tunefleet serve` processes on port 0."""

from __future__ import annotations

import logging
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

import tunefleet
from optuna.trial import TrialState

from tests.remote import objectives
from tests.helpers import free_port, wait_until
from tests.remote.conftest import ROOT
from tunefleet import _attrs as attrs
from tunefleet.hub import _protocol as P
from tunefleet.transport._tcp import HANDSHAKE_SIZE, HELLO_SIZE, MAX_PENDING, TcpChannel

KEY = b"the-right-key"
TARGET = f"{Path(objectives.__file__)}:slow_quadratic"


def write_key(path: Path, text: bytes = KEY) -> Path:
    """A key file as it must be: readable by its owner only."""
    path.write_bytes(text)
    path.chmod(0o600)
    return path

def raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.recv(4 + 6 + 32)  # the coordinator's hello
    return sock

def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, socket.timeout):
        return True

@pytest.fixture
def coordinator(procs, tmp_path, caplog):
    """A coordinator (optimize with backend="tcp") in a thread, waiting for workers."""
    write_key(tmp_path / "hub.key")
    study = optuna.create_study()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tunefleet.optimize(study, objectives.quadratic, n_trials=50, backend="tcp",
                               listen="tcp://127.0.0.1:0", key=KEY)
        except BaseException as exc:
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="tunefleet.transport._tcp")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    said = wait_until(lambda: errors or re.search(
        r"waiting for workers on tcp://127\.0\.0\.1:(\d+)", caplog.text), 30,
        "the listener on port 0 to say its port")
    assert not errors, errors
    yield int(said.group(1)), study, thread, errors

def rejections(caplog, why: str) -> int:
    return sum("rejected" in r.getMessage() and why in r.getMessage() for r in caplog.records)

def finish(coordinator, procs, tmp_path) -> None:
    """A real worker with the key still gets the whole study done."""
    port, study, thread, errors = coordinator
    worker = procs.worker(port)
    thread.join(120)
    assert not thread.is_alive() and not errors, errors
    assert len(study.trials) == 50
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert worker.wait(30) == 0

def test_a_worker_with_a_wrong_key_is_rejected(coordinator, procs, tmp_path, caplog):
    port = coordinator[0]
    write_key(tmp_path / "wrong.key", b"not-the-key\n")
    for _ in range(2):
        intruder = procs.worker(port, key_file="wrong.key")
        _, err = intruder.communicate(timeout=60)
        assert intruder.returncode == 2
        assert len(err.strip().splitlines()) == 1 and "key" in err, err
    assert rejections(caplog, "authentication failed") == 1  # logged once, not per attempt
    finish(coordinator, procs, tmp_path)

def test_garbage_and_oversized_messages_are_dropped(coordinator, procs, tmp_path, caplog):
    port = coordinator[0]
    for _ in range(2):
        sock = raw(port)
        sock.sendall(struct.pack(">I", 40) + b"\x00garbage that is no handshake\xff" * 2)
        assert closed_by_peer(sock)
        sock = raw(port)
        sock.sendall(struct.pack(">I", 2**31) + b"x" * 100)  # a 2 GiB message announced
        assert closed_by_peer(sock)
    assert rejections(caplog, "authentication failed (malformed handshake)") == 1
    assert rejections(caplog, "frame larger than the handshake before authentication") == 1
    # garbage after an authenticated handshake: a frame with a bad signature
    channel = TcpChannel(f"tcp://127.0.0.1:{port}", KEY, connect_timeout=10)
    channel.sock.sendall(struct.pack(">I", 60) + b"\x01" * 60)
    assert closed_by_peer(channel.sock)
    assert rejections(caplog, "bad message signature") == 1
    finish(coordinator, procs, tmp_path)

def test_a_replayed_message_is_dropped(coordinator, procs, tmp_path, caplog):
    port = coordinator[0]
    channel = TcpChannel(f"tcp://127.0.0.1:{port}", KEY, connect_timeout=10)
    sent: list[bytes] = []
    real_sendall = channel.sock.sendall

    class Spy:
        def __getattr__(self, name):
            return getattr(channel_sock, name)

        def sendall(self, data):
            sent.append(bytes(data))
            return real_sendall(data)

    channel_sock = channel.sock
    channel.sock = Spy()  # type: ignore[assignment]
    channel.send(P.encode(P.Hello(1, "replayer", "replayer")))
    assert type(P.decode(channel.recv())) is P.Config  # a genuine, authenticated exchange
    real_sendall(sent[0])  # the same signed bytes again
    assert closed_by_peer(channel_sock)
    assert rejections(caplog, "replayed") == 1
    finish(coordinator, procs, tmp_path)

def test_listener_binds_to_loopback_by_default():
    from tunefleet.transport._tcp import TcpListener

    listener = TcpListener("tcp://:0", KEY)  # no host given
    try:
        assert listener._server.getsockname()[0] == "127.0.0.1"
    finally:
        listener.close()


# -- `tunefleet serve` itself ----------------------------------------------------------------

class Serve:
    """A real `tunefleet serve` on port 0; its stderr goes to a file (a flood of log lines
    must not fill a pipe nobody reads), and the port comes from its first line."""

    def __init__(self, tmp_path: Path, procs, n_trials: int = 20) -> None:
        write_key(tmp_path / "hub.key")
        self.tmp_path = tmp_path
        self.n_trials = n_trials
        self.err_path = tmp_path / "serve.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunefleet", "serve", TARGET, "--listen",
             "tcp://127.0.0.1:0", "--key-file", "hub.key", "--storage", "sqlite:///hub.db",
             "--n-trials", str(n_trials), "--sampler", "random", "--no-progress", "--json"],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=open(tmp_path / "serve.out", "w"), stderr=open(self.err_path, "w"))
        procs.started.append(self.proc)
        wait_until(self._started, 120, "serve's coordinator to wait for workers")
        # and for its first group commit (the study's mode) to be in the storage: from then on
        # serve holds what it will hold while it waits, so its memory can be measured
        wait_until(self._first_round_written, 120,
                   lambda: f"serve's first write to its storage; serve said: "
                           f"{self.stderr()[-3000:]}")
        self.port = int(re.search(r" on tcp://127\.0\.0\.1:(\d+);", self.stderr()).group(1))
        self.pid = self.proc.pid

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}: {self.stderr()}")
        return "tunefleet: waiting for workers on" in self.stderr()

    def _first_round_written(self) -> bool:
        storage = optuna.storages.RDBStorage(f"sqlite:///{self.tmp_path}/hub.db")
        try:
            study_id = storage.get_study_id_from_name("tunefleet")
            return attrs.MODE in storage.get_study_system_attrs(study_id)
        finally:
            storage.engine.dispose()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def count(self, text: str) -> int:
        return self.stderr().count(text)

    def sockets(self) -> int:
        """Sockets serve holds open now (its listener, workers, pending connections)."""
        fd_dir = Path(f"/proc/{self.pid}/fd")
        n = 0
        for fd in fd_dir.iterdir():
            try:
                n += os.readlink(fd).startswith("socket:")
            except OSError:  # closed while we looked
                pass
        return n

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/PID/status")

    def hello(self) -> socket.socket:
        """A connection that got the coordinator's hello (so it was accepted)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        got = b""
        while len(got) < 4 + 6 + 32:
            chunk = sock.recv(64)
            assert chunk, "closed before the hello"
            got += chunk
        return sock

    def finish_with_a_worker(self, procs) -> None:
        """A real worker with the key runs the whole study: exact count, none RUNNING."""
        worker = procs.worker(self.port)
        assert self.proc.wait(180) == 0, self.stderr()[-3000:]
        assert worker.wait(60) == 0
        study = optuna.load_study(study_name="tunefleet",
                                  storage=f"sqlite:///{self.tmp_path}/hub.db")
        states = [t.state for t in study.get_trials(deepcopy=False)]
        assert states.count(TrialState.COMPLETE) == self.n_trials == len(states)


def test_serve_reads_nothing_larger_than_the_handshake_before_authentication(procs, tmp_path):
    serve = Serve(tmp_path, procs)
    before = serve.peak_rss_kib()
    for _ in range(4):  # the attack that took the coordinator from 82 MB to 1.2 GB
        sock = serve.hello()
        sock.sendall(struct.pack(">I", 200 * 1024 * 1024))
        try:
            for _ in range(50):  # up to 50 MB of the 200 announced, until it is closed
                sock.sendall(b"\0" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_by_peer(sock)
        sock.close()
    assert serve.peak_rss_kib() - before < 16 * 1024  # nothing of it was buffered
    assert serve.count("frame larger than the handshake before authentication "
                       f"(209715200 bytes announced, a handshake is {HANDSHAKE_SIZE})") == 1
    serve.finish_with_a_worker(procs)


def test_serve_keeps_at_most_the_limit_of_unauthenticated_connections(procs, tmp_path):
    serve = Serve(tmp_path, procs)
    base = serve.sockets()
    idle = [serve.hello() for _ in range(MAX_PENDING + 20)]  # each was accepted
    # The oldest were dropped to let the newest in: never more than the limit held.
    assert serve.sockets() - base <= MAX_PENDING
    assert closed_by_peer(idle[0])
    assert serve.count(f"over the limit of {MAX_PENDING} unauthenticated connections") == 1
    serve.finish_with_a_worker(procs)  # while the idle connections are still open
    for sock in idle:
        sock.close()


def test_serve_survives_running_out_of_file_descriptors(procs, tmp_path):
    serve = Serve(tmp_path, procs)
    in_use = len(os.listdir(f"/proc/{serve.pid}/fd"))
    hard = resource.prlimit(serve.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(serve.pid, resource.RLIMIT_NOFILE, (in_use + 6, hard))
    idle = [socket.create_connection(("127.0.0.1", serve.port), timeout=60) for _ in range(30)]
    wait_until(lambda: "too many open files" in serve.stderr(), 120, "serve to run out")
    assert serve.proc.poll() is None, serve.stderr()[-3000:]
    assert serve.count("accept: too many open files; dropped the oldest unauthenticated "
                       "connection to make room") == 1
    for sock in idle:  # the attacker goes; the descriptors come back to serve
        sock.close()
    serve.finish_with_a_worker(procs)
    assert "Traceback" not in serve.stderr()


def one_line_error(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("mode, who", [(0o644, "serve"), (0o640, "serve"), (0o604, "worker"),
                                       (0o660, "worker")])
def test_a_key_file_others_can_read_is_refused(procs, tmp_path, mode, who):
    """Like ssh with a private key: refused in one line that says how to fix it."""
    key = write_key(tmp_path / "hub.key")
    key.chmod(mode)
    if who == "serve":
        proc = procs.serve(TARGET, 0, "--n-trials", "1")
    else:
        proc = procs.worker(free_port())
    err = one_line_error(proc)
    assert err == (f"tunefleet: error: key file hub.key is accessible by others (mode "
                   f"{mode:o}): refused; run chmod 600 hub.key\n")


@pytest.mark.parametrize("who", ["serve", "worker"])
def test_a_key_file_path_that_is_a_directory_is_one_line(procs, tmp_path, who):
    (tmp_path / "hub.key").mkdir()
    proc = procs.serve(TARGET, 0, "--n-trials", "1") if who == "serve" else \
        procs.worker(free_port())
    assert one_line_error(proc) == ("tunefleet: error: key file hub.key is a directory, not a "
                                    "file\n")


def test_serve_on_a_busy_port_is_one_line(procs, tmp_path):
    write_key(tmp_path / "hub.key")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = one_line_error(procs.serve(TARGET, port, "--n-trials", "1"))
    assert err == (f"tunefleet: error: cannot listen on tcp://127.0.0.1:{port}: the port is "
                   "already in use\n")
    assert not (tmp_path / "hub.db").exists()  # nothing was opened before the bind


@pytest.mark.parametrize("address, why", [
    ("tcp://127.0.0.1:99999", "(Port out of range 0-65535)"),
    ("tcp://127.0.0.1:http", "(Port could not be cast to integer value as 'http')"),
    ("tcp://127.0.0.1", ""),
    ("udp://127.0.0.1:5555", ""),
    ("tcp://127.0.0.1:5555/x", ""),
])
@pytest.mark.parametrize("who", ["serve", "worker"])
def test_a_malformed_address_is_one_line(procs, tmp_path, address, why, who):
    write_key(tmp_path / "hub.key")
    if who == "serve":
        proc = procs.tunefleet("serve", TARGET, "--listen", address, "--key-file", "hub.key",
                               "--n-trials", "1", "--storage", "sqlite:///hub.db")
        expected = f"address {address!r} must look like tcp://HOST:PORT"
    else:
        proc = procs.tunefleet("worker", "--connect", address, "--key-file", "hub.key")
        expected = (f"address {address!r} must look like tcp://HOST:PORT"
                    if address.startswith("tcp://") else
                    f"--connect {address!r} must look like tcp://HOST:PORT")
    err = one_line_error(proc)
    assert err == f"tunefleet: error: {expected}{' ' + why if why else ''}\n"


def test_a_coordinator_host_that_does_not_resolve_is_one_line_at_once(procs, tmp_path):
    """Not 60 s of silence retrying a name that does not exist (``.invalid`` never resolves)."""
    write_key(tmp_path / "hub.key")
    started = time.monotonic()
    err = one_line_error(procs.worker_at("tcp://no-such-host.invalid:5555", "hub.key"))
    assert err.startswith("tunefleet worker: cannot reach a coordinator at "
                          "tcp://no-such-host.invalid:5555: unknown host 'no-such-host.invalid'")
    assert time.monotonic() - started < 50  # the connect timeout (60 s) was not waited out


def test_a_worker_reads_nothing_large_from_an_unauthenticated_server(procs, tmp_path):
    """A fake coordinator announcing a 200 MB hello: the worker refuses it at once (one line,
    exit 2) instead of reading it."""
    write_key(tmp_path / "hub.key")
    with socket.create_server(("127.0.0.1", 0)) as fake:
        port = fake.getsockname()[1]
        worker = procs.worker(port)
        conn, _ = fake.accept()
        with conn:
            conn.sendall(struct.pack(">I", 200 * 1024 * 1024) + b"TFHUB1" + b"\0" * 4096)
            err = one_line_error(worker)
    assert err == (f"tunefleet worker: tcp://127.0.0.1:{port} is not a tunefleet coordinator "
                   f"(its first message announced 209715200 bytes, a hello is {HELLO_SIZE})\n")
