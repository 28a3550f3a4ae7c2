"""Helpers of the remote tests: real `tunefleet serve` / `tunefleet worker` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from tests.remote import objectives

# Engine workers (Dask, Ray, Spark) cannot import the tests package: ship it by value.
cloudpickle.register_pickle_by_value(objectives)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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

    def serve(self, target: str, port: int, *args: str) -> subprocess.Popen:
        key = self.cwd / "hub.key"
        if not key.exists():  # as a user would copy it to the workers' hosts first
            key.write_text("test-key-0123456789\n")
            key.chmod(0o600)  # serve and worker refuse a key file others can read
        return self.tunefleet("serve", target, "--listen", f"tcp://127.0.0.1:{port}",
                              "--key-file", "hub.key", "--storage", "sqlite:///hub.db",
                              "--no-progress", "--json", *args)

    def worker(self, port: int, key_file: str = "hub.key", *args: str) -> subprocess.Popen:
        return self.tunefleet("worker", "--connect", f"tcp://127.0.0.1:{port}",
                              "--key-file", key_file, *args)

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
