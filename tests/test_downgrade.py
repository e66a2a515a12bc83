"""``relay/downgrade.py``: 8-bit mail as 7-bit MIME, or the reason it cannot be (RFC 6152 §3).

Every conversion is read back with the ``email`` package: the result must be
7-bit, and each part must decode to exactly the octets it had.
"""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtppeer.relay import downgrade
from smtppeer.relay.downgrade import Unconvertible, is_7bit, to_7bit

HEAD = b"Received: from x.test\r\n\tby peer.test; Thu, 1 Jan 2026 00:00:00 +0000\r\nFrom: <a@x.test>\r\n"


def read(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def test_a_7bit_message_is_returned_as_it_is():
    message = HEAD + b"Subject: plain\r\n\r\nASCII only.\r\n"
    assert to_7bit(message) is message


def test_8bit_text_without_mime_becomes_text_plain_utf8_quoted_printable():
    text = "Grüße – 10 €\r\nsecond line with trailing space \r\n"
    out = to_7bit(HEAD + b"Subject: s\r\n\r\n" + text.encode())
    assert is_7bit(out)
    assert out.startswith(HEAD + b"Subject: s\r\nMIME-Version: 1.0\r\n"), "headers kept, in order"
    msg = read(out)
    assert (msg.get_content_type(), msg.get_content_charset()) == ("text/plain", "utf-8")
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content() == text
    assert all(len(line) <= 76 for line in lines(out.split(b"\r\n\r\n", 1)[1]))


def test_8bit_text_that_is_not_utf8_is_unknown_8bit_and_keeps_its_octets():
    body = b"caf\xe9 \x85 \xff\r\n"
    out = to_7bit(HEAD + b"\r\n" + body)
    msg = read(out)
    assert msg.get_param("charset") == "unknown-8bit"
    assert msg.get_payload(decode=True) == body


MULTIPART = (
    HEAD + b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
    b"This is a multi-part message.\r\n--B\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"d\xe9j\xe0 vu\r\n--B\r\n"
    b"Content-Type: text/plain\r\n\r\nan ASCII part, left alone\r\n--B\r\n"
    b'Content-Type: image/x-raw\r\nContent-Disposition: attachment; filename="x.raw"\r\n'
    b"Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\x80\xff\r\n--B--\r\n"
)


def test_multipart_parts_are_reencoded_one_by_one_and_the_rest_is_kept():
    out = to_7bit(MULTIPART)
    assert is_7bit(out)
    msg = read(out)
    assert msg.get_boundary() == "B" and msg["Content-Transfer-Encoding"] == "7bit"
    assert msg.preamble.strip() == "This is a multi-part message."
    latin, ascii_part, raw = msg.iter_parts()
    assert latin["Content-Transfer-Encoding"] == "quoted-printable"
    assert latin.get_content_charset() == "iso-8859-1" and latin.get_payload(decode=True) == b"d\xe9j\xe0 vu"
    assert b"\r\n--B\r\nContent-Type: text/plain\r\n\r\nan ASCII part, left alone\r\n--B\r\n" in out
    assert raw["Content-Transfer-Encoding"] == "base64" and raw.get_filename() == "x.raw"
    assert raw.get_payload(decode=True) == b"\x00\x01\x80\xff"


def test_an_attached_message_is_converted_inside_and_declared_7bit():
    inner = b"Subject: inner\r\n\r\nna\xc3\xafve\r\n"
    message = (
        HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + inner + b"--B--\r\n"
    )
    out = to_7bit(message)
    assert is_7bit(out)
    [attached] = read(out).iter_parts()
    assert attached["Content-Transfer-Encoding"] == "7bit"
    [inner_msg] = attached.get_payload()
    assert inner_msg["Subject"] == "inner" and inner_msg.get_content() == "naïve"  # CRLF: the delimiter's


def test_a_signed_part_that_is_7bit_is_left_exactly_as_it_was():
    signed = (
        b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary="S"\r\n\r\n'
        b"--S\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--S\r\n"
        b"Content-Type: application/pgp-signature\r\n\r\nSIG\r\n--S--\r\n"
    )
    message = (
        HEAD
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
        + signed
        + b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xc3\xa9\r\n--B--\r\n"
    )
    out = to_7bit(message)
    assert is_7bit(out) and signed in out


@pytest.mark.parametrize(
    ("content_type", "why"),
    [
        ('multipart/signed; protocol="application/pgp-signature"; boundary="S"', "multipart/signed"),
        ('multipart/encrypted; protocol="application/pgp-encrypted"; boundary="S"', "multipart/encrypted"),
    ],
)
def test_8bit_content_under_a_signature_is_unconvertible(content_type, why):
    message = (
        HEAD + b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n--S\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nsign\xc3\xa9\r\n--S\r\n"
        b"Content-Type: application/octet-stream\r\n\r\nSIG\r\n--S--\r\n"
    )
    with pytest.raises(Unconvertible, match=why):
        to_7bit(message)


def test_message_partial_is_never_reencoded():
    message = HEAD + b"MIME-Version: 1.0\r\nContent-Type: message/partial; id=x; number=1\r\n\r\n\xe9\r\n"
    with pytest.raises(Unconvertible, match="message/partial"):
        to_7bit(message)


def test_8bit_octets_in_a_preamble_are_unconvertible():
    message = (
        HEAD + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"pr\xe9ambule\r\n--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--\r\n"
    )
    with pytest.raises(Unconvertible, match="preamble"):
        to_7bit(message)


def test_a_message_over_the_size_limit_is_unconvertible(monkeypatch):
    monkeypatch.setattr(downgrade, "MAX_SIZE", 100)
    with pytest.raises(Unconvertible, match="larger"):
        to_7bit(HEAD + b"\r\n" + b"\xe9" * 101 + b"\r\n")
    assert to_7bit(b"x" * 200) == b"x" * 200, "a 7-bit message is never refused"


def test_8bit_header_fields_become_encoded_words():
    message = (
        b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nX-Latin: caf\xe9\r\nFrom: J\xc3\xb6rg <j@x.test>\r\n"
        b"To: <u@y.test>\r\n\r\nbody\r\n"
    )
    out = to_7bit(message)
    assert is_7bit(out)
    assert b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" in out
    assert b"To: <u@y.test>\r\n" in out, "a 7-bit field is written as it came"
    msg = read(out)
    assert msg["Subject"] == "Grüße"
    assert msg["From"].addresses[0].addr_spec == "j@x.test"
    assert msg.get_content() == "body\r\n"


def test_a_message_whose_only_8bit_is_a_header_field_keeps_its_body_as_it_is():
    out = to_7bit(b"Subject: caf\xc3\xa9\r\n\r\nASCII body\r\n")
    assert out == b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nASCII body\r\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=8))
def test_any_8bit_text_round_trips(body_lines):
    body = b"".join(line + b"\r\n" for line in body_lines) + b"\xe9\r\n"
    out = to_7bit(b"Subject: t\r\n\r\n" + body)
    assert is_7bit(out)
    assert read(out).get_payload(decode=True) == body
