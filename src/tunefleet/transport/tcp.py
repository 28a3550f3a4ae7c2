"""TCP transport: workers on any host, authenticated with a shared key before anything they send
is unpickled.

Framing: a 4-byte big-endian length, then the body; a length over ``max_message`` closes the
connection. Handshake (mutual, so neither side unpickles from a party without the key):
    server -> client   MAGIC + server_nonce
    client -> server   client_nonce + HMAC(key, "client" + server_nonce + client_nonce)
    server -> client   HMAC(key, "server" + client_nonce + server_nonce)
then every message is ``seq (8 bytes) + HMAC(session, direction + seq + payload) + payload``
with ``session = HMAC(key, "session" + server_nonce + client_nonce)``; ``seq`` must be exactly
the next one, so a replayed, reordered or forged message closes the connection. A worker that
dies closes its socket (the coordinator sees it at once); TCP keepalive finds a vanished host.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import secrets
import selectors
import socket
import struct
import threading
import time
from typing import Any, Optional
from urllib.parse import urlparse

from tunefleet.errors import CoordinatorGone, UsageError
from tunefleet.transport._base import Channel, Link, Listener

_logger = logging.getLogger("tunefleet.transport.tcp")
MAGIC = b"TFHUB1"
NONCE = 32
MAC = 32
MAX_MESSAGE = 256 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


def parse_address(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (or ``HOST:PORT``) -> (host, port); ``*`` means every interface."""
    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.scheme != "tcp" or url.port is None:
        raise UsageError(f"address {address!r} must look like tcp://HOST:PORT")
    host = url.hostname or "127.0.0.1"
    return ("0.0.0.0" if host == "*" else host), url.port


def load_key(key_file: str | None = None, *, create: bool = False) -> bytes:
    """The shared secret: the contents of ``key_file``, else ``$TUNEFLEET_KEY``. With
    ``create``, a missing key file is made with a fresh random key (readable by its owner)."""
    if key_file:
        if not os.path.exists(key_file):
            if not create:
                raise UsageError(f"key file {key_file} does not exist")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        with open(key_file, "rb") as f:
            key = f.read().strip()
        if not key:
            raise UsageError(f"key file {key_file} is empty")
        return key
    env = os.environ.get("TUNEFLEET_KEY", "").strip()
    if env:
        return env.encode()
    raise UsageError("no key: pass --key-file FILE or set TUNEFLEET_KEY")


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def _frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _Sealer:
    """Signs and checks the messages of one authenticated connection."""

    def __init__(self, session: bytes, out_dir: bytes, in_dir: bytes) -> None:
        self.session, self.out_dir, self.in_dir = session, out_dir, in_dir
        self.out_seq = 0
        self.in_seq = 0

    def seal(self, payload: bytes) -> bytes:
        self.out_seq += 1
        seq = _SEQ.pack(self.out_seq)
        return seq + _mac(self.session, self.out_dir, seq, payload) + payload

    def open(self, body: bytes) -> bytes:
        """The payload of a sealed body; ValueError when forged, replayed or out of order."""
        if len(body) < 8 + MAC:
            raise ValueError("message too short")
        seq, mac, payload = body[:8], body[8:8 + MAC], body[8 + MAC:]
        if not hmac.compare_digest(mac, _mac(self.session, self.in_dir, seq, payload)):
            raise ValueError("bad message signature")
        if _SEQ.unpack(seq)[0] != self.in_seq + 1:
            raise ValueError("replayed or reordered message")
        self.in_seq += 1
        return payload


