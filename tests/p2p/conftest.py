"""Real peer processes on loopback: start them, read their output, never leave one behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OBJECTIVES = str(HERE / "objectives.py")
FAST = ["--heartbeat", "0.2", "--peer-timeout", "3"]


def addr(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


class PeerProc:
    """One ``tunefleet peer`` process (or the agent script), its stdout/stderr in files."""

    def __init__(self, folder: Path, uid: str, args: list[str], *, objective: str = "quadratic",
                 script: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.uid = uid
        n = len(list(folder.glob(f"{uid}*.err")))  # two peers may share a UID (on purpose)
        self.out_path, self.err_path = folder / f"{uid}{n}.out", folder / f"{uid}{n}.err"
        if script is None:
            cmd = [sys.executable, "-m", "tunefleet", "peer", f"{OBJECTIVES}:{objective}"]
        else:
            cmd = [sys.executable, str(script)]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([*cmd, "-u", uid, *args], stdout=out, stderr=err,
                                         cwd=ROOT, env=full_env)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Wait until TEXT shows up on the peer's stderr."""

        def said() -> bool:
            if text in self.stderr:
                return True
            if self.proc.poll() is not None and text not in self.stderr:
                raise AssertionError(f"{self.uid} exited ({self.proc.returncode}) before "
                                     f"saying {text!r}:\n{self.stderr}")
            return False

        wait_until(said, timeout, lambda: f"{self.uid} to say {text!r}:\n{self.stderr}",
                   interval=0.05)

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for the peer to exit by itself; its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.uid} did not exit in {timeout} s:\n{self.stderr}")

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        """Exit code 0 and the JSON summary on stdout."""
        rc = self.finish(timeout)
        assert rc == 0, f"{self.uid} exited {rc}:\n{self.stderr}"
        return json.loads(self.stdout.strip().splitlines()[-1])


@pytest.fixture
def swarm(tmp_path: Path):
    """A factory of peer processes; any still running at the end of the test is killed."""
    started: list[PeerProc] = []

    def start(uid: str, *args: str, **kw: Any) -> PeerProc:
        p = PeerProc(tmp_path, uid, list(args), **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def key_file(folder: Path, text: str = "swarm secret") -> Path:
    """A key file only its owner can read (peers refuse any other, like ssh)."""
    path = folder / "key"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path
