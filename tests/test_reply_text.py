"""Reply text is printable ASCII and every reply line fits in 512 octets (RFC 5321 §4.5.3.1.5).

Replies echo some of what a client said (a command verb, an EHLO name, the
reason an address is malformed).  Whatever the client sends — NUL, terminal
escape sequences, non-ASCII, 500-octet lines, 12 KiB AUTH lines — what comes
back is ``code[ -]printable-ASCII CRLF``, at most 512 octets a line, with the
echoed part escaped (``\\x1b``) and cut, never raw.
"""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtppeer.engine import events as ev
from smtppeer.engine.atrn import Atrn
from smtppeer.engine.auth import Auth
from smtppeer.engine.etrn import Etrn
from smtppeer.engine.extensions import default_extensions
from smtppeer.engine.limits import Limits
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import MAX_REPLY_LINE, Reply, printable, reply
from smtppeer.engine.starttls import StartTls

from .enginedriver import parse_replies, pump
from .logins import lookup

LINE = re.compile(rb"[0-9]{3}(?:[ -][\x20-\x7e]*)?\r\n")
HOSTILE = "X\x00\x1b[2J\u00e9\u202e\x7f"  # NUL, an ANSI escape, é, a bidi override, DEL


def extensions():
    return [*default_extensions(), StartTls(), Auth(lookup, allow_clear=True), Etrn(), Atrn()]


def careless_answer(event: ev.Event) -> Reply:
    """A policy that echoes what it was given, as a careless one might: the engine must cope."""
    if isinstance(event, ev.MailFrom):
        return reply(250, "2.1.0", f"Sender {event.path} OK")
    if isinstance(event, ev.RcptTo):
        return reply(250, "2.1.5", f"Recipient {event.path} OK")
    if isinstance(event, ev.Verify):
        return reply(252, "2.5.2", f"Cannot verify {event.argument}")
    if isinstance(event, ev.QueueStartRequested):
        return reply(459, "4.7.1", f"Node {event.node} not allowed")
    if isinstance(event, ev.TurnRequested):
        return reply(502, "5.5.1", f"{event.verb} {','.join(event.domains)} not allowed")
    if isinstance(event, ev.DataEnd):
        return reply(250, "2.0.0", "Queued")
    return reply(454, "4.7.0", "Not now")


def run(chunks: list[bytes], **kw) -> bytes:
    rx = Receiver("mx.example", Limits(bad_commands=10_000), extensions(), **kw)
    rx.start()
    for chunk in chunks:
        rx.receive_data(chunk)
        pump(rx, careless_answer)
    return rx.data_to_send()


def assert_clean(out: bytes) -> None:
    lines = out.split(b"\r\n")
    assert lines[-1] == b""
    for line in lines[:-1]:
        assert len(line) + 2 <= MAX_REPLY_LINE, line
        assert LINE.fullmatch(line + b"\r\n"), line


ECHOING = [
    # (what the client sends after EHLO, the reply code)
    (f"{HOSTILE}", 500),
    ("EHLO \u00e9" + "a" * 490, 250),
    ("HELO \u00e9\u202e", 501),
    (f"HELO {HOSTILE}", 501),
    (f"MAIL FROM:<{HOSTILE}@x.example>", 501),
    ("MAIL FROM:<" + "\x00" * 480 + ">", 501),
    (f"MAIL FROM:<a@x.example> {HOSTILE}=1", 501),
    (f"MAIL FROM:<a@x.example> X=1{HOSTILE}", 501),
    (f"MAIL FROM:<a@x.example> {'Y' * 480}=1", 555),
    ("MAIL FROM:<a@[" + "9" * 480 + "]>", 501),
    (f"MAIL FROM:<@{HOSTILE}:a@x.example>", 501),
    (f"VRFY {HOSTILE}" + "v" * 480, 252),
    (f"ETRN {HOSTILE}", 501),
    (f"ATRN {HOSTILE}", 530),
    (f"AUTH {HOSTILE}", 504),
    (f"AUTH PLAIN {HOSTILE}", 501),
]


@pytest.mark.parametrize(("line", "code"), ECHOING, ids=[ascii(line[:24]) for line, _ in ECHOING])
def test_every_command_that_echoes_input_replies_in_printable_ascii(line, code):
    assert len(line.encode()) <= 510  # a command line the receiver reads
    out = run([b"EHLO c.example\r\n", line.encode() + b"\r\n"])
    assert_clean(out)
    last = parse_replies(out)[-1]
    assert last.code == code, last


def test_an_unknown_command_on_a_restricted_port_is_named_escaped():
    out = run([f"{HOSTILE} now\r\n".encode()], only_commands=frozenset({"EHLO", "QUIT"}))
    assert_clean(out)
    assert out.endswith(b"502 5.5.1 X\\x00\\x1b[2J\\xc9\\u202e\\x7f not available on this port\r\n")


