"""One rule for every message that goes into the spool (issue 13, item 1).

``framing.message_problem`` says why a whole message breaks the rule the
DATA decoder enforces on SMTP — a bare CR or LF, a NUL, a line over 998
octets — and nothing else: it runs the message through that decoder.  The
admin command, the control socket and the bounces we build all meet it;
SMTP meets it by construction.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtppeer.engine.framing import DataDecoder, DotStuffer, message_problem
from smtppeer.engine.limits import Limits
from smtppeer.engine.receiver import Receiver
from smtppeer.relay.bounce import FailedRecipient, build_dsn

from .enginedriver import accept_all, pump

# -- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"Subject: s\r\n\r\nbody\r\n",
        b"Subject: s\r\n\r\n.\r\n..\r\n.x\r\n",  # a lone dot is content: it is stuffed on the wire
        b"x" * 998 + b"\r\n",
        b"\xff\xfe 8-bit \xc3\xa9\r\n",
        b"\r\n\r\n",
    ],
)
def test_acceptable_messages(message):
    assert message_problem(message) is None


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"Subject: s\r\n\r\nfirst\r.\r\nMAIL FROM:<x@y>\r\n", "line 3: a bare CR or LF"),  # the issue's
        (b"a\r\nb\nc\r\n", "line 2: a bare CR or LF"),
        (b"a\r\n\rb\r\n", "line 2: a bare CR or LF"),
        (b"a\r\nb\r", "line 2: a bare CR or LF"),
        (b"a\r\nb\n", "line 2: a bare CR or LF"),
        (b"a\r\n\x00.\r\n", "line 2: a NUL octet"),
        (b"a\x00\r\n", "line 1: a NUL octet"),
        (b"ok\r\n" + b"x" * 999 + b"\r\n", "line 2: longer than 998 octets"),
        (b"no line end", "line 1: does not end with CRLF"),
        (b"a\r\nb", "line 2: does not end with CRLF"),
    ],
)
def test_refused_messages_say_which_line_and_why(message, why):
    problem = message_problem(message)
    assert problem is not None and problem.startswith(why), problem


def test_the_first_problem_by_the_decoders_order_is_named():
    """A long line outranks a bare CR (as at the end of DATA), wherever each is."""
    message = b"bare\rCR\r\n" + b"y" * 1200 + b"\r\n"
    assert message_problem(message).startswith("line 2: longer than 998 octets")


def test_the_limit_is_a_parameter():
    assert message_problem(b"x" * 20 + b"\r\n", line_limit=22) is None
    assert message_problem(b"x" * 21 + b"\r\n", line_limit=22).startswith("line 1: longer than 20 octets")


def smtp_verdict(message: bytes, limit: int = 1000) -> tuple[int, str]:
    """What the receiver answers to ``message`` sent over SMTP (dot-stuffed, as a client would)."""
    rx = Receiver("mx.example", Limits(message_size=10**9, text_line=limit))
    rx.start()
    stuffer = DotStuffer()
    wire = stuffer.feed(message) + stuffer.finish()
    rx.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n" + wire)
    pump(rx, accept_all)
    last = rx.data_to_send().split(b"\r\n")[-2].decode()
    return int(last[:3]), last


body_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"\r\n", b"\r", b"\n", b"\x00", b".", b"\r\n.", b"\r\n.\r\n", b"x" * 30]),
        st.binary(max_size=8),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=body_bytes)
def test_the_rule_is_the_smtp_rule(message):
    """A message passes the rule exactly when SMTP would take it (with its line ends completed)."""
    problem = message_problem(message, line_limit=32)
    code, text = smtp_verdict(message, 32)
    if message and not message.endswith(b"\r\n"):
        assert problem is not None
        return
    assert (problem is None) == (code == 250), (problem, text)


# -- SMTP: NUL is refused like a bare line end ---------------------------------------------------------


def test_smtp_refuses_a_nul_at_the_end_of_data():
    """``\\x00.`` would be a lone dot for a next hop that drops NULs."""
    code, text = smtp_verdict(b"a\r\n\x00.\r\nMAIL FROM:<x@y>\r\n")
    assert (code, text) == (550, "550 5.6.0 Message contains a NUL octet; SMTP text may not hold one")


def test_smtp_names_bare_line_ends_before_nul():
    code, text = smtp_verdict(b"a\x00\r\nb\rc\r\n")
    assert text.startswith("550 5.6.0 Message contains a bare CR or LF")


def test_decoder_flags_nul_whatever_the_chunking():
    wire = b"abc\r\nde\x00f\r\n.\r\n"
    for cut in range(len(wire) + 1):
        d = DataDecoder()
        d.feed(wire[:cut])
        d.feed(wire[cut:])
        assert d.done and d.nul and d.failed and not d.bad_line_end


def test_a_nul_after_a_long_line_is_not_judged():
    """Only what precedes the first long line is judged, whatever the chunking."""
    d = DataDecoder(line_limit=10)
    d.feed(b"ok\r\n" + b"y" * 20 + b"\r\n\x00\r\n.\r\n")
    assert d.done and d.line_too_long and not d.nul


# -- bounces: what we build ourselves meets the rule -------------------------------------------------------

hostile_originals = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"Subject: x\r\n",
                b"From: a@b\n",
                b"\r\n",
                b"\n\n",
                b"\r",
                b"\x00",
                b".\r\n",
                b"\x00.\r\n",
                b"X-Long: " + b"y" * 1500 + b"\r\n",
                b"\xc3\xa9\xff",
                b"first\r.\r\nMAIL FROM:<x@y>\r\n",
            ]
        ),
        st.binary(max_size=20),
    ),
    max_size=20,
).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    original=hostile_originals,
    return_content=st.sampled_from(["headers", "full"]),
    diagnostic=st.sampled_from(["550 5.1.1 no such user", "451 4.4.1 a\r\nb\x00c\rd" + "z" * 1200]),
)
def test_a_built_bounce_meets_the_rule(original, return_content, diagnostic):
    dsn = build_dsn(
        reporting_mta="mx.example",
        sender="a@x.example",
        recipients=[FailedRecipient("b@y.example", "5.1.1", "mx.y.example", diagnostic)],
        original=original,
        queue_id="Q1",
        arrival=datetime(2024, 1, 1, tzinfo=UTC),
        return_content=return_content,
    )
    assert message_problem(dsn) is None
