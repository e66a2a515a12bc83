"""Byte framing shared by both roles: command lines, the DATA decoder, dot-stuffing.

All three work on whole chunks with ``bytes.find``/``count``/``replace`` (C
loops) rather than a Python loop per line, because a 100 MiB message is
1.3 million lines.

The only end of DATA is ``CRLF . CRLF``.  Every other line ending (bare CR,
bare LF) is remembered and fails the message at its end, so that a body can
never smuggle a second message past a downstream server that reads line ends
differently (the 2023 "SMTP smuggling" attacks).  So does a NUL: a hop that
drops NULs would read ``\\x00.`` as the end of the message (and RFC 2045
§2.8 allows none in 8-bit text; BINARYMIME is not offered).

``message_problem`` applies the same rule to a whole message made on this
host (``smtppeer send``, the control socket, bounces), so that every way
into the spool meets it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CRLF = b"\r\n"
_END = b"\r\n.\r\n"

# Why the DATA decoder fails a body: the reply texts, and message_problem's reasons.
BARE_LINE_END = "Message contains a bare CR or LF; lines must end with CRLF"
NUL = "Message contains a NUL octet; SMTP text may not hold one"


@dataclass(frozen=True)
class LineTooLong:
    """A command line exceeded the limit; its remainder has been discarded."""


@dataclass(frozen=True)
class BareLineEnd:
    """A command line ended in a bare LF or held a bare CR."""


class LineReader:
    """Splits a byte stream into CRLF-terminated command lines.

    ``limit`` counts the CRLF, as RFC 5321 §4.5.3.1.4 does (512 octets).
    An over-long line is reported once and skipped up to its line end, so
    its tail is never read as a command.
    """

    def __init__(self, limit: int = 512) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_line(self) -> bytes | LineTooLong | BareLineEnd | None:
        """The next complete line (without CRLF), an error marker, or None."""
        buf = self._buf
        while True:
            nl = buf.find(b"\n")
            if self._skipping:
                if nl < 0:
                    buf.clear()
                    return None
                del buf[: nl + 1]
                self._skipping = False
                continue
            if nl < 0:
                if len(buf) >= self.limit:
                    buf.clear()
                    self._skipping = True
                    return LineTooLong()
                return None
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            if nl + 1 > self.limit:
                return LineTooLong()
            if not line.endswith(b"\r") or b"\r" in line[:-1]:
                return BareLineEnd()
            return line[:-1]

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def partial(self) -> bool:
        """Part of a line has arrived and its end has not (an over-long line being skipped too)."""
        return self._skipping or (bool(self._buf) and b"\n" not in self._buf)

    def take_rest(self) -> bytes:
        """Remove and return the unread bytes (for DATA, TURN and STARTTLS)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._skipping = False
        return rest

    def discard(self) -> int:
        """Drop unread input (after STARTTLS); returns how much was dropped."""
        return len(self.take_rest())


class DataDecoder:
    """Decodes one DATA body: finds ``CRLF.CRLF``, removes dot-stuffing.

    Works on a window of ``pending + chunk``.  It emits everything up to the
    last CRLF in the window and keeps the rest, so a pattern can never be cut
    in half between chunks: every emitted segment starts at a CRLF and ends
    just before one.  The stream is seen with a virtual CRLF in front (the
    one that ended the DATA command) so the first line is treated like any
    other; those two bytes are not emitted.

    A failed body still runs to its end mark.  What is emitted, and judged
    for bare line ends, is everything before the first line over the limit
    (all of it if there is none): the same octets however the stream was
    chunked, so that the receiver's verdict (size, line length, line ends)
    never depends on where TCP cut it.
    """

    def __init__(self, line_limit: int = 1000) -> None:
        self.line_limit = line_limit
        self._pending = CRLF
        self._skip = 2
        self.done = False
        self.rest = b""
        self.bad_line_end = False
        self.line_too_long = False
        self.nul = False

    @property
    def failed(self) -> bool:
        return self.bad_line_end or self.line_too_long or self.nul

    def feed(self, data: bytes) -> bytes:
        """Return the decoded body bytes found in ``data`` (may be empty)."""
        if self.done:
            self.rest += data
            return b""
        window = self._pending + data
        end = window.find(_END)
        if end >= 0:
            self.done = True
            self.rest = window[end + 5 :]
            self._pending = b""
            return self._emit(window[:end], last=True)
        if self.line_too_long:
            # The message is lost anyway: keep only what could start the end mark.
            self._pending = window[-4:]
            return b""
        cut = window.rfind(CRLF)
        out = self._emit(window[:cut], last=False)
        # The unfinished last line may still be legal up to a stuffing dot,
        # line_limit - 2 octets and the CR of its CRLF; complete lines are
        # checked exactly in _emit.  The complete lines before it are emitted
        # first, so what comes out does not depend on where a chunk ended.
        if not self.line_too_long and len(window) - cut - 2 > self.line_limit:
            self.line_too_long = True
        self._pending = window[-4:] if self.line_too_long else window[cut:]
        return out

    def _emit(self, segment: bytes, last: bool) -> bytes:
        if self.line_too_long:
            return b""
        crlf = segment.count(CRLF)
        bare = segment.count(b"\r") != crlf or segment.count(b"\n") != crlf
        nul = b"\0" in segment
        out = segment.replace(b"\r\n.", CRLF)
        # Measured after unstuffing: the limit does not count the doubled dot (§4.5.3.1.6).
        if len(out) > self.line_limit and max(map(len, out.split(CRLF))) > self.line_limit - 2:
            # Everything before the first long line is emitted and judged, nothing after it:
            # the same octets whatever the chunking (so the same size and the same reason).
            out = self._before_long_line(out)
            self.line_too_long = True
            last = False
            bare = bare and _has_bare_line_end(out)
            nul = nul and b"\0" in out
        if bare:
            self.bad_line_end = True
        if nul:
            self.nul = True
        if last:
            out += CRLF
        if self._skip and out:
            # The first non-empty output starts with the virtual CRLF.
            skip, self._skip = self._skip, 0
            out = out[skip:]
        return out

    def _before_long_line(self, out: bytes) -> bytes:
        """``out`` up to the CRLF in front of its first line over the limit (failure path only)."""
        start = 0
        for line in out.split(CRLF):
            if len(line) > self.line_limit - 2:
                return out[: max(start - 2, 0)]
            start += len(line) + 2
        return out


