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

import email
import email.policy
import smtplib

import pytest

from .conftest import TwistdProcess, wait_until
from .daemons import delivered as maildir_messages
from .daemons import peer_with_tls
from .exim import PrivateExim, require_exim

pytestmark = pytest.mark.interop

HOSTNAME = "peer.test"


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """The receiving smtppeer, with STARTTLS offered."""
    require_exim()
    with peer_with_tls(tmp_path_factory.mktemp("exim-peer"), HOSTNAME) as proc:
        yield proc


@pytest.fixture
def exim(peer):
    with PrivateExim(smarthost=peer.port) as exim:
        yield exim


def delivered(peer: TwistdProcess, user: str) -> list[bytes]:
    return maildir_messages(peer, HOSTNAME, user)


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


def test_8bit_mail_to_a_strict_exim_without_8bitmime_or_pipelining(peer, exim, twistd_peer):
    """smtppeer -> Exim (-DNO8BIT -DNOPIPE) -> smtppeer: the first hop converts the 8-bit
    message to 7-bit MIME and says one command at a time (Exim answers anything sent too
    soon with "554 SMTP synchronization error"); Exim relays it on, half-closing."""
    port = exim.start_daemon("NO8BIT", "NOPIPE", "PLAIN")
    route = f"{HOSTNAME}=tcp:host=127.0.0.1:port={port}"
    a = twistd_peer("--domain", "a.test", "--route", route, hostname="a.test")
    text = "Grüße über Exim\r\n"
    message = f"From: <s@a.test>\r\nSubject: 8-bit via Exim\r\n\r\n{text}".encode()
    users = ["exim-8bit-1", "exim-8bit-2"]
    with smtplib.SMTP("127.0.0.1", a.port, timeout=30) as s:
        assert s.sendmail("s@a.test", [f"{u}@{HOSTNAME}" for u in users], message, ["BODY=8BITMIME"]) == {}
    for user in users:
        [copy] = wait_until(lambda user=user: delivered(peer, user), what=f"the delivery to {user}")
        assert copy.isascii(), copy
        msg = email.message_from_bytes(copy, policy=email.policy.default)
        assert msg["Content-Transfer-Encoding"] == "quoted-printable"
        assert msg.get_content() == text
        assert len(msg.get_all("Received")) == 3  # a.test, Exim, and the last hop
    log = exim.mainlog()
    assert "synchronization error" not in log, log
    assert log.count(" <= s@a.test ") == 1 and " == " not in log, log
    wait_until(lambda: "1 of 1 messages delivered, clean" in a.log(), what="the first hop's session line")
