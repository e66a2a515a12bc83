"""8-bit mail made 7-bit for a next hop without 8BITMIME (RFC 6152 §3), with ``email``.

RFC 6152 §3 leaves a relay two choices for an 8-bit message and a server
that does not offer 8BITMIME: convert it to 7-bit MIME, or return it.  Sending
it anyway is not one of them.  :func:`to_7bit` converts where MIME allows it
and keeps the message valid MIME:

* a part whose content has octets above 127 is re-encoded: text as
  quoted-printable (readable where it is ASCII), anything else as base64;
  its other headers (``Content-Disposition``, a declared charset) stay;
* a message without MIME structure (no ``Content-Type``) is ``text/plain``
  by definition (RFC 2045 §5.2), so it becomes exactly that, with
  ``MIME-Version: 1.0`` and a charset: ``utf-8`` if its text decodes as
  UTF-8, else ``unknown-8bit`` (RFC 1428);
* a header field with 8-bit octets becomes RFC 2047 encoded-words (the
  ``email`` package's own folding): ``utf-8`` ones for an unstructured field
  (``Subject:``) that occurs once and is UTF-8, ``unknown-8bit`` ones
  otherwise (the octets kept as they were); every other header is written
  as it came;
* ``multipart`` and ``message/rfc822`` containers are converted part by part
  and declare ``7bit``.

It refuses (:class:`Unconvertible`, which the relay turns into a bounce with
``5.6.3 Conversion required but not supported``) what cannot be converted
without breaking it: 8-bit content under ``multipart/signed`` or
``multipart/encrypted`` (re-encoding invalidates the signature, RFC 1847
§2.1), in ``message/partial`` or ``message/external-body`` (RFC 2046 §5.2.2,
§5.2.3: never re-encoded), anything that still is not 7-bit afterwards (an
8-bit preamble), and a message over :data:`MAX_SIZE`, which would have to be
held in memory several times over.

A pure module: bytes in, bytes out, no Twisted, no files.  The relay calls
it in a thread (``relay/attempt.py``).
"""

from __future__ import annotations

import email
import email.encoders
import email.policy
import email.quoprimime
from email.headerregistry import UnstructuredHeader
from email.message import EmailMessage

__all__ = ["MAX_SIZE", "Unconvertible", "check_size", "is_7bit", "to_7bit"]

MAX_SIZE = 10 * 1024 * 1024  # octets; a larger 8-bit message is returned rather than converted
_MAX_LINE = 998

# Headers written back as they came (refold_source="none"), except a field with 8-bit
# octets, which cte_type="7bit" makes the generator encode (RFC 2047); CRLF line ends.
_POLICY = email.policy.SMTP.clone(refold_source="none", cte_type="7bit")

_NEVER_REENCODED = {"message/partial", "message/external-body"}
_SIGNED = {"multipart/signed", "multipart/encrypted"}


class Unconvertible(ValueError):
    """The message cannot be made 7-bit without breaking it; the text says why."""


def is_7bit(data: bytes) -> bool:
    """What a server without 8BITMIME may be sent: ASCII, lines of at most 998 octets."""
    return data.isascii() and all(len(line) <= _MAX_LINE + 1 for line in data.split(b"\n"))


def check_size(size: int) -> None:
    """Refuse a message too large to convert here, before it is read at all."""
    if size > MAX_SIZE:
        raise Unconvertible(f"it is larger ({size} octets) than the {MAX_SIZE} converted here")


def to_7bit(message: bytes) -> bytes:
    """``message`` (CRLF line ends) as 7-bit MIME; unchanged if it already is 7-bit."""
    if is_7bit(message):
        return message
    check_size(len(message))
    msg = email.message_from_bytes(message, _class=EmailMessage, policy=_POLICY)
    _utf8_headers(msg)
    if "Content-Type" not in msg and _eight_bit(msg):
        _make_plain_text(msg)
    _convert(msg, inside=None)
    try:
        out = msg.as_bytes(policy=_POLICY)
    except Exception as e:  # a header the email package cannot encode
        raise Unconvertible(f"its header section cannot be converted ({e.__class__.__name__})") from None
    if not is_7bit(out):
        raise Unconvertible("it has 8-bit octets outside any MIME part (a preamble or an epilogue)")
    return out


