"""DSN generation (smtppeer.relay.bounce): structure, RFC 3464 fields, and robustness against bad input.

Every DSN is parsed back with the email package's modern parser, as a
receiving mail client would, rather than compared as text.
"""

from __future__ import annotations

import email
import email.policy
import quopri
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtppeer.relay.bounce import FailedRecipient, bounce_allowed, build_dsn

ARRIVAL = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW = datetime(2024, 3, 6, 12, 30, 0, tzinfo=UTC)

ORIGINAL = (
    b"Received: from client.example (client.example [192.0.2.7])\r\n"
    b"\tby mx.here.example with ESMTP id Q123\r\n"
    b"From: Alice <alice@sender.example>\r\n"
    b"To: bob@remote.example, carol@local.example\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <orig-1@sender.example>\r\n"
    b"\r\n"
    b"The body, which a headers-only return must not contain.\r\n"
)

BOB = FailedRecipient(
    address="bob@remote.example",
    status="5.1.1",
    remote_mta="mx.remote.example",
    diagnostic="550 5.1.1 <bob@remote.example>: no such user",
)
CAROL = FailedRecipient(address="carol@local.example", status="4.4.7", remote_mta=None, diagnostic=None)
DAVE = FailedRecipient(
    address="dave@other.example",
    status="5.7.1",
    remote_mta="mx.other.example",
    diagnostic="554 5.7.1 relaying denied",
    original_recipient="rfc822;Dave+2Bfilms@other.example",
)


def dsn(**overrides) -> bytes:
    kwargs = dict(
        reporting_mta="mx.here.example",
        sender="alice@sender.example",
        recipients=[BOB, CAROL, DAVE],
        original=ORIGINAL,
        queue_id="Q123",
        arrival=ARRIVAL,
        received_from="client.example",
        now=NOW,
    )
    kwargs.update(overrides)
    return build_dsn(**kwargs)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def parts(msg: EmailMessage) -> list[EmailMessage]:
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    return list(msg.iter_parts())


def status_groups(msg: EmailMessage) -> tuple[EmailMessage, list[EmailMessage]]:
    """The per-message field group and the per-recipient ones."""
    (status,) = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    groups = status.get_payload()
    return groups[0], groups[1:]


def assert_wire_format(data: bytes) -> None:
    """CRLF everywhere, no bare CR or LF, no line over 998 octets, no NUL (RFC 5321 §4.5.3.1.6)."""
    assert data.endswith(b"\r\n")
    assert b"\x00" not in data
    for line in data.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line, line[:80]
        assert len(line) <= 998


# --- structure ------------------------------------------------------------------------------------------


def test_top_level_headers():
    msg = parse(dsn(message_id_domain="ids.here.example"))
    (sender,) = msg["From"].addresses
    assert sender.addr_spec == "MAILER-DAEMON@mx.here.example"
    assert sender.display_name == "Mail Delivery System"
    assert [a.addr_spec for a in msg["To"].addresses] == ["alice@sender.example"]
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Date"].datetime == NOW
    assert re.fullmatch(r"<[^<>@\s]+@ids\.here\.example>", msg["Message-ID"])
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert not msg.defects


def test_three_parts_in_rfc3464_order():
    text, status, original = parts(parse(dsn()))
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert original.get_content_type() == "text/rfc822-headers"
    for part in (text, status, original):
        assert "MIME-Version" not in part


def test_per_message_fields():
    per_message, _ = status_groups(parse(dsn()))
    assert per_message["Reporting-MTA"] == "dns; mx.here.example"
    assert per_message["X-Queue-ID"] == "Q123"
    assert per_message["Received-From-MTA"] == "dns; client.example"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL


def test_per_recipient_fields_remote_and_local_failures():
    _, (bob, carol, dave) = status_groups(parse(dsn()))
    assert bob["Final-Recipient"] == "rfc822; bob@remote.example"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.remote.example"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.example>: no such user"
    assert "Original-Recipient" not in bob
    # Failed here (queue lifetime expired): no remote host, no remote reply.
    assert carol["Final-Recipient"] == "rfc822; carol@local.example"
    assert carol["Status"] == "4.4.7"
    assert carol["Action"] == "failed"
    assert "Remote-MTA" not in carol and "Diagnostic-Code" not in carol
    # The ORCPT's xtext (+2B is "+") is decoded (RFC 3461 §4.2).
    assert dave["Original-Recipient"] == "rfc822; Dave+films@other.example"
    assert dave["Status"] == "5.7.1"
    for group in (bob, carol, dave):
        assert email.utils.parsedate_to_datetime(group["Last-Attempt-Date"]) == NOW


def test_text_part_explains_each_recipient():
    text = parts(parse(dsn()))[0].get_content()
    assert "<bob@remote.example>: host mx.remote.example said: 550 5.1.1" in text
    assert "<carol@local.example>" in text and "4.4.7" in text
    assert "<dave@other.example>" in text and "relaying denied" in text
    assert "will not try again" in text
    assert "will not be retried" in text
    assert "Q123" in text


def test_naive_datetimes_are_taken_as_utc_and_zones_are_kept():
    msg = parse(dsn(arrival=datetime(2024, 3, 1, 12, 0), now=NOW.astimezone(timezone(timedelta(hours=2)))))
    per_message, _ = status_groups(msg)
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert msg["Date"].datetime == NOW
    assert msg["Date"].endswith("+0200")


def test_long_diagnostic_is_folded_not_encoded():
    reply = "550 5.7.1 " + " ".join(["blocked"] * 40) + " " + "x" * 300
    _, (group,) = status_groups(parse(dsn(recipients=[FailedRecipient("b@r.example", "5.7.1", "mx", reply)])))
    # No RFC 2047 encoded-words: DSN readers do not decode them.
    assert "=?" not in group["Diagnostic-Code"]
    assert group["Diagnostic-Code"] == "smtp; " + reply
    assert_wire_format(dsn(recipients=[FailedRecipient("b@r.example", "5.7.1", "mx", reply)]))


# --- wire format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"return_content": "full"},
        {"original": b"Subject: " + b"y" * 3000 + b"\nX-Long: " + b"z " * 1200 + b"\n\nbody\n"},
        {"recipients": [FailedRecipient("b@r.example", "5.0.0", "mx", "550 " + "q" * 5000)]},
        {"original": b"Subject: bare CR\rX: bare LF\nY: mixed\r\n\r\nbody\rline\n"},
    ],
)
def test_crlf_line_ends_and_line_length(overrides):
    data = dsn(**overrides)
    assert_wire_format(data)
    assert data.isascii()


# --- null reverse-path ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "<>", " <> ", "< >"])
def test_no_bounce_for_the_null_reverse_path(path):
    assert bounce_allowed(path) is False
    with pytest.raises(ValueError):
        dsn(sender=path)


@pytest.mark.parametrize("path", ["alice@sender.example", "<alice@sender.example>", "postmaster"])
def test_bounce_allowed_for_a_real_reverse_path(path):
    assert bounce_allowed(path) is True


# --- delay warnings -------------------------------------------------------------------------------------


def test_delayed_only_dsn():
    delayed = [
        FailedRecipient("b@r.example", "4.4.1", "mx.r.example", "421 4.4.1 try later", action="delayed"),
        FailedRecipient("c@r.example", "4.2.2", None, None, action="delayed"),
    ]
    msg = parse(dsn(recipients=delayed))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    _, groups = status_groups(msg)
    assert [g["Action"] for g in groups] == ["delayed", "delayed"]
    text = parts(msg)[0].get_content()
    assert "still trying" in text and "still being retried" in text
    assert "will not" not in text


