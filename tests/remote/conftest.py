"""Helpers of the remote tests: real `tunefleet serve` / `tunefleet worker` processes."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from tests.helpers import wait_until
from tests.remote import objectives

# Engine workers (Dask, Ray, Spark) cannot import the tests package: ship it by value.
cloudpickle.register_pickle_by_value(objectives)

ROOT = Path(__file__).resolve().parents[2]


class Procs:
    """Processes a test starts; whatever is still running at the end is killed."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[subprocess.Popen] = []

    def tunefleet(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        full_env = dict(os.environ, PYTHONPATH=str(ROOT))
        full_env.update(env or {})
        proc = subprocess.Popen([sys.executable, "-m", "tunefleet", *args], cwd=self.cwd,
                                env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        self.started.append(proc)
        return proc

    def key(self) -> Path:
        """The shared key file ``hub.key``, written once, as a user would copy it to the
        workers' hosts first."""
        key = self.cwd / "hub.key"
        if not key.exists():
            key.write_text("test-key-0123456789\n")
            key.chmod(0o600)  # serve and worker refuse a key file others can read
        return key

    def serve(self, target: str, port: int, *args: str) -> subprocess.Popen:
        self.key()
        return self.tunefleet("serve", target, "--listen", f"tcp://127.0.0.1:{port}",
                              "--key-file", "hub.key", "--storage", "sqlite:///hub.db",
                              "--no-progress", "--json", *args)

    def said(self, proc: subprocess.Popen, pattern: str, timeout: float = 120) -> re.Match:
        """Read PROC's stderr up to the first line that matches PATTERN; the match.

        The lines are read from the pipe unbuffered, so that ``communicate()`` later gets the
        rest; those read here are added to ``proc.stderr_head`` (for failure messages)."""
        fd = proc.stderr.fileno()
        line = bytearray()

        def read() -> str:
            return proc.stderr_head + line.decode(errors="replace")

        def next_line() -> str | None:
            while select.select([fd], [], [], 0.1)[0]:
                byte = os.read(fd, 1)
                if not byte:
                    raise AssertionError(f"exited ({proc.wait()}) before a line matching "
                                         f"{pattern!r}:\n{read()}")
                line.extend(byte)
                if byte == b"\n":
                    text = line.decode(errors="replace")
                    proc.stderr_head += text
                    line.clear()
                    return text
            return None

        def matched() -> re.Match | None:
            text = next_line()
            return re.search(pattern, text) if text is not None else None

        if not hasattr(proc, "stderr_head"):
            proc.stderr_head = ""  # type: ignore[attr-defined]
        return wait_until(matched, timeout, lambda: f"a line matching {pattern!r}:\n{read()}",
                          interval=0)

    def port_of(self, serve: subprocess.Popen) -> int:
        """The port a `tunefleet serve --listen tcp://127.0.0.1:0` bound (its first line)."""
        return int(self.said(serve, r" on tcp://127\.0\.0\.1:(\d+);").group(1))

    def worker(self, port: int, key_file: str = "hub.key", *args: str) -> subprocess.Popen:
        return self.worker_at(f"tcp://127.0.0.1:{port}", key_file, *args)

    def worker_at(self, address: str, key_file: str = "hub.key", *args: str) -> subprocess.Popen:
        return self.tunefleet("worker", "--connect", address, "--key-file", key_file, *args)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.stop_all()
