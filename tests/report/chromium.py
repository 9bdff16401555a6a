"""Open a page in headless Chromium and report what a reader would see: every image's
``naturalWidth``, every link, console errors and failed loads, and a screenshot.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes, commands on fd 3, answers and events on fd 4), so no port, no
websocket package and no extension are needed. The process is started and always ended here.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECK_JS = """(() => {
  const images = Array.from(document.images).map(i => ({src: i.getAttribute('src'), alt: i.getAttribute('alt'),
      complete: i.complete, naturalWidth: i.naturalWidth, width: i.width}));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
  const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
  return JSON.stringify({images, links, ids, title: document.title, text: document.body.innerText.length});
})()"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What the page showed: ``images`` (src, alt, complete, naturalWidth, width as shown), ``links`` (href),
    ``ids`` (element ids, for #anchors), ``errors`` (console errors, exceptions, failed loads)."""

    images: list[dict[str, Any]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    title: str = ""


def _above(fd: int, low: int) -> int:
    """``fd`` duplicated to a number >= ``low``; the original is closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.close(fd)
    return high


class _Pipe:
    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int) -> None:
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            e = self._read_message(deadline)
            if e.get("method") == method:
                return e
            self.events.append(e)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p.get('type')}: {[a.get('value') for a in p.get('args', [])]}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed":
            out.append(f"load failed: {p.get('errorText')}")
    return out


def check_page(
    path: Path, screenshot: Path | None = None, width: int = 1280, height: int = 2400, timeout: float = 90
) -> PageCheck:
    """Load ``path`` (a local HTML file) in a fresh headless Chromium, wait for the load event,
    collect the page's images, links and errors, and save a PNG screenshot of the top
    ``width`` x ``height`` pixels to ``screenshot``. The browser is closed before returning."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    # The child's ends moved above 3 and 4 first, so the dup2 below cannot overwrite one with the other.
    to_child_r, from_child_w = _above(to_child_r, 10), _above(from_child_w, 10)
    profile = tempfile.mkdtemp(prefix="report-chromium-")

    def _fds() -> None:  # in the child: the protocol wants fd 3 (commands in) and fd 4 (answers out)
        os.dup2(to_child_r, 3)
        os.dup2(from_child_w, 4)

    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
            "--disable-extensions", "--disable-background-networking", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "about:blank"]
    # pass_fds keeps 3 and 4 open past the child's fd cleanup, which runs after preexec_fn.
    proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=_fds,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_child_r)
    os.close(from_child_w)
    pipe = _Pipe(proc, to_child_w, from_child_r)
    try:
        target = pipe.send("Target.createTarget", url="about:blank", timeout=timeout)["targetId"]
        session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session)
        pipe.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1, mobile=False)
        pipe.send("Page.navigate", session, url=path.resolve().as_uri())
        pipe.wait_event("Page.loadEventFired", timeout)
        value = pipe.send("Runtime.evaluate", session, expression=CHECK_JS, returnByValue=True)["result"]["value"]
        found = json.loads(value)
        if screenshot is not None:
            data = pipe.send("Page.captureScreenshot", session, format="png", timeout=timeout)["data"]
            screenshot.write_bytes(base64.b64decode(data))
        time.sleep(0.2)  # late console messages
        pipe.send("Runtime.evaluate", session, expression="1", returnByValue=True)  # drain events up to now
        return PageCheck(found["images"], found["links"], found["ids"], _errors(pipe.events), found["title"])
    finally:
        try:
            pipe.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        os.close(to_child_w)
        os.close(from_child_r)
        shutil.rmtree(profile, ignore_errors=True)
