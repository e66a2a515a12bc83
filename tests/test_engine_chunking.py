"""The receiver does not care how TCP cut the stream (issue 13, item 7).

The same bytes, split anywhere, give the same replies and the same events
(DataChunk boundaries aside: their contents, merged, are the same too) —
for commands, pipelining, DATA, bare CR and LF, over-long lines and
oversized messages, and for a message that breaks several rules at once:
the reply names the same reason whatever the chunking.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtppeer.engine import events as ev
from smtppeer.engine.atrn import Atrn
from smtppeer.engine.auth import Auth
from smtppeer.engine.etrn import Etrn
from smtppeer.engine.extensions import default_extensions
from smtppeer.engine.framing import DotStuffer
from smtppeer.engine.limits import Limits
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import Reply, reply
from smtppeer.engine.starttls import StartTls

from .enginedriver import merge_chunks, pump
from .logins import lookup

# Small limits, so that short inputs reach every one of them.
SMALL = Limits(command_line=48, text_line=24, message_size=120, recipients=2, bad_commands=1000)


def answer(event: ev.Event) -> Reply:
    """Deterministic answers, refusals included (a refused RCPT, a refused TURN...)."""
    if isinstance(event, ev.MailFrom):
        return reply(250, "2.1.0", "OK") if "n" not in str(event.path) else reply(550, "5.7.1", "No")
    if isinstance(event, ev.RcptTo):
        return reply(250, "2.1.5", "OK") if "n" not in str(event.path) else reply(550, "5.1.1", "No")
    if isinstance(event, ev.DataEnd):
        return reply(250, "2.0.0", f"Queued {event.size}")
    if isinstance(event, ev.StartTLSRequested):
        return reply(454, "4.7.0", "TLS not available")
    return reply(502, "5.5.1", "No")


def extensions(kind: str):
    if kind == "all":
        return [*default_extensions(), StartTls(), Auth(lookup, allow_clear=True), Etrn(), Atrn()]
    return default_extensions()


def run(chunks: list[bytes], limits: Limits, kind: str) -> tuple[bytes, list]:
    rx = Receiver("mx.example", limits, extensions(kind))
    rx.start()
    events: list = []
    for chunk in chunks:
        rx.receive_data(chunk)
        assert pump(rx, answer, events) is not ev.PAUSED
    return rx.data_to_send(), merge_chunks(events)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces


def stuffed(body: bytes) -> bytes:
    s = DotStuffer()
    return s.feed(body) + s.finish()


def runs(t: tuple[bytes, int]) -> bytes:
    return t[0] * t[1]


text = st.one_of(
    st.sampled_from([b"", b".", b"..", b"x", b"a.b", b"\x00", b"\xc3\xa9", b"QUIT", b"DATA", b" "]),
    st.tuples(st.sampled_from([b"y", b".", b"\r", b"\n", b"\r\n"]), st.integers(1, 60)).map(runs),
    st.binary(max_size=10),
)
# A body: lines (some too long for SMALL.text_line) with, now and then, a bare CR or LF.
body = st.lists(
    st.tuples(text, st.sampled_from([b"\r\n"] * 6 + [b"\r", b"\n", b"\n\r"])).map(b"".join), max_size=14
).map(b"".join)
mail = st.sampled_from(
    [b"MAIL FROM:<a@x.example>", b"MAIL FROM:<>", b"MAIL FROM:<n@x.example>", b"MAIL FROM:<a@x> SIZE=500"]
)
rcpt = st.sampled_from([b"RCPT TO:<b@y.example>", b"RCPT TO:<n@y.example>", b"RCPT TO:<postmaster>"])
other = st.one_of(
    st.sampled_from(
        [
            b"EHLO c.example",
            b"HELO c",
            b"NOOP",
            b"RSET",
            b"HELP",
            b"VRFY x",
            b"TURN",
            b"ETRN x.example",
            b"STARTTLS",
            b"AUTH LOGIN",
            b"*",
            b"FOO",
            b"",
            b"QUIT x",
        ]
    ),
    st.tuples(st.sampled_from([b"N", b"MAIL FROM:<", b"\x00"]), st.integers(1, 80)).map(runs),
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
)
command_end = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r"])
transaction = st.tuples(mail, rcpt, rcpt, body, st.booleans()).map(
    lambda t: t[0] + b"\r\n" + t[1] + b"\r\n" + t[2] + b"\r\nDATA\r\n" + (stuffed(t[3]) if t[4] else t[3])
)
session = st.lists(
    st.one_of(transaction, st.tuples(other, command_end).map(b"".join), body), min_size=1, max_size=8
).map(lambda parts: b"EHLO c\r\n" + b"".join(parts) + b"\r\n.\r\nQUIT\r\n")
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=16)

MIXED = (
    b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    + b"short\r\n" * 30  # over SMALL.message_size ...
    + b"z" * 40  # ... and then a line over SMALL.text_line
    + b"\r\n.\r\nQUIT\r\n"
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=session, cuts=cut_lists, kind=st.sampled_from(["default", "all"]))
@example(stream=MIXED, cuts=[len(MIXED) - 20], kind="default")
def test_the_same_bytes_split_anywhere_give_the_same_replies_and_events(stream, cuts, kind):
    assert run(split(stream, cuts), SMALL, kind) == run([stream], SMALL, kind)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=session, kind=st.sampled_from(["default", "all"]))
def test_byte_by_byte_is_the_same_as_all_at_once(stream, kind):
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    assert run(one_by_one, SMALL, kind) == run([stream], SMALL, kind)


@pytest.mark.parametrize("cut", range(0, len(MIXED) + 1, 7))
def test_a_message_too_big_with_a_long_line_gets_one_reason_however_cut(cut):
    """The issue's case: 552 (size) or 500 (line) depended on where TCP cut the stream."""
    replies, events = run([MIXED[:cut], MIXED[cut:]], SMALL, "default")
    assert b"552 5.3.4 " in replies and b"500 5.5.2" not in replies
    assert (replies, events) == run([MIXED], SMALL, "default")


@pytest.mark.parametrize(
    "body",
    [
        b"ok\r\n" + b"y" * 30 + b"\r\nbare\rCR\r\n",  # a long line and a bare CR after it
        b"bare\nLF\r\n" + b"y" * 30 + b"\r\n",  # a bare LF, then a long line
        b"y" * 30 + b"\r\n" + b"x\r\n" * 40,  # a long line, then too much
    ],
)
def test_every_failed_message_fails_the_same_way_however_cut(body):
    head = b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    stream = head + body + b".\r\nQUIT\r\n"
    whole = run([stream], SMALL, "default")
    for cut in range(len(stream) + 1):
        assert run([stream[:cut], stream[cut:]], SMALL, "default") == whole, cut
