"""``smtppeer send`` and the control socket meet SMTP's rule (issue 13, item 1), end to end.

A real ``twistd smtppeer`` relays ``relay.test`` to a real next hop on
loopback (``rawsink``, which keeps the raw bytes it read).  The issue's
input — a bare CR in front of a dot, then a command — used to reach the
next hop as ``first\\r.\\r\\nMAIL FROM:...``; now the admin command refuses
it with the line and the reason, the service refuses it too when asked over
its control socket directly, nothing is queued, and a good message still
arrives exactly as SMTP requires (CRLF, dot-stuffed).
"""

from __future__ import annotations

import base64

import pytest

from smtppeer.service import control

from .conftest import smtppeer
from .rawsink import RawSink


@pytest.fixture
def sink():
    s = RawSink()
    yield s
    s.close()


@pytest.fixture
def relaying_peer(twistd_peer, sink):
    return twistd_peer(
        "--route", f"relay.test=tcp:host=127.0.0.1:port={sink.port}", "--retry-interval", "3600"
    )


def queued(peer) -> list[str]:
    return sorted(p.name for p in (peer.data_dir / "spool" / "queue").glob("*.eml"))


SMUGGLE = b"Subject: s\n\nfirst\r.\r\nMAIL FROM:<x@y>\r\n"  # the printf


@pytest.mark.parametrize(
    ("stdin", "why"),
    [
        (SMUGGLE, b"line 3: a bare CR or LF"),
        (b"Subject: s\n\nok\n\x00.\nMAIL FROM:<x@y>\n", b"line 4: a NUL octet"),
        (b"Subject: s\n\n" + b"y" * 1200 + b"\n", b"line 3: longer than 998 octets"),
        (b"Subject: s\n\nends in a bare CR\r", b"line 3: a bare CR or LF"),
    ],
    ids=["bare CR", "NUL", "long line", "CR at the end"],
)
def test_send_refuses_what_smtp_would_refuse_and_the_next_hop_gets_only_good_mail(
    relaying_peer, sink, stdin, why
):
    data = str(relaying_peer.data_dir)
    refused = smtppeer("send", "-d", data, "-f", "a@example.test", "x@relay.test", stdin=stdin)
    assert refused.returncode == 1
    assert refused.stderr.startswith(b"smtppeer send: message refused: " + why), refused.stderr
    assert queued(relaying_peer) == []
    # A good message after it is the only one the next hop ever sees.
    good = smtppeer(
        "send", "-d", data, "-f", "a@example.test", "x@relay.test", stdin=b"Subject: ok\n\nfine\n"
    )
    assert good.returncode == 0, good.stderr
    [message] = sink.wait_for_messages(1)
    assert message.endswith(b"\r\nfine\r\n.\r\n") and b"first" not in message
    assert b"\r." not in message.replace(b"\r\n.", b"")  # no CR in front of a dot but a CRLF's


def test_the_control_socket_refuses_it_too(relaying_peer, sink):
    """Another client of the socket, without the admin command's checks: the service checks."""
    data = str(relaying_peer.data_dir)
    for message, why in [
        (b"Subject: s\r\n\r\nfirst\r.\r\nMAIL FROM:<x@y>\r\n", "line 3: a bare CR or LF"),
        (b"Subject: s\n\nLF only\n", "line 1: a bare CR or LF"),
        (b"Subject: s\r\n\r\n\x00.\r\n", "line 3: a NUL octet"),
        (b"Subject: s\r\n\r\nno final CRLF", "line 3: does not end with CRLF"),
    ]:
        payload = {"command": "send", "from": "a@example.test", "to": ["x@relay.test"]}
        answer = control.request(data, {**payload, "message": base64.b64encode(message).decode()})
        assert answer["ok"] is False and answer["error"].startswith(f"message refused: {why}"), answer
    assert queued(relaying_peer) == []
    assert sink.messages == []


def test_line_ends_are_made_crlf_and_dots_reach_the_next_hop_stuffed(relaying_peer, sink):
    data = str(relaying_peer.data_dir)
    stdin = b"Subject: dots\n\n.\n..\n.x\r\nlast\n"  # LF and CRLF line ends are both line ends
    done = smtppeer("send", "-d", data, "-f", "a@example.test", "x@relay.test", stdin=stdin)
    assert done.returncode == 0, done.stderr
    [message] = sink.wait_for_messages(1)
    header, _, body = message.partition(b"\r\n\r\n")
    assert b"\r\nSubject: dots\r\n" in header + b"\r\n", message
    assert body == b"..\r\n...\r\n..x\r\nlast\r\n.\r\n", message
