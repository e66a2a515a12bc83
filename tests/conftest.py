"""Shared fixtures: a clean-reactor check, real twistd processes, external tools.

Tests that need an external program (swaks, Postfix's smtp-source...) skip
when it is missing on a developer's machine, but fail under ``CI=true``:
CI installs them, and a silent skip there would hide a broken interop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests/test_testing.py runs the pytest plugin in a pytest of its own

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of an external tool, or skip (fail under CI) when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        message = f"{name} is not installed (apt-get install it; .ci/run does)"
        if IN_CI:
            pytest.fail(message + " -- CI must not skip interop tests")
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _bounded(
    predicate: Callable[[], object], timeout: float, what: str, detail: Callable[[], object] | None
) -> Callable[[], object]:
    """One check of a wait of at most ``timeout`` s from now: ``predicate()``'s value when
    true, else None while there is time left, else AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout

    def check() -> object:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout}s waiting for {what}"
            raise AssertionError(message if detail is None else f"{message}: {detail()}")
        return None

    return check


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    what: str = "condition",
    detail: Callable[[], object] | None = None,
):
    """Poll ``predicate`` (bounded) until it returns something true; return that.

    Blocks the calling thread: for tests that drive real processes, or a thread
    of their own.  On timeout raises AssertionError naming ``what`` (and, with
    ``detail``, what ``detail()`` says about the state at that moment)."""
    check = _bounded(predicate, timeout, what, detail)
    while not (result := check()):
        time.sleep(0.05)
    return result


async def wait_until_async(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    what: str = "condition",
    detail: Callable[[], object] | None = None,
):
    """``wait_until`` for tests that run inside the reactor: polls without blocking it
    (``task.deferLater``), so the connections it waits on go on meanwhile.

    From an ``inlineCallbacks`` test: ``yield defer.ensureDeferred(wait_until_async(...))``."""
    from twisted.internet import reactor, task

    check = _bounded(predicate, timeout, what, detail)
    while not (result := check()):
        await task.deferLater(reactor, 0.01, lambda: None)
    return result


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (by default this process's environment) with ``PYTHONPATH`` set to this
    checkout, so that ``python -m smtppeer`` runs the code under test, installed or not."""
    return {**(os.environ if env is None else env), "PYTHONPATH": str(REPO)}


def smtppeer(
    *args: str,
    stdin: bytes | str | None = None,
    text: bool = False,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run the admin command, ``python -m smtppeer ARGS``, from this checkout; its output
    captured (``text`` for str, else bytes; ``stdin`` of the same kind, empty by default:
    it never reads the terminal).  ``env`` replaces this process's environment
    (``PYTHONPATH`` is always the checkout)."""
    if stdin is None:
        stdin = "" if text else b""
    return subprocess.run(
        [sys.executable, "-m", "smtppeer", *args],
        input=stdin,
        capture_output=True,
        text=text,
        cwd=cwd,
        env=cli_env(env),
        timeout=timeout,
        check=False,
    )


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def end_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send ``sig`` (unless it has ended) and wait; SIGKILL if it is not gone in ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


class TwistdProcess:
    """``twistd -n smtppeer ...`` as a real process on a loopback port."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        hostname: str = "peer.test",
        config: Path | None = None,
        port: int = 0,
    ) -> None:
        """With ``config`` the process runs on that file alone (its listeners, its
        data_dir); ``port`` is then the listener to wait for."""
        self.port = port or free_port()
        self.data_dir = data_dir
        self.hostname = hostname
        self.log_path = data_dir.parent / f"twistd-{self.port}.log"
        if config is not None:
            self.args = [*TWISTD, "-n", "--pidfile=", "smtppeer", "--config", str(config), *extra]
            self.proc: subprocess.Popen | None = None
            return
        self.args = [
            *TWISTD,
            "-n",
            "--pidfile=",
            "smtppeer",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--hostname",
            hostname,
            "--data-dir",
            str(data_dir),
            *extra,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> TwistdProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args, cwd=self.data_dir.parent, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"twistd did not start:\n{self.log()}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        end_process(self.proc, sig)
        self._log.close()
        code, self.proc = self.proc.returncode, None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def maildir(self, domain: str, user: str) -> Path:
        return self.data_dir / "mail" / domain / user


@pytest.fixture
def twistd_peer(tmp_path):
    """Start ``twistd -n smtppeer`` (extra args via ``twistd_peer(...)``); always stopped."""
    started: list[TwistdProcess] = []

    def start(*extra: str, hostname: str = "peer.test") -> TwistdProcess:
        data = tmp_path / f"data{len(started)}"
        data.mkdir()
        proc = TwistdProcess(data, *extra, hostname=hostname)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def twistd_config(tmp_path):
    """Start ``twistd -n smtppeer --config FILE`` from TOML text; always stopped.

    ``{data_dir}`` in the text is replaced by a fresh directory; ``port`` is the
    listener to wait for."""
    started: list[TwistdProcess] = []

    def start(text: str, port: int, name: str = "peer") -> TwistdProcess:
        data = tmp_path / f"{name}-data"
        data.mkdir()
        config = tmp_path / f"{name}.toml"
        config.write_text(text.replace("{data_dir}", str(data)))
        proc = TwistdProcess(data, config=config, port=port)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def example_certs(tmp_path, monkeypatch):
    """The lab certificate the examples name (``smtppeer make-cert``), in a working
    directory of their own, as the examples' header says to make it."""
    from smtppeer.peer.tls import make_self_signed

    make_self_signed(
        "provider.example.org", str(tmp_path / "provider-cert.pem"), str(tmp_path / "provider-key.pem")
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def spool(tmp_path):
    """A real spool under tmp_path with its committer, stopped afterwards."""
    import pytest_twisted

    from smtppeer.store.committer import Committer
    from smtppeer.store.spool import Spool

    committer = Committer()
    yield Spool(str(tmp_path / "spool"), committer)
    stopped = committer.stopService()
    if stopped is not None:
        pytest_twisted.blockon(stopped)


@pytest.fixture
def logged():
    """The text of every log event while the test runs (``twisted.logger``, in this process)."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture(autouse=True)
def clean_reactor(request):
    """Fail a test that leaves delayed calls or open sockets in the reactor."""
    from twisted.internet import reactor

    def state():
        readers = {r for r in reactor.getReaders() if "Waker" not in type(r).__name__}
        writers = {w for w in reactor.getWriters() if "Waker" not in type(w).__name__}
        return readers | writers, set(reactor.getDelayedCalls())

    before_fds, before_calls = state()
    yield
    after_fds, after_calls = state()
    leaked_fds = after_fds - before_fds
    leaked_calls = [c for c in after_calls - before_calls if c.active()]
    for call in leaked_calls:
        call.cancel()
    assert not leaked_fds, f"test left sockets open in the reactor: {leaked_fds}"
    assert not leaked_calls, f"test left delayed calls: {leaked_calls}"