def test_mixed_failed_and_delayed_is_a_bounce():
    delayed = FailedRecipient("b@r.example", "4.4.1", "mx", "421 later", action="delayed")
    msg = parse(dsn(recipients=[delayed, CAROL]))
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert [g["Action"] for g in status_groups(msg)[1]] == ["delayed", "failed"]


def test_unknown_action_is_a_programming_error():
    with pytest.raises(ValueError):
        FailedRecipient("b@r.example", "5.0.0", None, None, action="bounced")


@pytest.mark.parametrize(("action", "expected"), [("failed", "5.0.0"), ("delayed", "4.0.0")])
def test_malformed_status_becomes_a_generic_one(action, expected):
    bad = FailedRecipient("b@r.example", "550", "mx", "550 nope", action=action)
    assert status_groups(parse(dsn(recipients=[bad])))[1][0]["Status"] == expected


# --- returned content -----------------------------------------------------------------------------------


def test_headers_only_return_is_the_default():
    original = parts(parse(dsn()))[2]
    assert original.get_content_type() == "text/rfc822-headers"
    returned = original.get_content()
    assert "Subject: quarterly figures" in returned
    assert "\tby mx.here.example with ESMTP id Q123" in returned
    assert "Message-ID: <orig-1@sender.example>" in returned
    assert "The body" not in returned


def test_full_return_is_the_original_verbatim():
    data = dsn(return_content="full")
    original = parts(parse(data))[2]
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_content()
    assert inner["Subject"] == "quarterly figures"
    assert inner["Message-ID"] == "<orig-1@sender.example>"
    assert ORIGINAL in data  # byte for byte, headers not refolded


def test_full_return_keeps_long_header_lines_unfolded():
    signature = b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=s1; bh=" + b"A" * 120 + b"\r\n"
    original = signature + ORIGINAL
    assert original in dsn(return_content="full", original=original)


def test_full_return_multipart_original():
    original = (
        b"From: a@sender.example\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
        b"--XX\nContent-Type: text/plain\n\nhello\n--XX\nContent-Type: application/octet-stream\n"
        b"Content-Transfer-Encoding: base64\n\nAAEC\n--XX--\n"
    )
    inner = parts(parse(dsn(return_content="full", original=original)))[2].get_content()
    assert [p.get_content_type() for p in inner.iter_parts()] == ["text/plain", "application/octet-stream"]
    assert inner.get_boundary() == "XX"


def test_full_return_falls_back_to_headers_when_too_large():
    big = ORIGINAL + b"x" * 100 + b"\r\n" * 2000
    original = parts(parse(dsn(return_content="full", original=big, max_content=4096)))[2]
    assert original.get_content_type() == "text/rfc822-headers"
    assert "Subject: quarterly figures" in original.get_content()


def test_full_return_falls_back_to_headers_when_not_7bit():
    data = dsn(return_content="full", original=ORIGINAL + "caf\u00e9\r\n".encode())
    assert data.isascii()
    text, status, original = parts(parse(data))
    assert original.get_content_type() == "text/rfc822-headers"
    for part in (text, status, original):  # nothing left over from the abandoned full attempt
        assert len(part.get_all("Content-Description")) == 1


def test_large_original_is_fast_and_returns_headers():
    huge = ORIGINAL + (b"x" * 76 + b"\n") * 200_000  # about 15 MB
    for mode in ("headers", "full"):
        original = parts(parse(dsn(original=huge, return_content=mode)))[2]
        assert original.get_content_type() == "text/rfc822-headers"
        assert "Subject: quarterly figures" in original.get_content()


def test_header_section_is_cut_at_a_field_boundary():
    fields = b"".join(b"X-Filler-%04d: %s\r\n  continued\r\n" % (i, b"f" * 40) for i in range(500))
    original = parts(parse(dsn(original=fields + b"\r\nbody\r\n", max_content=2000)))[2]
    returned = original.get_content().replace("\r\n", "\n")
    assert 1000 < len(returned) <= 2000
    assert returned.startswith("X-Filler-0000: ")
    assert returned.endswith("\n  continued\n")  # the last field is whole


