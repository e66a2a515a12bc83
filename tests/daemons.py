"""What the interop tests share about the servers they run: start one in a process
group of its own and wait (boundedly) until it listens; stop the whole group; a
``twistd smtppeer`` with a certificate, for real clients to deliver to."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .conftest import TwistdProcess, free_port
from .trustlab import make_cert


def listening(port: int) -> bool:
    """Something listens on 127.0.0.1:port (read from /proc: no connection is made,
    so a forking daemon starts no session for the check)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:])


def start_group(argv: list[str], port: int, stdout, what: Callable[[], str], timeout: float = 20.0):
    """``argv`` in a new session (its own process group), once it listens on ``port``;
    ``what()`` explains a start that failed (its log)."""
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            raise RuntimeError(f"{argv[0]} did not start:\n{what()}")
        time.sleep(0.02)
    return proc


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group a daemon leads (a child serving a session would
    outlive its parent otherwise), then SIGKILL to whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


PEER_WITH_TLS = """
hostname = "{hostname}"
data_dir = "{data_dir}"

[tls]
certificate = "{cert}"
key = "{key}"

[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"

[domains."{hostname}"]
{extra}
"""


@contextlib.contextmanager
def peer_with_tls(base: Path, hostname: str = "peer.test", extra: str = "") -> Iterator[TwistdProcess]:
    """A ``twistd smtppeer`` for ``hostname`` that offers STARTTLS (a lab certificate),
    with ``extra`` TOML; stopped at the end, and its log must show no error."""
    cert, key = make_cert(base, hostname)
    port = free_port()
    data = base / "data"
    data.mkdir()
    config = base / "peer.toml"
    text = PEER_WITH_TLS.format(hostname=hostname, data_dir=data, cert=cert, key=key, port=port, extra=extra)
    config.write_text(text)
    proc = TwistdProcess(data, config=config, port=port).start()
    try:
        yield proc
    finally:
        proc.stop()
    log = proc.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


def delivered(proc: TwistdProcess, domain: str, user: str) -> list[bytes]:
    """The messages in ``user@domain``'s Maildir (``new/``), oldest first."""
    new = proc.maildir(domain, user) / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []
