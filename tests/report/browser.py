"""Drive Debian's headless Chromium over the DevTools protocol (no chromedriver, no websocket
package): open a page, wait for a condition, collect console errors and network requests, take
a screenshot.

The protocol runs over ``--remote-debugging-pipe`` (JSON messages ended by NUL on file
descriptors 3 and 4), so no debugging port is opened at all.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers import wait_until

# As root, in a machine without network: without these Chromium waits on connection attempts.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--remote-debugging-pipe",
         "--window-size=1280,900", "about:blank"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _above(fd: int, low: int) -> int:
    """A copy of FD numbered LOW or more (the original is closed)."""
    import fcntl

    if fd >= low:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    os.close(fd)
    return copy


class Browser:
    """One headless Chromium with a fresh profile, attached to its first page; use as a
    context manager (the process and its profile are gone afterwards)."""

    def __init__(self, binary: str, timeout: float = 60) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="tunefleet-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Above 4, so that moving them to 3 and 4 in the child cannot overwrite one another.
        to_chrome_r, from_chrome_w = (_above(fd, 10) for fd in (to_chrome_r, from_chrome_w))
        # Chromium reads commands on fd 3 and writes answers on fd 4 (bash: dash refuses fds > 9).
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        # TUNEFLEET_CHROMIUM_LOG=path keeps Chromium's own stderr, to debug a start that fails.
        with open(os.environ.get("TUNEFLEET_CHROMIUM_LOG", os.devnull), "wb") as log:
            self.proc = subprocess.Popen(
                ["/bin/bash", "-c", script, binary, f"--user-data-dir={self.profile}", *FLAGS],
                pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        try:
            pages = [t for t in self.send("Target.getTargets")["targetInfos"]
                     if t["type"] == "page"]
            if pages:
                target = pages[0]["targetId"]
            else:
                target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target,
                                     flatten=True)["sessionId"]
        except BaseException:
            self.close()
            raise

    # -- the pipe ------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
                continue
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method (on the attached page, once attached) and return its result;
        events seen meanwhile are kept in ``events``."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_chrome, data):]
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == msg_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self.events.append(answer)

    # -- the page ------------------------------------------------------------------------------
    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 120) -> None:
        """Navigate to URL and wait until the JavaScript expression READY is true; the events
        of the page opened before are dropped."""
        self.events.clear()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", url=url)

        def loaded() -> bool:
            try:
                return bool(self.evaluate(ready))
            except RuntimeError:
                return False  # the page is still loading

        wait_until(loaded, timeout, f"{url}: {ready}", interval=0.3)

    def console_errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and browser log errors seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def console_messages(self) -> list[str]:
        """Every console call, for a failure message."""
        return [" ".join(str(a.get("value", a.get("description"))) for a in e["params"]["args"])
                for e in self.events if e["method"] == "Runtime.consoleAPICalled"]

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e["method"] == "Network.requestWillBeSent"]

    def screenshot(self, path: os.PathLike | str) -> None:
        """A PNG of the whole page (capped at 16,000 pixels high)."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=min(height, 16000),
                  deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Chromium's helpers (zygote, renderer) share its session: end them with it.
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