# --- bad input ------------------------------------------------------------------------------------------

BAD_ORIGINALS = {
    "empty": b"",
    "8-bit header and body": b"Subject: caf\xc3\xa9 \xff\xfe\r\nFrom: \xe9t\xe9@x\r\n\r\n\x80\x81\x82\r\n",
    "no separator": b"Subject: only headers\r\nFrom: a@b",
    "garbage": b"\x00\x01\x02 not a header at all \xff\n\n\n",
    "starts with a continuation": b"  folded first\r\nSubject: x\r\n\r\nbody",
    "mbox From_ line": b"From alice@sender.example Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n",
    "broken MIME": b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\n--nothing\n",
    "bad encoded-word": b"Subject: =?utf-8?q?=FF=?=\nContent-Type: text/plain; charset=\xff\n\nx\n",
    "endless line": b"X-Long: " + b"a" * 100_000 + b"\r\n\r\nbody",
    "NUL in header": b"Subject: a\x00b\r\n\r\nbody",
}


@pytest.mark.parametrize("return_content", ["headers", "full"])
@pytest.mark.parametrize("original", BAD_ORIGINALS.values(), ids=BAD_ORIGINALS.keys())
def test_bad_originals_do_not_crash(original, return_content):
    data = dsn(original=original, return_content=return_content)
    assert_wire_format(data)
    assert data.isascii()
    msg = parse(data)
    assert len(parts(msg)) == 3
    assert len(status_groups(msg)[1]) == 3


def test_8bit_header_section_is_quoted_printable_and_recoverable():
    original = BAD_ORIGINALS["8-bit header and body"]
    part = parts(parse(dsn(original=original)))[2]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_content_type() == "text/rfc822-headers"
    raw = quopri.decodestring(part.get_payload().encode())
    assert raw == b"Subject: caf\xc3\xa9 \xff\xfe\r\nFrom: \xe9t\xe9@x\r\n"
    assert "Subject: caf" in part.get_content()  # readable despite the undeclared bytes


def test_utf8_header_section_declares_utf8():
    part = parts(parse(dsn(original="Subject: caf\u00e9\r\n\r\nx\r\n".encode())))[2]
    assert part.get_content_charset() == "utf-8"
    assert part.get_content().splitlines() == ["Subject: caf\u00e9"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    original=st.binary(max_size=600),
    diagnostic=st.text(max_size=200),
    address=st.text(min_size=1, max_size=40),
    full=st.booleans(),
)
def test_arbitrary_input_gives_a_well_formed_dsn(original, diagnostic, address, full):
    recipient = FailedRecipient(address, "5.1.1", "mx.r.example", diagnostic)
    data = dsn(original=original, recipients=[recipient], return_content="full" if full else "headers")
    assert_wire_format(data)
    msg = parse(data)
    _, (group,) = status_groups(msg)
    assert group["Status"] == "5.1.1"
    assert group["Action"] == "failed"


# --- header injection -----------------------------------------------------------------------------------


def test_crlf_injection_in_diagnostic_stays_inside_its_field():
    evil = (
        "550 no such user\r\nBcc: victim@elsewhere.example\r\n\r\n"
        "Final-Recipient: rfc822; forged@elsewhere.example\nAction: delivered\rStatus: 2.0.0"
    )
    data = dsn(recipients=[FailedRecipient("b@r.example", "5.1.1", "mx.r.example", evil)])
    assert_wire_format(data)
    msg = parse(data)
    assert "Bcc" not in msg
    _, groups = status_groups(msg)
    assert len(groups) == 1
    (group,) = groups
    assert group.get_all("Final-Recipient") == ["rfc822; b@r.example"]
    assert group["Action"] == "failed"
    assert group["Status"] == "5.1.1"
    assert group["Diagnostic-Code"].startswith("smtp; 550 no such user Bcc: victim@elsewhere.example")
    assert "forged@elsewhere.example" in group["Diagnostic-Code"]


