"""SMTP replies: building them (with enhanced status codes) and parsing them.

Every reply this peer sends carries an RFC 3463 enhanced status code, because
ENHANCEDSTATUSCODES (RFC 2034) is always advertised and a client that sees the
keyword may rely on it for every reply after the greeting.  The code must be of
the reply's class (``4.x.x`` for a 4xx): ``Reply`` refuses anything else with
``ValueError``, so a wrong literal fails the first test that builds it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

MAX_REPLY_LINE = 512  # octets a reply line may take, code and CRLF included (RFC 5321 §4.5.3.1.5)
_LONGEST_TEXT = MAX_REPLY_LINE - 2
_CUT = "..."

_ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3}$")
_ENHANCED_TEXT = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")


@functools.lru_cache(maxsize=512)
def enhanced_agrees(code: int, enhanced: str) -> bool:
    """``enhanced`` is an RFC 3463 code (``class.subject.detail``) of the same class as ``code``:
    ``2.x.x`` for 2xx, ``4.x.x`` for 4xx, ``5.x.x`` for 5xx (RFC 3463 §2; 3xx has none)."""
    return bool(_ENHANCED_TEXT.fullmatch(enhanced)) and int(enhanced[0]) == code // 100


@dataclass(frozen=True)
class Reply:
    """One SMTP reply; ``lines`` holds the text lines without the code."""

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    def __post_init__(self) -> None:
        if self.enhanced is not None and not enhanced_agrees(self.code, self.enhanced):
            raise ValueError(
                f"enhanced status code {self.enhanced!r} does not fit reply code {self.code} "
                "(RFC 3463: 2.x.x, 4.x.x or 5.x.x, the class of the reply)"
            )

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self) -> bytes:
        """Serialise as one or more ``code-text`` / ``code text`` lines.

        The enhanced code is repeated on every line, as RFC 2034 §4 shows.
        Whatever the text holds (client input echoed by a policy, a CR or LF,
        non-ASCII), each line comes out as printable ASCII of at most 512
        octets with its CRLF: anything else is escaped (``\\x1b``) and a
        longer line is cut, ending in ``...`` (see ``printable``).
        """
        lines = self.lines
        if len(lines) == 1:  # the usual case, kept short: it is on every command's path
            line = f"{self.code} {self.enhanced} {lines[0]}" if self.enhanced else f"{self.code} {lines[0]}"
            if line[-1] == " " and self.code != 334:
                line = line.rstrip(" ")
            if len(line) <= _LONGEST_TEXT and line.isascii() and line.isprintable():
                return (line + "\r\n").encode("ascii")
        out = []
        lines = lines or ("",)
        last = len(lines) - 1
        enhanced = f"{self.enhanced} " if self.enhanced else ""
        more, final = f"{self.code}-{enhanced}", f"{self.code} {enhanced}"
        # RFC 4954 §4: an AUTH challenge is "334" SP [base64], even when empty (PLAIN's first).
        strip = self.code != 334
        for i, line in enumerate(lines):
            text = (final if i == last else more) + line
            if strip:
                text = text.rstrip(" ")
            if len(text) > _LONGEST_TEXT or not (text.isascii() and text.isprintable()):
                text = printable(text, _LONGEST_TEXT)
            out.append(text)
        out.append("")
        return "\r\n".join(out).encode("ascii")

    def __str__(self) -> str:
        enh = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {enh}{self.text}"


def printable(text: str, limit: int) -> str:
    """``text`` as a reply may show it: printable ASCII, at most ``limit`` characters.

    Every other character is escaped as Python writes it (``\\x00``,
    ``\\x1b``, ``\\xe9``, ``\\u202e``, ``\\U0001f600``), so a terminal
    escape sequence or a NUL sent by a client is shown, never passed on; a
    longer result is cut and ends in ``...``.  Use it wherever client text is
    echoed; ``Reply.to_bytes`` applies it to any line that needs it.
    """
    if len(text) > limit + 1:
        text = text[: limit + 1]  # each character is at least one once escaped: no need to escape the rest
    if not (text.isascii() and text.isprintable()):
        text = "".join(c if " " <= c <= "~" else _escaped(c) for c in text)
    if len(text) > limit:
        text = text[: limit - len(_CUT)] + _CUT
    return text


def _escaped(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def reply(code: int, enhanced: str | None, *lines: str) -> Reply:
    """Shorthand used throughout the engine: ``reply(250, "2.1.0", "OK")``."""
    return Reply(code, tuple(lines) or ("",), enhanced)


class ReplyParser:
    """Incremental parser for (possibly multi-line) replies from a server.

    Tolerant on purpose: accepts a bare code line (``250``), LF-only line ends
    from sloppy servers, and lines whose continuation code differs (taking the
    code of the final line, as RFC 5321 §4.2.1 tells clients to).
    """

    def __init__(self, max_line: int = 4096, max_lines: int = 1000) -> None:
        self._buf = bytearray()
        self._pending: list[str] = []
        self._max_line = max_line
        self._max_lines = max_lines

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None until more bytes arrive.

        One at a time, so that a caller that turns around after a reply can
        hand the bytes behind it to the new role unparsed.
        """
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self._max_line:
                    raise ProtocolError("reply line too long")
                return None
            raw = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            if len(raw) < 3 or not raw[:3].isdigit() or raw[3:4] not in (b"", b" ", b"-"):
                raise ProtocolError(f"malformed reply line {raw[:80]!r}")
            self._pending.append(raw.decode("utf-8", "replace"))
            if len(self._pending) > self._max_lines:
                raise ProtocolError("reply has too many lines")
            if raw[3:4] != b"-":
                lines, self._pending = self._pending, []
                return _assemble(lines)

    def take_rest(self) -> bytes:
        """Return (and forget) bytes not yet consumed; used at a role swap."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def _assemble(raw_lines: list[str]) -> Reply:
    code = int(raw_lines[-1][:3])
    texts = [line[4:] for line in raw_lines]
    enhanced = None
    first = texts[0].split(" ", 1)
    if first and _ENHANCED.match(first[0].encode()) and first[0][0] == str(code)[0]:
        enhanced = first[0]
        stripped = []
        for t in texts:
            head, _, tail = t.partition(" ")
            stripped.append(tail if head == enhanced else t)
        texts = stripped
    return Reply(code, tuple(texts), enhanced)


class ProtocolError(Exception):
    """The peer broke the protocol beyond what a reply can fix."""
