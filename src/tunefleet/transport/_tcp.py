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

Before a connection is authenticated it costs the coordinator at most one small buffer: only
the handshake's exact size is read (a larger frame announced closes it), at most
``max_pending`` such connections are kept (a new one pushes out the oldest of the host that
holds the most), and running out of file descriptors in ``accept`` drops pending connections
or pauses accepting instead of crashing. Every refusal is logged once per host and reason.
"""

from __future__ import annotations

import errno
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
from collections.abc import Callable
from typing import Any, Optional

from tunefleet.errors import CoordinatorGone, UsageError
from tunefleet.transport._base import Channel, Link, Listener
from tunefleet.transport._security import parse_address

_logger = logging.getLogger("tunefleet.transport._tcp")
MAGIC = b"TFHUB1"
NONCE = 32
MAC = 32
MAX_MESSAGE = 256 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
#: Unauthenticated connections kept at once; more push out the oldest (a real worker's
#: handshake takes one round trip, an attacker's idle connection is what gets dropped).
MAX_PENDING = 64
#: The only frame a client may send before it is authenticated: its nonce and proof.
HANDSHAKE_SIZE = NONCE + MAC
#: The frames a server sends before it is authenticated: its hello, then its proof.
HELLO_SIZE = len(MAGIC) + NONCE
#: Seconds accept() rests after "too many open files" with nothing it could drop.
ACCEPT_PAUSE = 0.5
#: accept() errors that mean "out of a resource", not "listener broken".
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


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
        self.host = peer.rsplit(":", 1)[0]
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
    """The coordinator's TCP side: accepts, authenticates, and reads every worker's messages.

    Args:
        address: ``tcp://HOST:PORT`` to listen on; a busy or bad address is a ``UsageError``.
        key: the shared secret.
        max_message: the largest frame an authenticated worker may send.
        max_pending: how many connections may wait for their handshake at once.
    """

    def __init__(self, address: str, key: bytes, max_message: int = MAX_MESSAGE,
                 max_pending: int = MAX_PENDING) -> None:
        host, port = parse_address(address)
        self.key = key
        self.max_message = max_message
        self.max_pending = max_pending
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._server = socket.create_server((host, port), family=family, reuse_port=False,
                                                backlog=128)
        except socket.gaierror as exc:
            raise UsageError(f"cannot listen on {address}: unknown host {host!r} "
                             f"({exc.strerror})") from None
        except OSError as exc:
            why = {errno.EADDRINUSE: "the port is already in use",
                   errno.EADDRNOTAVAIL: f"{host} is not an address of this host",
                   errno.EACCES: "permission denied (ports below 1024 need root)"}.get(
                       exc.errno, exc.strerror or str(exc))
            raise UsageError(f"cannot listen on {address}: {why}") from None
        self._server.setblocking(False)
        bound_port = self._server.getsockname()[1]
        self.address = f"tcp://{host}:{bound_port}"
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._server, selectors.EVENT_READ, None)
        self._conns: dict[socket.socket, _Conn] = {}
        self._warned: set[tuple[str, str]] = set()
        self._accept_paused_until = 0.0

    def links(self) -> list[Link]:
        return [c for c in self._conns.values() if c.sealer is not None]

    def _pending(self) -> list[_Conn]:
        return [c for c in self._conns.values() if c.sealer is None]

    def poll(self, timeout: float | None) -> list[tuple[Link, Optional[tuple]]]:
        out: list[tuple[Link, Optional[tuple]]] = []
        now = time.monotonic()
        if self._accept_paused_until:
            if now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._sel.register(self._server, selectors.EVENT_READ, None)
            elif timeout is None or timeout > self._accept_paused_until - now:
                timeout = self._accept_paused_until - now
        for key, _ in self._sel.select(timeout):
            if key.data is None:
                self._accept()
            elif key.data.sock in self._conns:  # not dropped by an accept in this round
                self._read(key.data, out)
        now = time.monotonic()
        for conn in self._pending():
            if now - conn.accepted_at > HANDSHAKE_TIMEOUT:
                self._reject(conn, "no handshake in time")
        return out

    def _accept(self) -> None:
        try:
            sock, addr = self._server.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            self._out_of_resources(exc)
            return
        try:
            _keepalive(sock)
            sock.setblocking(True)
            sock.settimeout(10.0)
        except OSError:  # reset before we looked at it
            sock.close()
            return
        conn = _Conn(sock, f"{addr[0]}:{addr[1]}")
        pending = self._pending()
        if len(pending) >= self.max_pending:
            self._push_out(pending, f"over the limit of {self.max_pending} unauthenticated "
                                    "connections; dropped the oldest of the host that holds most")
        try:
            sock.sendall(_frame(MAGIC + conn.server_nonce))
        except OSError:
            sock.close()
            return
        self._conns[sock] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _push_out(self, pending: list[_Conn], why: str) -> bool:
        """Drop the oldest pending connection of the host with the most pending ones (a flood
        from one host does not push out another host's handshake); False when none."""
        if not pending:
            return False
        hosts: dict[str, int] = {}
        for c in pending:
            hosts[c.host] = hosts.get(c.host, 0) + 1
        busiest = max(hosts, key=lambda h: hosts[h])
        victim = min((c for c in pending if c.host == busiest), key=lambda c: c.accepted_at)
        self._reject(victim, why)
        return True

    def _out_of_resources(self, exc: OSError) -> None:
        """``accept`` failed: out of file descriptors (EMFILE/ENFILE) or memory. Free a
        descriptor by dropping a pending connection, or rest the listener for a moment (the
        connection waits in the kernel's backlog); the coordinator goes on either way."""
        if exc.errno not in _RESOURCE_ERRORS:
            self._warn_once("accept", f"tunefleet: accept failed ({exc}); going on")
            return
        what = os.strerror(exc.errno)
        if self._push_out(self._pending(), f"accept: {what.lower()}; dropped the oldest "
                                           "unauthenticated connection to make room"):
            return
        self._warn_once(f"pause:{exc.errno}", f"tunefleet: accept: {what.lower()} with no "
                        f"unauthenticated connection to drop; not accepting for "
                        f"{ACCEPT_PAUSE}s at a time until a descriptor is free")
        self._sel.unregister(self._server)
        self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE

    def _read(self, conn: _Conn, out: list) -> None:
        # Before the handshake, read no more than the handshake: nothing an unauthenticated
        # party sends is buffered beyond that.
        want = 4 + HANDSHAKE_SIZE - len(conn.buf) if conn.sealer is None else 1 << 20
        try:
            data = conn.sock.recv(want)
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
            if conn.sealer is None and size != HANDSHAKE_SIZE:
                if size > HANDSHAKE_SIZE:
                    self._reject(conn, f"frame larger than the handshake before "
                                       f"authentication ({size} bytes announced, a handshake "
                                       f"is {HANDSHAKE_SIZE})")
                else:
                    self._reject(conn, "authentication failed (malformed handshake)")
                return
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
                if conn.buf:  # a client sends nothing before the server's proof
                    self._reject(conn, "data before the end of the handshake")
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

    def _warn_once(self, key: str, message: str, host: str = "") -> None:
        """Log MESSAGE once per (host, key): a flood is one line, not one per connection."""
        if (host, key) in self._warned:
            return
        if len(self._warned) > 10_000:  # many source addresses must not grow memory
            self._warned.clear()
        self._warned.add((host, key))
        _logger.warning(message)

    def _reject(self, conn: _Conn, why: str, out: list | None = None) -> None:
        category = why.split(" (", 1)[0]
        self._warn_once(category, f"tunefleet: rejected connection from {conn.peer}: {why}",
                        host=conn.host)
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

    def drop(self, link: Link) -> None:
        self._drop(link, None)  # type: ignore[arg-type]

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


#: What ``getaddrinfo`` says of a name that does not exist (not of a DNS server that is down).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class _NotYet(Exception):
    """The coordinator did not greet a new connection; another try may meet it."""


class _Silent(CoordinatorGone):
    """The coordinator said nothing within the socket's timeout (the handshake's only)."""


class TcpChannel(Channel):
    """A worker's connection to a coordinator, authenticated both ways."""

    def __init__(self, address: str, key: bytes, connect_timeout: float = 60.0,
                 max_message: int = MAX_MESSAGE,
                 waiting: Callable[[str], None] | None = None) -> None:
        """``waiting``: told once, with the reason, when the first try fails and the worker
        goes on trying (so that a wait is never silent)."""
        host, port = parse_address(address)
        self.max_message = max_message
        deadline = time.monotonic() + connect_timeout
        first = True

        def again(why: object) -> None:
            nonlocal first
            if first and waiting is not None:
                waiting(str(why))
            first = False
            time.sleep(0.5)

        while True:
            # A coordinator starting (or busy, or restarted) may accept late or not greet us
            # within the socket's timeout: that is tried again until the deadline. A refused
            # key or a server that is no coordinator is said at once.
            try:
                self.sock = socket.create_connection((host, port), timeout=10.0)
            except socket.gaierror as exc:
                if exc.errno not in _NO_SUCH_NAME:  # a DNS server down may come back
                    if time.monotonic() > deadline:
                        raise CoordinatorGone(f"cannot reach a coordinator at {address}: "
                                              f"{exc.strerror}") from None
                    again(exc.strerror)
                    continue
                raise CoordinatorGone(f"cannot reach a coordinator at {address}: unknown host "
                                      f"{host!r} ({exc.strerror})") from None
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise CoordinatorGone(f"cannot reach a coordinator at {address}: {exc}") \
                        from None
                again(exc.strerror or exc)
                continue
            try:
                server_nonce, client_nonce = self._handshake(address, key)
                break
            except _NotYet as exc:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise CoordinatorGone(f"the coordinator at {address} did not complete the "
                                          f"handshake: {exc}") from None
                again(f"no greeting: {exc}")
            except BaseException:
                self.sock.close()
                raise
        session = _mac(key, b"session", server_nonce, client_nonce)
        self._sealer = _Sealer(session, out_dir=b"c2s", in_dir=b"s2c")
        self.sock.settimeout(None)
        self._watch: threading.Thread | None = None

    def _handshake(self, address: str, key: bytes) -> tuple[bytes, bytes]:
        """Prove the key both ways; the two nonces. ``_NotYet`` when the coordinator did not
        greet us (not listening yet, busy, full): worth another try."""
        _keepalive(self.sock)
        # Before the server is authenticated, read no more than the handshake's frames.
        try:
            (size,) = _LEN.unpack(self._recv_exact(4))
        except CoordinatorGone as exc:  # timed out, reset or closed before a word
            raise _NotYet(str(exc)) from None
        if size != HELLO_SIZE:
            raise CoordinatorGone(f"{address} is not a tunefleet coordinator (its first "
                                  f"message announced {size} bytes, a hello is {HELLO_SIZE})")
        try:
            hello = self._recv_exact(size)
        except CoordinatorGone as exc:
            raise _NotYet(str(exc)) from None
        if not hello.startswith(MAGIC):
            raise CoordinatorGone(f"{address} is not a tunefleet coordinator")
        server_nonce = hello[len(MAGIC):]
        client_nonce = secrets.token_bytes(NONCE)
        try:
            self.sock.sendall(_frame(client_nonce + _mac(key, b"client", server_nonce,
                                                         client_nonce)))
            proof = self._recv_frame(limit=MAC)
        except _Silent as exc:
            # Greeted, then no answer to our proof within the timeout: a coordinator busy
            # starting on a loaded machine (a restarted serve loading its study). A wrong key
            # closes the connection instead. Seen in CI: the reconnecting workers gave up here
            # and exited, and the restarted serve waited for ever.
            raise _NotYet(str(exc)) from None
        except OSError as exc:
            raise CoordinatorGone(f"coordinator connection lost during the handshake: {exc} "
                                  "(is the key the coordinator's?)") from None
        except CoordinatorGone as exc:
            raise CoordinatorGone(f"{exc} (is the key the coordinator's?)") from None
        if not hmac.compare_digest(proof, _mac(key, b"server", client_nonce, server_nonce)):
            raise CoordinatorGone(f"the coordinator at {address} does not hold our key")
        return server_nonce, client_nonce

    def _recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            try:
                chunk = self.sock.recv(min(n, 1 << 20))
            except TimeoutError as exc:
                raise _Silent(f"coordinator connection lost: {exc}") from None
            except OSError as exc:
                raise CoordinatorGone(f"coordinator connection lost: {exc}") from None
            if not chunk:
                raise CoordinatorGone("the coordinator closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _recv_frame(self, limit: int | None = None) -> bytes:
        (size,) = _LEN.unpack(self._recv_exact(4))
        if size > (limit if limit is not None else self.max_message):
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
