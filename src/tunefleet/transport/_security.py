"""The shared key and the ``tcp://HOST:PORT`` addresses of hub TCP and P2P, checked in one place.

Both modes authenticate with a key read from a file (or an environment variable) and listen on,
or connect to, a TCP address; reading and checking them here once means that a bad key file or
address is the same one-line ``UsageError`` (exit 2) in either mode, never a traceback. Nothing
here imports ZeroMQ, so ``tunefleet.transport`` exports these names at no cost.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import stat

from tunefleet.errors import UsageError

#: Where the hub's key comes from without ``--key-file`` (``tunefleet serve`` and its workers).
HUB_KEY_ENV = "TUNEFLEET_KEY"
#: Where a peer's key comes from without ``--key-file`` (``tunefleet peer``).
P2P_KEY_ENV = "TUNEFLEET_P2P_KEY"
#: The most of a key file read: a key is one line; a huge file is a mistake, not a key.
MAX_KEY_BYTES = 1 << 16
#: Host names that are this host whatever the network (``127.*`` is too: ``is_loopback``).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "ip6-localhost")

# [SCHEME://]HOST:PORT[/], parts as written; which forms a caller accepts is split_address's.
_ADDRESS = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://)?"
                      r"(?P<host>\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]*)"
                      r":(?P<port>[^/]*)(?P<slash>/?)")


@dataclasses.dataclass(frozen=True)
class Address:
    """A checked ``tcp://HOST:PORT``, its parts as written: host ``*`` is every interface,
    ``[...]`` an IPv6 address, ``""`` (hub only) loopback; port ``*`` (P2P only) a free one."""

    host: str
    port: str

    def socket_host(self) -> str:
        """The host as ``socket`` takes it: no brackets, ``*`` and ``""`` spelled out."""
        if self.host == "*":
            return "0.0.0.0"
        return self.host.strip("[]").lower() or "127.0.0.1"


def split_address(address: str, what: str = "address", *, verbatim: bool = False) -> Address:
    """Check ``tcp://HOST:PORT`` and split it; anything else is a ``UsageError`` naming ``what``.

    ``verbatim``: the address is handed on as written (P2P gives it to ZeroMQ), so it must be
    exactly ``tcp://HOST:PORT``, where port ``*`` means any free one. Otherwise (the hub's
    sockets take the parts) ``HOST:PORT``, ``tcp://:PORT`` (loopback) and a trailing ``/``
    are accepted too, and the port must be a number.
    """
    shape = f"{what} {address!r} must look like tcp://HOST:PORT"
    m = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if m is None or not m["port"]:
        raise UsageError(shape)
    if verbatim:
        if m["scheme"] != "tcp" or not m["host"] or m["slash"]:
            raise UsageError(shape)
    elif m["scheme"] is not None and m["scheme"].lower() != "tcp":
        raise UsageError(shape)
    port = m["port"]
    if not (verbatim and port == "*"):
        if not re.fullmatch(r"[0-9]+", port):
            raise UsageError(f"{shape} (Port could not be cast to integer value as {port!r})")
        if int(port) > 65535:
            raise UsageError(f"{shape} (Port out of range 0-65535)")
    return Address(m["host"], port)


def parse_address(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (or ``HOST:PORT``) -> (host, port) for a socket; ``*`` means every
    interface, no host loopback."""
    checked = split_address(address)
    return checked.socket_host(), int(checked.port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as written in an address) is this host only."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def read_key(key_file: str | None, env: str, *, create: bool = False) -> bytes | None:
    """The shared secret: the contents of ``key_file``, else ``$env``, else None.

    With ``create``, a missing key file is made with a fresh random key, readable by its owner.
    As ssh does for private keys, a key file must be a regular file that its group and others
    may neither read nor change: anyone who reads it joins the study (hub workers receive
    pickled objectives) or the swarm. Each way the file or variable is wrong is one
    ``UsageError`` line, the same in either mode.
    """
    if not key_file:
        value = os.environ.get(env)
        if value is None:
            return None
        if not value.strip():
            raise UsageError(f"{env} is set but empty")
        return value.strip().encode()
    try:
        if not os.path.lexists(key_file):
            if not create:
                raise UsageError(f"key file {key_file} does not exist")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        # O_NONBLOCK: a FIFO is refused below instead of waiting for a writer
        fd = os.open(key_file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            _check_key_file(key_file, os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb") as f:
            key = f.read(MAX_KEY_BYTES).strip()
    except OSError as exc:
        raise UsageError(f"cannot read key file {key_file}: {exc.strerror or exc}") from None
    if not key:
        raise UsageError(f"key file {key_file} is empty")
    return key


def _check_key_file(key_file: str, mode: int) -> None:
    """Refuse what is not a regular file only its owner may read and change."""
    if stat.S_ISDIR(mode):
        raise UsageError(f"key file {key_file} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"key file {key_file} is not a regular file")
    if mode & 0o077:
        raise UsageError(f"key file {key_file} is accessible by others (mode "
                         f"{stat.S_IMODE(mode):03o}): refused; run chmod 600 {key_file}")


def load_key(key_file: str | None = None, *, create: bool = False) -> bytes:
    """The hub's shared secret: ``key_file``, else ``$TUNEFLEET_KEY`` (see ``read_key``); no
    key at all is a ``UsageError``."""
    key = read_key(key_file, HUB_KEY_ENV, create=create)
    if key is None:
        raise UsageError(f"no key: pass --key-file FILE or set {HUB_KEY_ENV}")
    return key
