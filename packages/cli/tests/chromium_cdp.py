"""A small Chrome DevTools Protocol client over Chromium's debugging pipe, for the browser tests.

Chromium started with ``--remote-debugging-pipe`` reads protocol messages (JSON, each ended by a NUL byte)
from its file descriptor 3 and writes its answers and events to descriptor 4: no port, no websocket, only
the standard library. The browser is started by ``Chromium()`` and stopped by its PID on ``close()``.

    with Chromium() as browser:
        page = browser.open("file:///tmp/report.html")
        page.evaluate("document.title")
        page.errors                      # console errors and uncaught exceptions seen so far

Also a command line, to take the docs' screenshot:
    python packages/cli/tests/chromium_cdp.py runs/demo/report.html docs/img/report.png
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the flags Chromium needs in a container without a display, a GPU or a network
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    """The Chromium executable: $CHROMIUM, else chromium / chromium-browser / google-chrome on the PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium process with an empty profile, driven over its debugging pipe."""

    def __init__(self, executable: str | None = None, timeout_s: float = 60.0) -> None:
        executable = executable or find_chromium()
        if executable is None:
            raise FileNotFoundError("no Chromium found: apt-get install -y chromium (or set CHROMIUM)")
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="advssm-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire():  # in the child: the protocol's descriptors 3 (commands in) and 4 (answers out)
            high_r, high_w = os.dup(to_browser_r) + 100, os.dup(from_browser_w) + 100
            os.dup2(to_browser_r, high_r)
            os.dup2(from_browser_w, high_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=wire, pass_fds=(3, 4), start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -- the pipe -------------------------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise ProtocolError(f"Chromium closed its pipe (exit code {self.process.poll()}): "
                                        f"{self.process.stderr.read().decode(errors='replace')[-2000:]}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its answer; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise ProtocolError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, session: str | None = None, timeout_s: float | None = None) -> dict:
        """The first event ``method`` (of ``session``) not yet consumed."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            for k, event in enumerate(self.events):
                if event.get("method") == method and (session is None or event.get("sessionId") == session):
                    return self.events.pop(k)
            self.events.append(self._read_message(deadline))

    # -- pages ----------------------------------------------------------------------------------------------

    def open(self, url: str, width: int = 1200, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return page

    def close(self) -> None:
        """Close the browser, then make sure its process group is gone (by its PID), and remove the profile."""
        try:
            if self.process.poll() is None:
                try:
                    self.send("Browser.close")
                except (ProtocolError, TimeoutError, OSError):
                    pass
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.process.stderr:
                self.process.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab, attached with a flat session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, session=self.session)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (returned by value; an exception fails)."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in answer:
            raise ProtocolError(f"{expression[:80]!r} raised: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real left click (mouse pressed and released) at viewport coordinates."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (failed loads) of this page so far."""
        self.evaluate("0")  # a round trip: events sent before it are in
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def screenshot(self, path: str | Path, full_page: bool = True) -> None:
        """A PNG of the page (the whole page with ``full_page``)."""
        import base64

        params = {"format": "png"}
        if full_page:
            width, height = self.evaluate("[document.documentElement.scrollWidth, "
                                          "document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))


if __name__ == "__main__":  # python chromium_cdp.py PAGE.html OUT.png [HEIGHT [CSS-SELECTOR]]
    # a screenshot of the page's top, or from the element the selector names (scrolled to the top) down
    page_path, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    with Chromium() as browser:
        tab = browser.open(page_path.as_uri(), width=1100, height=int(sys.argv[3]) if len(sys.argv) > 3 else 900)
        if len(sys.argv) > 4:
            tab.evaluate(f"document.querySelector({json.dumps(sys.argv[4])}).scrollIntoView({{block: 'start'}})")
        if tab.errors:
            raise SystemExit(f"the page logged errors: {tab.errors}")
        tab.screenshot(out, full_page=False)
    print(f"wrote {out}")
