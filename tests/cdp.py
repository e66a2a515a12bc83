"""A small headless-Chromium driver over the DevTools protocol, on the test's reactor.

Chromium is started with ``--remote-debugging-pipe``: it reads commands on
its file descriptor 3 and writes answers and events on its descriptor 4,
each message JSON followed by a NUL octet.  So there is no driver program,
no pip dependency and no debugging port to find or leave open, and every
call is a Deferred: the reactor goes on serving the page under test while a
test waits for it (a blocking driver would freeze an in-process server).
If the test process dies, the pipe closes and Chromium exits by itself.

    browser = await Browser.launch(chromium)
    try:
        page = await browser.new_page()
        await page.goto("http://127.0.0.1:PORT/")
        await page.wait_for("document.title === 'x'", timeout=10)
        await page.close()       # before the server stops: its event stream goes with it
    finally:
        await browser.close()    # Browser.close, SIGKILL after a grace period, profile removed

The browser's home, configuration and cache are inside its temporary
profile, so nothing it writes (crash reports included) is left behind.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, error, protocol

FLAGS = [
    "--headless",
    "--no-sandbox",  # as root in a container the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # else it calls Google's hosts at start
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    # not --disable-crashpad-for-testing: every renderer then dies at once
]


class CDPError(Exception):
    pass


class _Pipe(protocol.ProcessProtocol):
    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.buffer = b""
        self.stderr = b""
        self.ended: defer.Deferred = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 4:
            self.buffer += data
            while b"\0" in self.buffer:
                message, self.buffer = self.buffer.split(b"\0", 1)
                self.browser._message(json.loads(message))
        elif fd == 2:
            self.stderr = (self.stderr + data)[-20000:]  # the tail, to show when it fails

    def processEnded(self, reason) -> None:
        self.browser._ended(reason)
        self.ended.callback(None)


class Browser:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._ids = 0
        self._pending: dict[int, defer.Deferred] = {}
        self._listeners: list = []
        self.pipe = _Pipe(self)
        self.profile = tempfile.mkdtemp(prefix="cdp-profile-")
        self.closed = False
        self.version = ""

    @classmethod
    async def launch(cls, executable: str, timeout: float = 30.0) -> Browser:
        from twisted.internet import reactor

        self = cls(reactor)
        env = dict(os.environ)
        for name, sub in (("HOME", "home"), ("XDG_CONFIG_HOME", "config"), ("XDG_CACHE_HOME", "cache")):
            env[name] = os.path.join(self.profile, sub)
            os.makedirs(env[name])
        args = [executable, *FLAGS, f"--user-data-dir={os.path.join(self.profile, 'data')}", "about:blank"]
        try:
            # its fd 3 is its input (we write), fd 4 its output (we read)
            self.transport = reactor.spawnProcess(
                self.pipe, executable, args, env=env, childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"}
            )
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.pid = self.transport.pid
        try:
            self.version = (await self.send("Browser.getVersion", timeout=timeout))["product"]
        except BaseException:
            await self.close()
            raise
        return self

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0
    ):
        if self.closed:
            return defer.fail(CDPError(f"{method}: the browser has exited"))
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        d: defer.Deferred = defer.Deferred()
        self._pending[self._ids] = d
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        d.addTimeout(timeout, self.reactor)
        d.addBoth(self._forget, self._ids)
        return d

    def _forget(self, result: Any, message_id: int) -> Any:
        self._pending.pop(message_id, None)
        return result

    def _message(self, message: dict) -> None:
        if "id" in message:
            d = self._pending.pop(message["id"], None)
            if d is None or d.called:
                return
            if "error" in message:
                d.errback(CDPError(message["error"]))
            else:
                d.callback(message.get("result", {}))
        else:
            for listener in list(self._listeners):
                listener(message)

    def _ended(self, reason) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for d in pending.values():
            if not d.called:
                d.errback(
                    CDPError(f"chromium exited: {reason.value}\n{self.pipe.stderr.decode(errors='replace')}")
                )

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"], target["targetId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    async def close(self, grace: float = 5.0) -> None:
        """Ask it to close; kill it if it has not after ``grace`` seconds; remove its profile."""
        if not self.pipe.ended.called:
            if not self.closed:
                try:
                    await self.send("Browser.close", timeout=grace)
                except Exception:  # noqa: BLE001 -- it is killed below if it did not close
                    pass
            if not self.pipe.ended.called:
                killer = self.reactor.callLater(grace, self._kill)
                await self.pipe.ended
                if killer.active():
                    killer.cancel()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _kill(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


class Page:
    """One tab; what its scripts log is kept in ``console``."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser, self.session, self.target = browser, session, target
        self.console: list[str] = []
        browser._listeners.append(self._event)

    def _event(self, message: dict) -> None:
        if message.get("sessionId") != self.session:
            return
        if message["method"] == "Runtime.consoleAPICalled":
            args = message["params"]["args"]
            self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in args))
        elif message["method"] == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(message["params"]["exceptionDetails"])[:500])

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0):
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    async def close(self) -> None:
        self.browser._listeners.remove(self._event)
        if not self.browser.closed:
            await self.browser.send("Target.closeTarget", {"targetId": self.target}, timeout=10)

    async def goto(self, url: str, timeout: float = 20.0) -> None:
        """Navigate, and wait until the document has loaded."""
        result = await self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise CDPError(f"{url}: {result['errorText']}")
        await self.wait_for("document.readyState === 'complete'", timeout=timeout)

    async def evaluate(self, expression: str, timeout: float = 20.0) -> Any:
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 20.0) -> defer.Deferred:
        """Until the JavaScript ``condition`` is true: looked at in the page every 50 ms
        (one round trip in all), failing with the condition's text after ``timeout``."""
        failure = json.dumps(f"timed out after {timeout:g}s waiting for {condition}")
        expression = f"""new Promise((resolve, reject) => {{
            const deadline = Date.now() + {int(timeout * 1000)};
            const tick = () => {{
                let ok = false;
                try {{ ok = !!({condition}); }} catch (e) {{}}
                if (ok) return resolve(true);
                if (Date.now() > deadline) return reject(new Error({failure}));
                setTimeout(tick, 50);
            }};
            tick();
        }})"""
        return defer.ensureDeferred(self.evaluate(expression, timeout=timeout + 10))

    async def screenshot(self, path: str) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