def _has_bare_line_end(data: bytes) -> bool:
    crlf = data.count(CRLF)
    return data.count(b"\r") != crlf or data.count(b"\n") != crlf


_NUL = b"\0"
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_CHECK_CHUNK = 1 << 20


def message_problem(message: bytes, line_limit: int = 1000) -> str | None:
    """Why a whole message breaks the rule SMTP's DATA applies, or None if it meets it.

    ``message`` is a message as stored and relayed (not dot-stuffed; a line
    ``.`` is content).  It is run through ``DotStuffer`` and ``DataDecoder``,
    so the rule is the decoder's, in the decoder's order: a line over
    ``line_limit`` octets with its CRLF, else a bare CR or LF before it, else
    a NUL before it; and a non-empty message must end with CRLF.  The answer
    names the line (counted in CRLFs), e.g. ``line 3: a bare CR or LF ...``.
    """
    stuffer, decoder = DotStuffer(), DataDecoder(line_limit)
    for start in range(0, len(message), _CHECK_CHUNK):
        decoder.feed(stuffer.feed(message[start : start + _CHECK_CHUNK]))
    decoder.feed(stuffer.finish())
    if decoder.line_too_long:
        longest = line_limit - 2
        start = 0
        for line in message.split(CRLF):  # the failure path: a Python loop is fine here
            if len(line) > longest:
                break
            start += len(line) + 2
        return f"{_line(message, start)}: longer than {longest} octets (the limit is {line_limit} with CRLF)"
    if decoder.bad_line_end:
        found = _BARE.search(message)
        return f"{_line(message, found.start() if found else 0)}: a bare CR or LF ({BARE_LINE_END})"
    if decoder.nul:
        return f"{_line(message, message.find(_NUL))}: a NUL octet ({NUL})"
    if message.endswith(b"\r"):
        return f"{_line(message, len(message) - 1)}: a bare CR or LF ({BARE_LINE_END})"
    if message and not message.endswith(CRLF):
        return f"{_line(message, len(message))}: does not end with CRLF"
    return None


def _line(message: bytes, offset: int) -> str:
    return f"line {message.count(CRLF, 0, offset) + 1}"


class DotStuffer:
    """Encodes a body for DATA: doubles a leading dot on every line.

    State crosses chunk boundaries (a chunk may end inside ``CRLF .``), and
    the first line of the body is a line start too.  ``finish`` ends an
    unterminated last line and appends the ``.`` line.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._after_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        out = chunk.replace(b"\r\n.", b"\r\n..")
        if self._line_start and chunk[:1] == b".":
            out = b"." + out
        elif self._after_cr and chunk[:2] == b"\n.":
            out = b"\n.." + out[2:]
        self._line_start = chunk.endswith(CRLF) or (self._after_cr and chunk == b"\n")
        self._after_cr = chunk.endswith(b"\r")
        return out

    def finish(self) -> bytes:
        if self._line_start:
            tail = b".\r\n"
        elif self._after_cr:
            tail = b"\n.\r\n"
        else:
            tail = b"\r\n.\r\n"
        self._line_start, self._after_cr = True, False
        return tail
