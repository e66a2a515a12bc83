"""Exim 4.96, the peer that half-closes, both ways (issue 14).

As a client Exim writes the last line of the body, the final dot and
``QUIT`` in one write and, in clear, shuts down its sending side at once,
before it has read the ``250`` for the dot; over TLS it waits for the
``221`` and then sends its ``close_notify``.  A server that took the FIN for
the end of the connection leaves Exim to defer a message it already
committed, and the next queue run delivers it twice.  Here Exim
(``tests/exim.py``, unpacked from Debian's package) delivers to a real
``twistd smtppeer``; the Maildir is counted after a forced queue run too.

As a server Exim is strict where it is told to be: without PIPELINING
(``-DNOPIPE``) it enforces synchronisation, and without 8BITMIME
(``-DNO8BIT``) it is a next hop that 8-bit mail must be converted for.
"""

from __future__ import annotations

import pytest

from .conftest import TwistdProcess, free_port, wait_until
from .exim import PrivateExim, require_exim
from .trustlab import make_cert

pytestmark = pytest.mark.interop

HOSTNAME = "peer.test"

PEER = """
hostname = "peer.test"
data_dir = "{data_dir}"

[tls]
certificate = "{cert}"
key = "{key}"

[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"

[domains."peer.test"]
"""


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """The receiving smtppeer, with STARTTLS offered."""
    require_exim()
    base = tmp_path_factory.mktemp("exim-peer")
    cert, key = make_cert(base, HOSTNAME)
    port = free_port()
    data = base / "data"
    data.mkdir()
    config = base / "peer.toml"
    config.write_text(PEER.format(cert=cert, key=key, port=port, data_dir=data))
    proc = TwistdProcess(data, config=config, port=port).start()
    try:
        yield proc
    finally:
        proc.stop()
    log = proc.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


@pytest.fixture
def exim(peer):
    with PrivateExim(smarthost=peer.port) as exim:
        yield exim


def delivered(peer: TwistdProcess, user: str) -> list[bytes]:
    new = peer.maildir(HOSTNAME, user) / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


@pytest.mark.parametrize(("macro", "tls"), [("PLAIN", False), ("REQTLS", True)], ids=["clear", "starttls"])
def test_exim_delivers_once_although_it_half_closes(peer, exim, macro, tls):
    user = f"exim-{macro.lower()}"
    message = f"Subject: from Exim ({macro})\n\nExim ends with . and QUIT, then its side.\n".encode()
    done = exim.send("sender@exim.test", [f"{user}@{HOSTNAME}"], message, macro)
    assert done.returncode == 0, done.stderr
    log = exim.mainlog()
    assert f"=> {user}@{HOSTNAME}" in log and "Completed" in log, log
    assert " == " not in log and "closed connection in response to end of data" not in log, log
    assert (" X=TLS" in log) is tls, log
    assert exim.queued() == 0, "Exim has nothing left to retry"
    [copy] = wait_until(lambda: delivered(peer, user), what="the delivery")
    assert f"Subject: from Exim ({macro})".encode() in copy
    # A forced queue run sends nothing again: the message arrived once.
    assert exim.queue_run(macro).returncode == 0
    assert len(delivered(peer, user)) == 1