def test_an_echoed_ehlo_name_is_escaped_not_dropped():
    out = run([b"EHLO caf\xc3\xa9.example\r\n"])
    assert b"250-mx.example greets caf\\xe9.example\r\n" in out


def test_a_helo_name_with_control_characters_is_refused():
    """It would go into the Received: header of every message of the session."""
    for name in (b"a\x00b", b"a\x1bb", b"a\x7fb", b"a\tb"):
        out = run([b"EHLO " + name + b"\r\n", b"HELO " + name + b"\r\n"])
        assert [r.code for r in parse_replies(out)] == [220, 501, 501], name


def test_an_overlong_address_error_is_cut():
    """The 861-octet 501 of issue 13: a repr() of 480 NULs."""
    out = run([b"EHLO c\r\n", b"MAIL FROM:<" + b"\x00" * 480 + b">\r\n"])
    last = out.split(b"\r\n")[-2]
    assert last.startswith(b"501 5.1.7 ") and len(last) < 200, last


@pytest.mark.parametrize(
    "text",
    [
        "two\r\nlines",
        "bare\rCR and bare\nLF",
        "NUL\x00",
        "caf\u00e9 \U0001f600",
        "x" * 2000,
        "\x1b" * 600,
        "",
    ],
    ids=lambda v: ascii(v[:16]),
)
@pytest.mark.parametrize("enhanced", ["2.0.0", None])
def test_any_reply_text_is_serialised_printable_and_short(text, enhanced):
    r = Reply(250, ("first", text, "last"), enhanced)
    out = r.to_bytes()
    assert_clean(out)
    [back] = parse_replies(out)
    assert (back.code, len(back.lines), back.lines[0], back.lines[-1]) == (250, 3, "first", "last")


def test_an_empty_auth_challenge_keeps_its_space():
    """RFC 4954 §4: ``continue-req = "334" SP [base64] CRLF``; PLAIN without an initial response."""
    out = run([b"EHLO c\r\nAUTH PLAIN\r\n"])
    assert out.endswith(b"\r\n334 \r\n")


def test_a_cut_line_says_so():
    out = Reply(550, ("y" * 1000,), "5.0.0").to_bytes()
    assert len(out) == MAX_REPLY_LINE and out.endswith(b"y...\r\n")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("a\x00b", "a\\x00b"),
        ("\u00e9", "\\xe9"),
        ("\u202e", "\\u202e"),
        ("\U0001f600", "\\U0001f600"),
        ("back\\slash", "back\\slash"),
        ("z" * 100, "z" * 61 + "..."),
    ],
    ids=lambda v: ascii(v[:12]),
)
def test_printable(text, shown):
    assert printable(text, 64) == shown


# -- the property: whatever a client sends ---------------------------------------------------------

VERBS = [
    b"EHLO ",
    b"HELO ",
    b"MAIL FROM:<",
    b"MAIL FROM:<a@x.example> ",
    b"RCPT TO:<",
    b"RCPT TO:<b@y.example> ",
    b"DATA",
    b"RSET",
    b"VRFY ",
    b"EXPN ",
    b"ETRN ",
    b"ATRN ",
    b"AUTH ",
    b"AUTH PLAIN ",
    b"AUTH LOGIN",
    b"AUTH CRAM-MD5",
    b"STARTTLS",
    b"TURN",
    b"NOOP",
    b"HELP ",
    b"QUIT ",
    b"",
]
ATOMS = [
    b">",
    b"<",
    b"@",
    b"x.example",
    b"[1.2.3.4]",
    b":",
    b",",
    b" ",
    b'"',
    b"=",
    b"SMTPUTF8",
    b"SIZE=",
    b"BODY=",
    b"AUTH=",
    b"*",
    b".",
    b"\x00",
    b"\x1b[2J",
    b"\x7f",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
    b"\xf0\x9f\x98\x80",
    b"\xff",
    base64.b64encode(b"\0alice\0alice-pw"),
]
argument = st.lists(
    st.one_of(
        st.sampled_from(ATOMS),
        st.binary(max_size=8),
        st.tuples(st.sampled_from([b"x", b"\x00", b"\xc3\xa9", b"a.", b"\x1b"]), st.integers(1, 600)).map(
            lambda t: t[0] * t[1]
        ),
    ),
    max_size=8,
).map(b"".join)
line_end = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"", b"\r\n.\r\n"])
client_bytes = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(VERBS), argument, line_end).map(b"".join),
        st.binary(max_size=20),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=client_bytes, secure=st.booleans())
def test_whatever_a_client_sends_every_reply_line_is_printable_ascii_and_short(data, secure):
    out = run([b"EHLO c\r\n", data, b"\r\nQUIT\r\n"], secure=secure)
    assert_clean(out)
