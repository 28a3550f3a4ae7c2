"""The TCP listener against clients without the key, garbage, oversized and replayed messages:
each is dropped and logged once, and the coordinator goes on serving real workers."""

from __future__ import annotations

import logging
import socket
import struct
import threading

import optuna
import pytest

import tunefleet
from tests.remote import objectives
from tests.remote.conftest import free_port, wait_for
from tunefleet.hub import protocol as P
from tunefleet.transport.tcp import TcpChannel

KEY = b"the-right-key"

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
    (tmp_path / "hub.key").write_bytes(KEY)
    port = free_port()
    study = optuna.create_study()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tunefleet.optimize(study, objectives.quadratic, n_trials=50, backend="tcp",
                               listen=f"tcp://127.0.0.1:{port}", key=KEY)
        except BaseException as exc:
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="tunefleet.transport.tcp")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: _listening(port), 30, "the listener")
    yield port, study, thread, errors

def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False

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
    (tmp_path / "wrong.key").write_text("not-the-key\n")
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
    assert rejections(caplog, "authentication failed") == 1
    assert rejections(caplog, "over the limit") == 1
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
    channel.send((P.HELLO, {"pid": 1, "host": "replayer", "label": "replayer"}))
    assert channel.recv()[0] == P.CONFIG  # a genuine, authenticated exchange
    real_sendall(sent[0])  # the same signed bytes again
    assert closed_by_peer(channel_sock)
    assert rejections(caplog, "replayed") == 1
    finish(coordinator, procs, tmp_path)

def test_listener_binds_to_loopback_by_default():
    from tunefleet.transport.tcp import TcpListener

    listener = TcpListener("tcp://:0", KEY)  # no host given
    try:
        assert listener._server.getsockname()[0] == "127.0.0.1"
    finally:
        listener.close()
