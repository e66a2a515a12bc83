"""Framing shared by both roles: command lines, the DATA decoder, dot-stuffing."""

from __future__ import annotations

import pytest

from smtppeer.engine.framing import BareLineEnd, DataDecoder, DotStuffer, LineReader, LineTooLong

# -- helpers --------------------------------------------------------------------


def lines_of(reader: LineReader) -> list:
    out = []
    while (line := reader.next_line()) is not None:
        out.append(line)
    return out


def decode(chunks: list[bytes], line_limit: int = 1000) -> tuple[bytes, DataDecoder]:
    decoder = DataDecoder(line_limit)
    body = b"".join(decoder.feed(c) for c in chunks)
    return body, decoder


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def stuff(chunks: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.finish()


# -- LineReader -----------------------------------------------------------------


class TestLineReader:
    def test_splits_lines_and_strips_crlf(self):
        r = LineReader()
        r.feed(b"HELO a\r\nNOOP\r\n")
        assert lines_of(r) == [b"HELO a", b"NOOP"]

    def test_partial_line_waits(self):
        r = LineReader()
        r.feed(b"NO")
        assert r.next_line() is None
        r.feed(b"OP\r")
        assert r.next_line() is None
        r.feed(b"\n")
        assert r.next_line() == b"NOOP"
        assert r.next_line() is None

    def test_empty_line(self):
        r = LineReader()
        r.feed(b"\r\n")
        assert r.next_line() == b""

    def test_limit_counts_crlf(self):
        r = LineReader(512)
        r.feed(b"x" * 510 + b"\r\n")
        assert r.next_line() == b"x" * 510
        r.feed(b"x" * 511 + b"\r\n" + b"NOOP\r\n")
        assert lines_of(r) == [LineTooLong(), b"NOOP"]

    @pytest.mark.parametrize("size", [510, 511, 600, 5000])
    def test_limit_bytewise(self, size):
        r = LineReader(512)
        out = []
        for b in bytewise(b"y" * size + b"\r\nNOOP\r\n"):
            r.feed(b)
            out += lines_of(r)
        expected = [b"y" * size] if size <= 510 else [LineTooLong()]
        assert out == expected + [b"NOOP"]

    def test_over_long_line_without_end_is_reported_once_and_skipped(self):
        r = LineReader(20)
        r.feed(b"A" * 25)
        assert r.next_line() == LineTooLong()
        r.feed(b"B" * 100)
        assert r.next_line() is None
        r.feed(b"MAIL FROM:<x@y>\r\nNOOP\r\n")
        # the tail of the long line is never read as a command
        assert lines_of(r) == [b"NOOP"]

    def test_skip_ends_at_a_bare_lf_too(self):
        r = LineReader(10)
        r.feed(b"A" * 11)
        assert r.next_line() == LineTooLong()
        r.feed(b"tail\nNOOP\r\n")
        assert lines_of(r) == [b"NOOP"]

    @pytest.mark.parametrize(
        "data",
        [b"NOOP\n", b"NO\rOP\r\n", b"NOOP\r\r\n", b"\n", b"NOOP\rQUIT\r\n"],
    )
    def test_bare_line_ends(self, data):
        r = LineReader()
        r.feed(data + b"RSET\r\n")
        assert lines_of(r) == [BareLineEnd(), b"RSET"]

    def test_take_rest(self):
        r = LineReader()
        r.feed(b"DATA\r\nbody\r\n.\r")
        assert r.next_line() == b"DATA"
        assert r.take_rest() == b"body\r\n.\r"
        assert r.next_line() is None
        assert r.take_rest() == b""

    def test_take_rest_clears_skip_mode(self):
        r = LineReader(10)
        r.feed(b"A" * 11)
        assert r.next_line() == LineTooLong()
        assert r.take_rest() == b""
        r.feed(b"NOOP\r\n")
        assert r.next_line() == b"NOOP"

    def test_discard(self):
        r = LineReader()
        r.feed(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n")
        assert r.next_line() == b"STARTTLS"
        assert r.discard() == len(b"MAIL FROM:<a@b>\r\n")
        assert r.next_line() is None


# -- DataDecoder ------------------------------------------------------------------


class TestDataDecoder:
    def test_simple_body(self):
        body, d = decode([b"Subject: x\r\n\r\nhello\r\n.\r\n"])
        assert body == b"Subject: x\r\n\r\nhello\r\n"
        assert d.done and not d.failed and d.rest == b""

    def test_empty_body(self):
        body, d = decode([b".\r\n"])
        assert body == b"" and d.done and not d.failed

    def test_empty_body_bytewise(self):
        body, d = decode(bytewise(b".\r\nQUIT\r\n"))
        assert body == b"" and d.done and d.rest == b"QUIT\r\n"

    def test_body_of_empty_lines(self):
        body, d = decode([b"\r\n\r\n.\r\n"])
        assert body == b"\r\n\r\n" and not d.failed

    def test_unstuffing(self):
        body, d = decode([b"..leading\r\nmid.dle\r\n...\r\n..\r\n.\r\n"])
        assert body == b".leading\r\nmid.dle\r\n..\r\n.\r\n"

    def test_unstuffing_first_line(self):
        body, _ = decode([b"..\r\n.\r\n"])
        assert body == b".\r\n"

    def test_rest_after_end(self):
        body, d = decode([b"a\r\n.\r\nQUIT\r\n"])
        assert body == b"a\r\n" and d.rest == b"QUIT\r\n"

    def test_feed_after_done_goes_to_rest(self):
        d = DataDecoder()
        assert d.feed(b"a\r\n.\r\nNO") == b"a\r\n"
        assert d.feed(b"OP\r\n") == b""
        assert d.rest == b"NOOP\r\n"

    def test_first_chunk_without_line_end(self):
        # Regression: the virtual leading CRLF was leaked when the first
        # chunk held no CRLF at all.
        body, d = decode([b"abc", b"def\r\n", b".\r\n"])
        assert body == b"abcdef\r\n"

    @pytest.mark.parametrize(
        "raw",
        [
            b"Subject: t\r\n\r\nline one\r\n..dot\r\n\r\n.\r\n",
            b".\r\n",
            b"..\r\n.\r\n",
            b"x\r\n.\r\nNOOP\r\n",
        ],
    )
    def test_every_split_point(self, raw):
        whole, ref = decode([raw])
        for i in range(len(raw) + 1):
            for j in range(i, len(raw) + 1):
                body, d = decode([raw[:i], raw[i:j], raw[j:]])
                assert body == whole, (i, j)
                assert d.rest == ref.rest and d.done

    def test_not_done_without_end(self):
        body, d = decode([b"a\r\nb\r\n"])
        assert not d.done
        assert body == b"a\r\nb"  # the last CRLF is held: it may start the end mark

    @pytest.mark.parametrize(
        "variant",
        [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n"],
    )
    def test_smuggling_variants_never_end_data(self, variant):
        raw = b"hi" + variant + b"MAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n"
        body, d = decode([raw])
        assert d.done and d.bad_line_end and d.failed
        assert d.rest == b"QUIT\r\n"
        assert b"MAIL FROM:<evil@x>" in body
        # bytewise too
        body2, d2 = decode(bytewise(raw))
        assert d2.done and d2.bad_line_end and d2.rest == b"QUIT\r\n"

    @pytest.mark.parametrize("bad", [b"a\rb\r\n", b"a\nb\r\n", b"a\r\r\n", b"a\r\n\n", b"\r", b"\n"])
    def test_bare_cr_or_lf_flags(self, bad):
        body, d = decode([b"ok\r\n" + bad + b"\r\n.\r\n"])
        assert d.done and d.bad_line_end

    def test_bare_cr_right_before_end(self):
        body, d = decode([b"a\r\r\n.\r\n"])
        assert d.done and d.bad_line_end

    def test_line_limit_exact(self):
        ok = b"x" * 998 + b"\r\n"
        body, d = decode([ok + b".\r\n"])
        assert body == ok and not d.failed
        body, d = decode([b"x" * 999 + b"\r\n.\r\n"])
        assert d.done and d.line_too_long and body == b""

    def test_line_limit_exact_bytewise(self):
        ok = b"x" * 998 + b"\r\n"
        body, d = decode(bytewise(ok + b".\r\n"))
        assert body == ok and not d.failed

    def test_line_limit_cr_and_lf_in_separate_chunks(self):
        # Regression: a 998-octet line whose CR ended a chunk was called too long.
        body, d = decode([b"x" * 998 + b"\r", b"\n.\r\n"])
        assert body == b"x" * 998 + b"\r\n" and not d.failed

    def test_line_limit_does_not_count_stuffing_dot(self):
        # RFC 5321 §4.5.3.1.6: "not counting the leading dot duplicated for transparency"
        body, d = decode([b"." + b"." + b"x" * 997 + b"\r\n.\r\n"])
        assert body == b"." + b"x" * 997 + b"\r\n" and not d.failed

    def test_line_limit_later_line(self):
        body, d = decode([b"short\r\n", b"y" * 2000, b"\r\nmore\r\n.\r\nNOOP\r\n"])
        assert d.done and d.line_too_long and d.rest == b"NOOP\r\n"

    def test_line_too_long_in_a_huge_unterminated_chunk_stays_bounded(self):
        d = DataDecoder()
        for _ in range(100):
            d.feed(b"z" * 10000)
        assert d.line_too_long and not d.done
        assert len(d._pending) <= 4  # nothing of the lost message is kept
        d.feed(b"\r\n.")
        d.feed(b"\r\nRSET\r\n")
        assert d.done and d.rest == b"RSET\r\n"

    def test_custom_line_limit(self):
        body, d = decode([b"abcd\r\n.\r\n"], line_limit=6)
        assert not d.failed and body == b"abcd\r\n"
        body, d = decode([b"abcde\r\n.\r\n"], line_limit=6)
        assert d.line_too_long

    def test_end_mark_split_everywhere(self):
        end = b"\r\n.\r\n"
        for i in range(1, len(end)):
            body, d = decode([b"body" + end[:i], end[i:] + b"X"])
            assert body == b"body\r\n" and d.done and d.rest == b"X"


# -- DotStuffer -------------------------------------------------------------------


class TestDotStuffer:
    def test_first_line_dot(self):
        assert stuff([b".hidden\r\n"]) == b"..hidden\r\n.\r\n"

    def test_inner_dots(self):
        assert stuff([b"a\r\n.\r\nb\r\n..c\r\n"]) == b"a\r\n..\r\nb\r\n...c\r\n.\r\n"

    def test_dot_not_at_line_start_untouched(self):
        assert stuff([b"a.b\r\n"]) == b"a.b\r\n.\r\n"

    def test_empty_body(self):
        assert stuff([]) == b".\r\n"
        assert stuff([b""]) == b".\r\n"

    def test_unterminated_last_line(self):
        assert stuff([b"abc"]) == b"abc\r\n.\r\n"
        assert stuff([b"abc\r"]) == b"abc\r\n.\r\n"

    def test_unterminated_dot_line(self):
        assert stuff([b"a\r\n."]) == b"a\r\n..\r\n.\r\n"

    def test_dot_after_chunk_boundary_between_cr_and_lf(self):
        assert stuff([b"a\r", b"\n.b\r\n"]) == b"a\r\n..b\r\n.\r\n"

    def test_dot_after_chunk_boundary_after_crlf(self):
        assert stuff([b"a\r\n", b".b\r\n"]) == b"a\r\n..b\r\n.\r\n"

    def test_lone_lf_chunk_after_cr(self):
        assert stuff([b"a\r", b"\n", b".b\r\n"]) == b"a\r\n..b\r\n.\r\n"

    def test_empty_chunks_keep_state(self):
        assert stuff([b"a\r", b"", b"\n", b"", b".", b"\r\n"]) == b"a\r\n..\r\n.\r\n"

    def test_bytewise_equals_whole(self):
        body = b".a\r\n..\r\nx.\r\n.\r\n\r\n.end"
        assert stuff(bytewise(body)) == stuff([body])

    def test_finish_resets(self):
        s = DotStuffer()
        s.feed(b"abc")
        assert s.finish() == b"\r\n.\r\n"
        assert s.feed(b".x\r\n") == b"..x\r\n"

    def test_round_trip_through_decoder(self):
        body = b".\r\n..\r\nfrom\r\n.x\r\n"
        decoded, d = decode([stuff([body])])
        assert decoded == body and d.done and not d.failed and d.rest == b""
