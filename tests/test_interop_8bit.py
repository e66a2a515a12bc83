"""8-bit mail relayed to a next hop without 8BITMIME (issue 14, item 3).

RFC 6152 §3: a message that is 8-bit (declared ``BODY=8BITMIME``, or with
octets above 127) may go to a server that does not offer 8BITMIME only
converted to 7-bit MIME, or it is returned.  smtppeer converts what MIME
allows (text as quoted-printable, anything else as base64; a message without
MIME structure becomes ``text/plain``) and bounces, with ``5.6.3``, what it
cannot convert without breaking it (a signed part; more than
``downgrade.MAX_SIZE``).  The next hop is Postfix's ``smtp-sink -8`` (no
8BITMIME), which dumps what it received; ``twistd smtppeer`` relays to it.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import smtplib

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from smtppeer.engine.sender import Envelope
from smtppeer.peer.hooks import ReceiverHooks, SenderJob
from smtppeer.relay.downgrade import to_7bit

from .conftest import wait_until
from .peerutil import connect_sender
from .test_interop_sink import dump_parts, smtp_sink  # noqa: F401 - the fixture

pytestmark = pytest.mark.interop

UTF8_TEXT = "Grüße aus Köln – 10 € pro Stück\r\nzweite Zeile\r\n"

PLAIN_8BIT = (
    b"From: <sender@a.test>\r\nTo: <u@sink.test>\r\nSubject: no MIME at all\r\n\r\n" + UTF8_TEXT.encode()
)

MULTIPART_8BIT = (
    b"From: <sender@a.test>\r\nTo: <u@sink.test>\r\nSubject: two parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n'
    b"preamble\r\n--XYZ\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"caf\xe9 cr\xe8me\r\n--XYZ\r\n"
    b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="b.bin"\r\n'
    b"Content-Transfer-Encoding: 8bit\r\n\r\n\x80\x81\xfe\xff binary-ish\r\n--XYZ--\r\n"
)

SIGNED_8BIT = (
    b"From: <sender@a.test>\r\nTo: <u@sink.test>\r\nSubject: signed\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256;'
    b' boundary="S"\r\n\r\n--S\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "signé\r\n".encode()
    + b"--S\r\nContent-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n"
    b"AAAA\r\n-----END PGP SIGNATURE-----\r\n--S--\r\n"
)


@pytest.fixture
def relay(twistd_peer, smtp_sink):  # noqa: F811
    sink = smtp_sink("-8", dump=True)
    a = twistd_peer(
        "--domain", "a.test", "--route", f"sink.test=tcp:host=127.0.0.1:port={sink.port}", hostname="a.test"
    )
    return a, sink


def inject(a, message: bytes, options=("BODY=8BITMIME",)) -> None:
    with smtplib.SMTP("127.0.0.1", a.port, timeout=30) as s:
        assert s.sendmail("sender@a.test", ["u@sink.test"], message, mail_options=list(options)) == {}


def received(sink, n: int = 1) -> list[tuple[dict, bytes]]:
    """The first ``n`` messages the sink dumped, once their files are written out
    (smtp-sink ends each message with one more empty line)."""

    def complete() -> list[bytes] | None:
        dumps = sink.dumps()
        done = len(dumps) >= n and all(b"\nReceived: " in d and d.endswith(b"\n\n") for d in dumps)
        return dumps if done else None

    return [dump_parts(d) for d in wait_until(complete, what="the sink's dumps")]


def seven_bit(data: bytes) -> bool:
    return data.isascii() and all(len(line) <= 998 for line in data.split(b"\n"))


def parse(message: bytes) -> email.message.EmailMessage:
    """A message as smtp-sink dumps it (LF line ends, one more LF at the end)."""
    return email.message_from_bytes(message[:-1].replace(b"\n", b"\r\n"), policy=email.policy.default)


@pytest.mark.parametrize("options", [("BODY=8BITMIME",), ()], ids=["declared", "undeclared"])
def test_8bit_text_without_mime_becomes_quoted_printable_text(relay, options):
    a, sink = relay
    inject(a, PLAIN_8BIT, options)
    [(records, message)] = received(sink)
    assert records["X-Mail-Args"] == ["<sender@a.test>"], "no BODY=8BITMIME to a server without 8BITMIME"
    assert seven_bit(message), message
    msg = parse(message)
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg["Subject"] == "no MIME at all" and "Received" in msg
    assert msg.get_content() == UTF8_TEXT


def test_8bit_mime_parts_are_reencoded_and_the_structure_kept(relay):
    a, sink = relay
    inject(a, MULTIPART_8BIT)
    [(records, message)] = received(sink)
    assert seven_bit(message), message
    msg = parse(message)
    assert msg.get_content_type() == "multipart/mixed" and msg.get_boundary() == "XYZ"
    text, attachment = msg.iter_parts()
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_content_charset() == "iso-8859-1", "a declared charset is kept"
    assert text.get_payload(decode=True) == b"caf\xe9 cr\xe8me"  # the CRLF is the delimiter's
    assert attachment["Content-Transfer-Encoding"] == "base64"
    assert attachment.get_filename() == "b.bin"
    assert attachment.get_payload(decode=True) == b"\x80\x81\xfe\xff binary-ish"


def test_a_message_that_is_7bit_goes_as_it_is(relay):
    a, sink = relay
    body = b"Subject: plain ascii\r\n\r\njust ASCII, though declared 8BITMIME\r\n"
    inject(a, body)
    [(records, message)] = received(sink)
    assert records["X-Mail-Args"] == ["<sender@a.test>"]
    assert message.endswith(body.replace(b"\r\n", b"\n") + b"\n")
    assert b"Content-Transfer-Encoding" not in message


def test_a_signed_8bit_message_is_returned_with_5_6_3(relay):
    """Re-encoding a signed part would break its signature: the message is bounced."""
    a, sink = relay
    inject(a, SIGNED_8BIT)
    [path] = wait_until(
        lambda: sorted((a.maildir("a.test", "sender") / "new").glob("*")), what="the bounce for the sender"
    )
    dsn = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    status = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status").as_string()
    assert "Status: 5.6.3" in status and "Action: failed" in status, status
    assert "Conversion required but not supported" in status
    assert "signed" in status
    assert sink.dumps() == [], "nothing of it reached the next hop"


# -- the connection's part: a job converts, or the message is refused --------------------------------


@pytest_twisted.inlineCallbacks
def test_a_job_without_a_converter_refuses_8bit_for_a_7bit_server(smtp_sink):  # noqa: F811
    sink = smtp_sink("-8", dump=True)
    eight = Envelope("a@a.test", ["u@b.test"], PLAIN_8BIT, params={"BODY": "8BITMIME"}, tag="8")
    seven = Envelope("a@a.test", ["v@b.test"], b"Subject: ascii\r\n\r\nx\r\n", tag="7")
    job = SenderJob([eight, seven])
    peer = yield connect_sender("sender.test", ReceiverHooks(), job, sink.port)
    summary = yield peer.done.addTimeout(60, reactor)
    assert summary.clean, summary
    refused, sent = job.results
    assert refused.envelope is eight and [str(r)[:9] for r in refused.results.values()] == ["554 5.6.3"]
    assert sent.delivered == ["v@b.test"]
    [(records, _)] = received(sink)
    assert records["X-Rcpt-Args"] == ["<v@b.test>"], "nothing 8-bit went out"


@pytest_twisted.inlineCallbacks
def test_a_jobs_converter_is_asked_and_its_copy_sent_in_place(smtp_sink):  # noqa: F811
    sink = smtp_sink("-8", dump=True)
    eight = Envelope("a@a.test", ["u@b.test"], PLAIN_8BIT, params={"BODY": "8BITMIME"})
    asked = []

    def convert(envelope):
        asked.append(envelope)
        d = defer.Deferred()  # as the relay's does, later
        copy = dataclasses.replace(envelope, body=to_7bit(envelope.body), params={})
        reactor.callLater(0.05, d.callback, copy)
        return d

    job = SenderJob([eight], convert=convert)
    peer = yield connect_sender("sender.test", ReceiverHooks(), job, sink.port)
    summary = yield peer.done.addTimeout(60, reactor)
    assert summary.clean and asked == [eight]
    [result] = job.results
    assert result.envelope is eight and result.delivered == ["u@b.test"]
    [(records, message)] = received(sink)
    assert seven_bit(message) and parse(message).get_content() == UTF8_TEXT