def _utf8_headers(msg: EmailMessage) -> None:
    """An unstructured field in raw UTF-8 is given as text, so that the generator
    encodes it as ``utf-8`` encoded-words rather than ``unknown-8bit`` ones.

    The parsed value is the UTF-8 reading of the field, with U+FFFD where it is
    not UTF-8 (then it is left alone: the raw octets stay).  Structured fields
    (addresses) are left alone too: their parsed value is re-rendered, not the
    text as it came.
    """
    for name, value in msg.items():
        text = str(value)
        if (
            not text.isascii()
            and "\ufffd" not in text
            and isinstance(value, UnstructuredHeader)
            and len(msg.get_all(name, [])) == 1
        ):
            msg.replace_header(name, text)


def _make_plain_text(msg: EmailMessage) -> None:
    """A message without MIME structure is text/plain (RFC 2045 §5.2): say so."""
    body = msg.get_payload(decode=True) or b""
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = f"text/plain; charset={_charset_of(body)}"


def _convert(part: EmailMessage, inside: str | None) -> None:
    """Re-encode every 8-bit leaf under ``part``; ``inside``: a signed container above it."""
    content_type = part.get_content_type()
    if content_type in _NEVER_REENCODED and any(_eight_bit(p) for p in part.walk()):
        raise Unconvertible(f"it has 8-bit content in a {content_type} part, which may not be re-encoded")
    if part.is_multipart():
        container = content_type if content_type in _SIGNED else inside
        for child in part.iter_parts() if content_type != "message/rfc822" else part.get_payload():
            _convert(child, container)
        _declare(part, "7bit")
        return
    if not _eight_bit(part):
        return
    if inside is not None:
        raise Unconvertible(f"it has 8-bit content in a {inside} part, which converting would break")
    data = part.get_payload(decode=True) or b""
    if part.get_content_maintype() == "text":
        charset = part.get_content_charset()
        if charset is None or charset in ("us-ascii", "ascii"):
            part.set_param("charset", _charset_of(data))
        # The email package's own quoted-printable for text (line breaks kept as line breaks).
        part.set_payload(email.quoprimime.body_encode(data.decode("latin-1"), eol="\r\n"))
        _declare(part, "quoted-printable")
    else:
        _declare(part, None)
        email.encoders.encode_base64(part)  # sets Content-Transfer-Encoding: base64


def _eight_bit(part: EmailMessage) -> bool:
    """The part's own content (not a container's), as it is in the message, has
    octets above 127."""
    if part.is_multipart():
        return False
    payload = part.get_payload()
    # A payload read from bytes keeps 8-bit octets as surrogates, which get_payload()
    # decodes (with replacement): either way the text is no longer ASCII.
    return isinstance(payload, str) and not payload.isascii()


def _declare(part: EmailMessage, encoding: str | None) -> None:
    """Set (or, with None, remove) the part's Content-Transfer-Encoding, in place."""
    if encoding is None:
        del part["Content-Transfer-Encoding"]
    elif "Content-Transfer-Encoding" in part:
        if part["Content-Transfer-Encoding"].strip().lower() in ("8bit", "binary") or encoding != "7bit":
            part.replace_header("Content-Transfer-Encoding", encoding)
    elif encoding != "7bit":
        part["Content-Transfer-Encoding"] = encoding


def _charset_of(data: bytes) -> str:
    """``utf-8`` for text that decodes as UTF-8, else ``unknown-8bit`` (RFC 1428)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown-8bit"
    return "utf-8"