def test_crlf_injection_in_addresses_and_hosts():
    recipient = FailedRecipient(
        address="b@r.example\r\nAction: delivered",
        status="5.1.1\r\nX-Evil: 1",
        remote_mta="mx.r.example\r\n\r\nFinal-Recipient: rfc822; forged@x",
        diagnostic="550 nope",
        original_recipient="rfc822;b@r.example\nX-Evil: 2",
    )
    data = dsn(
        sender="alice@sender.example\r\nBcc: victim@elsewhere.example",
        reporting_mta="mx.here.example\r\nX-Evil: 3",
        queue_id="Q1\r\nX-Evil: 4",
        received_from="client\r\nX-Evil: 5",
        recipients=[recipient],
    )
    assert_wire_format(data)
    msg = parse(data)
    assert "Bcc" not in msg and "X-Evil" not in msg
    per_message, groups = status_groups(msg)
    assert "X-Evil" not in per_message
    assert len(groups) == 1
    assert groups[0].get_all("Action") == ["failed"]
    assert groups[0].get_all("Final-Recipient") == ["rfc822; b@r.example Action: delivered"]
    assert "X-Evil" not in groups[0]
    assert groups[0]["Status"] == "5.0.0"  # not a status code once the CRLF is neutralised
    assert len(msg["To"].addresses) == 1


# --- addresses ------------------------------------------------------------------------------------------


def test_bracketed_and_source_routed_sender():
    msg = parse(dsn(sender="<@relay.example,@hop.example:alice@sender.example>"))
    assert [a.addr_spec for a in msg["To"].addresses] == ["alice@sender.example"]


def test_original_recipient_without_type_is_rfc822():
    recipient = FailedRecipient("b@r.example", "5.1.1", None, None, original_recipient="<B@R.example>")
    assert (
        status_groups(parse(dsn(recipients=[recipient])))[1][0]["Original-Recipient"] == "rfc822; B@R.example"
    )


def test_non_ascii_recipient_uses_utf8_address_type():
    recipient = FailedRecipient("j\u00f6rg@r\u00e4.example", "5.1.1", None, None)
    data = dsn(recipients=[recipient])
    assert data.isascii()
    (group,) = status_groups(parse(data))[1]
    assert group["Final-Recipient"] == "utf-8; j\\x{F6}rg@r\\x{E4}.example"  # RFC 6533 §3
    assert "j\u00f6rg@r\u00e4.example" in parts(parse(data))[0].get_content()


def test_non_ascii_sender_is_addressed_in_utf8():
    data = dsn(sender="j\u00f6rg@sender.example")
    assert_wire_format(data)
    assert "\r\nTo: j\u00f6rg@sender.example\r\n".encode() in data  # RFC 6532: raw UTF-8
    assert data.count(b"\xc3\xb6") == 1  # only in To:; the body parts stay 7-bit
    msg = parse(data)
    assert len(status_groups(msg)[1]) == 3


def test_malformed_sender_is_quoted_not_refused():
    msg = parse(dsn(sender="john doe@sender.example"))
    assert [a.addr_spec for a in msg["To"].addresses] == ['"john doe"@sender.example']


# --- an independent reader ------------------------------------------------------------------------------


def test_flufl_bounce_reads_the_dsn():
    """Mailman's bounce detector (flufl.bounce) finds the same permanent and temporary failures."""
    flufl_bounce = pytest.importorskip("flufl.bounce")
    delayed = FailedRecipient("late@r.example", "4.4.1", "mx.r.example", "421 later", action="delayed")
    msg = email.message_from_bytes(dsn(recipients=[BOB, CAROL, delayed]), policy=email.policy.compat32)
    temporary, permanent = flufl_bounce.all_failures(msg)
    assert permanent == {b"bob@remote.example", b"carol@local.example"}
    assert temporary == {b"late@r.example"}