class _Conn(Link):
    """One accepted connection; a worker once the handshake is done."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.name = peer
        self.buf = bytearray()
        self.server_nonce = secrets.token_bytes(NONCE)
        self.sealer: _Sealer | None = None
        self.accepted_at = time.monotonic()
        self.closed = False
        self.reason = "connection closed"

    def send(self, msg: tuple) -> None:
        if self.closed or self.sealer is None:
            return
        try:
            self.sock.sendall(_frame(self.sealer.seal(pickle.dumps(msg, pickle.HIGHEST_PROTOCOL))))
        except OSError as exc:
            self.reason = f"send failed: {exc}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def exit_reason(self) -> str:
        return f"worker {self.name} ({self.peer}): {self.reason}"


class TcpListener(Listener):
    """The coordinator's TCP side: accepts, authenticates, and reads every worker's messages."""

    def __init__(self, address: str, key: bytes, max_message: int = MAX_MESSAGE) -> None:
        host, port = parse_address(address)
        self.key = key
        self.max_message = max_message
        self._server = socket.create_server((host, port), reuse_port=False, backlog=128)
        self._server.setblocking(False)
        bound_host, bound_port = self._server.getsockname()[:2]
        self.address = f"tcp://{host}:{bound_port}"
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._server, selectors.EVENT_READ, None)
        self._conns: dict[socket.socket, _Conn] = {}
        self._warned: set[str] = set()

    def links(self) -> list[Link]:
        return [c for c in self._conns.values() if c.sealer is not None]

    def poll(self, timeout: float | None) -> list[tuple[Link, Optional[tuple]]]:
        out: list[tuple[Link, Optional[tuple]]] = []
        for key, _ in self._sel.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._read(key.data, out)
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.sealer is None and now - conn.accepted_at > HANDSHAKE_TIMEOUT:
                self._reject(conn, "no handshake in time")
        return out

    def _accept(self) -> None:
        try:
            sock, addr = self._server.accept()
        except BlockingIOError:
            return
        _keepalive(sock)
        sock.setblocking(True)
        sock.settimeout(10.0)
        conn = _Conn(sock, f"{addr[0]}:{addr[1]}")
        try:
            sock.sendall(_frame(MAGIC + conn.server_nonce))
        except OSError:
            sock.close()
            return
        self._conns[sock] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn, out: list) -> None:
        try:
            data = conn.sock.recv(1 << 20)
        except (BlockingIOError, socket.timeout):
            return
        except OSError as exc:
            data = b""
            conn.reason = f"connection error: {exc}"
        if not data:
            self._drop(conn, out)
            return
        conn.buf += data
        while len(conn.buf) >= 4:
            (size,) = _LEN.unpack_from(conn.buf)
            if size > self.max_message:
                self._reject(conn, f"message of {size} bytes is over the limit of "
                                   f"{self.max_message}", out)
                return
            if len(conn.buf) < 4 + size:
                return
            body = bytes(conn.buf[4:4 + size])
            del conn.buf[:4 + size]
            if conn.sealer is None:
                if not self._handshake(conn, body):
                    return
                continue
            try:
                msg = pickle.loads(conn.sealer.open(body))
            except ValueError as exc:
                self._reject(conn, str(exc), out)
                return
            except Exception as exc:  # authenticated but not a message we can read
                self._reject(conn, f"unreadable message: {exc}", out)
                return
            if not isinstance(msg, tuple) or not msg:
                self._reject(conn, "malformed message", out)
                return
            out.append((conn, msg))

    def _handshake(self, conn: _Conn, body: bytes) -> bool:
        client_nonce, proof = body[:NONCE], body[NONCE:]
        expected = _mac(self.key, b"client", conn.server_nonce, client_nonce)
        if len(client_nonce) != NONCE or not hmac.compare_digest(proof, expected):
            self._reject(conn, "authentication failed (wrong or missing key)")
            return False
        try:
            conn.sock.sendall(_frame(_mac(self.key, b"server", client_nonce, conn.server_nonce)))
        except OSError:
            self._reject(conn, "connection lost during the handshake")
            return False
        session = _mac(self.key, b"session", conn.server_nonce, client_nonce)
        conn.sealer = _Sealer(session, out_dir=b"s2c", in_dir=b"c2s")
        return True

    def _reject(self, conn: _Conn, why: str, out: list | None = None) -> None:
        host = conn.peer.rsplit(":", 1)[0]
        if (host, why) not in self._warned:  # logged once per host and reason
            self._warned.add((host, why))  # type: ignore[arg-type]
            _logger.warning(f"tunefleet: rejected connection from {conn.peer}: {why}")
        conn.reason = f"rejected: {why}"
        self._drop(conn, out)

    def _drop(self, conn: _Conn, out: list | None) -> None:
        if conn.sock in self._conns:
            del self._conns[conn.sock]
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        authenticated = conn.sealer is not None
        conn.close()
        if authenticated and out is not None:
            out.append((conn, None))

    def close(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
        try:
            self._sel.unregister(self._server)
        except (KeyError, ValueError):
            pass
        self._server.close()
        self._sel.close()


class TcpChannel(Channel):
    """A worker's connection to a coordinator, authenticated both ways."""

    def __init__(self, address: str, key: bytes, connect_timeout: float = 60.0,
                 max_message: int = MAX_MESSAGE) -> None:
        host, port = parse_address(address)
        self.max_message = max_message
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=10.0)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise CoordinatorGone(f"cannot reach a coordinator at {address}: {exc}") \
                        from None
                time.sleep(0.5)
        _keepalive(self.sock)
        try:
            hello = self._recv_frame()
            if not hello.startswith(MAGIC) or len(hello) != len(MAGIC) + NONCE:
                raise CoordinatorGone(f"{address} is not a tunefleet coordinator")
            server_nonce = hello[len(MAGIC):]
            client_nonce = secrets.token_bytes(NONCE)
            self.sock.sendall(_frame(client_nonce + _mac(key, b"client", server_nonce,
                                                         client_nonce)))
            proof = self._recv_frame()
        except CoordinatorGone as exc:
            raise CoordinatorGone(f"{exc} (is the key the coordinator's?)") from None
        if not hmac.compare_digest(proof, _mac(key, b"server", client_nonce, server_nonce)):
            raise CoordinatorGone(f"the coordinator at {address} does not hold our key")
        session = _mac(key, b"session", server_nonce, client_nonce)
        self._sealer = _Sealer(session, out_dir=b"c2s", in_dir=b"s2c")
        self.sock.settimeout(None)
        self._watch: threading.Thread | None = None

    def _recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            try:
                chunk = self.sock.recv(min(n, 1 << 20))
            except OSError as exc:
                raise CoordinatorGone(f"coordinator connection lost: {exc}") from None
            if not chunk:
                raise CoordinatorGone("the coordinator closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _recv_frame(self) -> bytes:
        (size,) = _LEN.unpack(self._recv_exact(4))
        if size > self.max_message:
            raise CoordinatorGone(f"message of {size} bytes from the coordinator is too large")
        return self._recv_exact(size)

    def send(self, msg: tuple) -> None:
        try:
            self.sock.sendall(_frame(self._sealer.seal(pickle.dumps(msg, pickle.HIGHEST_PROTOCOL))))
        except OSError as exc:
            raise CoordinatorGone(f"coordinator connection lost: {exc}") from None

    def recv(self) -> Any:
        body = self._recv_frame()
        try:
            return pickle.loads(self._sealer.open(body))
        except ValueError as exc:
            raise CoordinatorGone(f"bad message from the coordinator: {exc}") from None

    def watch_while_running(self) -> None:
        """While a trial runs the coordinator sends nothing; if the socket turns readable it
        has closed: the coordinator is gone, so stop this worker instead of finishing a trial
        nobody will receive."""
        if self._watch is not None:
            return

        def watch() -> None:
            import select

            while True:
                try:
                    readable, _, _ = select.select([self.sock], [], [], 1.0)
                except (OSError, ValueError):
                    return
                if readable:
                    if self._idle_peek_is_eof():
                        _logger.warning("tunefleet worker: the coordinator is gone; exiting")
                        os._exit(0)
                    time.sleep(0.05)  # a reply the main thread is about to read

        self._watch = threading.Thread(target=watch, daemon=True, name="tunefleet-watch")
        self._watch.start()

    def _idle_peek_is_eof(self) -> bool:
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
