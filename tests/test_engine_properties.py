"""Property tests of the framing: dot-stuffing and the DATA decoder, at any chunking."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtppeer.engine import events as ev
from smtppeer.engine.framing import DataDecoder, DotStuffer
from smtppeer.engine.receiver import Receiver

from .enginedriver import accept_all, merge_chunks, pump

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Line contents: anything but CR, LF and NUL (which fail a message), often starting with dots.
line_text = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")),
    st.sampled_from([b"", b".", b"..", b"...", b". ", b".x", b"From x", b"QUIT", b"DATA"]),
    st.tuples(st.sampled_from([b".", b".."]), st.binary(max_size=10)).map(
        lambda t: (t[0] + t[1]).replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
    ),
)
crlf_body = st.lists(line_text, max_size=30).map(lambda lines: b"".join(line + b"\r\n" for line in lines))

# Arbitrary bytes rich in the characters that matter.
tricky_bytes = st.lists(
    st.one_of(
        st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n..", b"\r\n.\r\n", b"\n.\n", b"\r.\r"]),
        st.binary(max_size=8),
    ),
    max_size=40,
).map(b"".join)

# Lines of every length around small limits, with stuffing dots and bare line ends among them.
long_lines = st.lists(
    st.tuples(
        st.sampled_from([b"", b".", b".."]),
        st.integers(0, 16).map(lambda n: b"y" * n),
        st.sampled_from([b"\r\n"] * 4 + [b"\r", b"\n"]),
    ).map(b"".join),
    max_size=12,
).map(lambda lines: b"".join(lines) + b"\r\n.\r\n")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(data[start:p])
        start = p
    pieces.append(data[start:])
    return pieces


cut_lists = st.lists(st.integers(min_value=0, max_value=2000), max_size=12)


def stuff(chunks: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.finish()


def decode(chunks: list[bytes], limit: int = 1000) -> tuple[bytes, DataDecoder]:
    decoder = DataDecoder(limit)
    return b"".join(decoder.feed(c) for c in chunks), decoder


@SETTINGS
@given(body=crlf_body, stuff_cuts=cut_lists, decode_cuts=cut_lists, after=tricky_bytes)
def test_stuff_then_decode_round_trips(body, stuff_cuts, decode_cuts, after):
    wire = stuff(split(body, stuff_cuts))
    assert wire.endswith(b".\r\n")
    decoded, decoder = decode(split(wire + after, decode_cuts))
    assert decoded == body
    assert decoder.done and not decoder.failed
    assert decoder.rest == after


@SETTINGS
@given(body=crlf_body, cuts=cut_lists)
def test_stuffing_is_chunking_independent(body, cuts):
    assert stuff(split(body, cuts)) == stuff([body])


@SETTINGS
@given(body=st.binary(max_size=200) | tricky_bytes, cuts=cut_lists)
def test_stuffing_never_lets_a_line_be_a_lone_dot(body, cuts):
    wire = stuff(split(body, cuts))
    assert b"\r\n.\r\n" not in wire[:-3]
    assert wire[:3] != b".\r\n" or wire == b".\r\n"


@SETTINGS
@given(data=tricky_bytes | long_lines, cuts=cut_lists, limit=st.sampled_from([1000, 12, 5]))
def test_decoder_is_chunking_independent(data, cuts, limit):
    whole, ref = decode([data], limit)
    body, d = decode(split(data, cuts), limit)
    assert (d.done, d.rest, d.line_too_long, d.bad_line_end, d.nul) == (
        ref.done,
        ref.rest,
        ref.line_too_long,
        ref.bad_line_end,
        ref.nul,
    )
    # Also for a failed body: what comes out (everything before a long line) is the same.
    assert body == whole


@SETTINGS
@given(body=crlf_body, where=st.integers(min_value=0), bare=st.sampled_from([b"\r", b"\n"]), cuts=cut_lists)
def test_any_bare_cr_or_lf_is_flagged(body, where, bare, cuts):
    wire = stuff([body])[: -len(b".\r\n")]  # the stuffed body, without the end mark
    i = where % (len(wire) + 1)
    tampered = wire[:i] + bare + wire[i:]
    _, d = decode(split(tampered + b"\r\n.\r\n", cuts))
    assert d.done
    assert d.bad_line_end and d.failed


def run_receiver(chunks: list[bytes]) -> tuple[bytes, list]:
    rx = Receiver("mx.example")
    rx.start()
    events: list = []
    for chunk in chunks:
        rx.receive_data(chunk)
        assert pump(rx, accept_all, events) is not ev.PAUSED, "unanswered decision"
    # merge body chunks: their boundaries depend on the input chunking
    return rx.data_to_send(), merge_chunks(events)


@settings(max_examples=100, deadline=None)
@given(body=crlf_body | tricky_bytes, cuts=cut_lists)
def test_receiver_is_chunking_independent(body, cuts):
    stream = (
        b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
        + stuff([body])
        + b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n.\r\nQUIT\r\n"
    )
    assert run_receiver(split(stream, cuts)) == run_receiver([stream])
