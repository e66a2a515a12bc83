"""Delivery status notifications (bounces and delay warnings), RFC 3464 / RFC 6522.

A pure module: no Twisted, no I/O.  :func:`build_dsn` returns the bytes of a
complete message that the queue runner spools like any other, with the null
reverse-path ``MAIL FROM:<>`` (RFC 5321 §4.5.5) and the original sender as the
only recipient.  :func:`bounce_allowed` says whether a message may be bounced
at all: a message from the null reverse-path never is, so that two mail
systems can never bounce bounces at each other forever (RFC 5321 §6.1).

The generator must never be the reason a message is lost, so it accepts
whatever the spool holds -- 8-bit bytes, bare LFs, malformed or endless
header sections, CR/LF smuggled into a remote reply -- and still produces a
well-formed message.  The result is always 7-bit (so it can be relayed to a
server without 8BITMIME), uses CRLF line ends and has no line longer than
998 octets.  The one exception is a sender whose address is not ASCII: the
``To:`` header then carries it in UTF-8, since the DSN can only travel to it
over SMTPUTF8 anyway.
"""

from __future__ import annotations

import binascii
import email.policy
import email.utils
import re
import textwrap
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage

__all__ = ["FailedRecipient", "bounce_allowed", "build_dsn"]

# Headers that the parser read from the original (message/rfc822 return) are
# written back as they came, not refolded: the returned copy should be the
# message the sender sent.  cte_type="7bit" makes set_content pick
# quoted-printable or base64 rather than 8bit for non-ASCII text.
_POLICY = email.policy.SMTP.clone(refold_source="none", cte_type="7bit")
_POLICY_UTF8 = _POLICY.clone(utf8=True)

_ACTIONS = ("failed", "delayed")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF
_FOLD_AT = 78
_MAX_WORD = 900  # a longer unbreakable word in a DSN field is cut so the line stays under 998
_MAX_DIAGNOSTIC = 2000
_LINE_END = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_ADDRESS_TYPE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)\s*;\s*(.*)$", re.DOTALL)
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")

# A few RFC 3463 subject.detail codes worth spelling out to a human reader.
_STATUS_TEXT = {
    "1.1": "the mailbox does not exist",
    "1.2": "the destination domain does not exist or does not accept mail",
    "1.3": "the address is not valid",
    "2.1": "the mailbox is disabled",
    "2.2": "the mailbox is full",
    "2.3": "the message is too large for the recipient",
    "3.4": "the message is too large for the destination system",
    "4.1": "the destination server did not answer",
    "4.2": "the connection was dropped",
    "4.4": "the destination could not be reached",
    "4.6": "a mail loop was detected",
    "4.7": "the message was in the queue too long",
    "6.3": "the destination takes only 7-bit mail, and the message could not be converted",
    "7.1": "delivery was refused by policy",
}


@dataclass(frozen=True)
class FailedRecipient:
    """What happened to one recipient: the input for one per-recipient DSN field group.

    ``status`` and ``diagnostic`` usually come from a remote reply and are
    taken as they are; :func:`build_dsn` sanitises them.  ``action`` is the
    one field that our own code chooses, so it is checked here, where a
    mistake is still the caller's.
    """

    address: str  # the forward-path as given in RCPT (without <>)
    status: str  # RFC 3463 code, e.g. "5.1.1" or "4.4.7"
    remote_mta: str | None  # the host that answered, e.g. "mx.example.org" (None if we failed locally)
    diagnostic: str | None  # the remote reply text as received, e.g. "550 5.1.1 no such user"
    action: str = "failed"  # "failed" or "delayed" (delay warnings)
    original_recipient: str | None = None  # ORCPT if known

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"action must be one of {_ACTIONS}, not {self.action!r}")


def bounce_allowed(reverse_path: str) -> bool:
    """False for the null reverse-path (``""`` or ``"<>"``): a bounce is never bounced.

    RFC 5321 §4.5.5 and §6.1: notifications are sent from the null path, and
    a failure to deliver one must not produce another, or two systems could
    bounce mail at each other forever.
    """
    path = reverse_path.strip()
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1].strip()
    return path != ""


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: list[FailedRecipient],
    original: bytes,
    queue_id: str,
    arrival: datetime,
    received_from: str | None = None,
    return_content: str = "headers",
    max_content: int = 64 * 1024,
    now: datetime | None = None,
    message_id_domain: str | None = None,
) -> bytes:
    """A ``multipart/report; report-type=delivery-status`` message for ``sender``, as bytes.

    ``recipients`` are reported together in one DSN (one message produces one
    bounce, however many of its recipients failed).  ``return_content`` is
    ``"headers"`` (the original's header section as ``text/rfc822-headers``,
    the default: enough to identify the message without echoing a large or
    unwanted body back) or ``"full"`` (the whole original as
    ``message/rfc822``).  A full return falls back to headers only when the
    original is larger than ``max_content`` or could not be carried as-is in
    a 7-bit message (8-bit bytes, lines over 998 octets, NULs), because
    ``message/rfc822`` may not be re-encoded (RFC 2046 §5.2.1).

    ``arrival`` and ``now`` should be timezone-aware; naive values are taken
    as UTC.  Raises ``ValueError`` only for caller mistakes: a null sender
    (check :func:`bounce_allowed` first), no recipients, or an unknown
    ``return_content``.  Bad data in ``original`` or in remote replies never
    raises.
    """
    if not bounce_allowed(sender):
        raise ValueError("no DSN for the null reverse-path (RFC 5321 §6.1): check bounce_allowed() first")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if return_content not in ("headers", "full"):
        raise ValueError(f"return_content must be 'headers' or 'full', not {return_content!r}")
    now = _aware(now if now is not None else datetime.now(UTC))
    arrival = _aware(arrival)
    mta = _hostname(reporting_mta) or "localhost"
    msgid_domain = _hostname(message_id_domain) if message_id_domain else mta
    mailbox = _strip_route(_one_line(_unbracket(sender)))
    delayed = all(r.action == "delayed" for r in recipients)

    text = _explanation(mta, recipients, queue_id, arrival, delayed)
    status = _delivery_status(mta, recipients, queue_id, arrival, received_from, now)
    if return_content == "full":
        try:
            dsn = _assemble(
                mta, mailbox, msgid_domain, now, delayed, text, status, _full_part(original, max_content)
            )
            if _well_formed(dsn, mailbox.isascii()):
                return dsn
        except Exception:  # any trouble with the original: return its headers instead
            pass
    return _assemble(
        mta, mailbox, msgid_domain, now, delayed, text, status, _headers_part(original, max_content)
    )


# --- the message ---------------------------------------------------------------------------------------


def _assemble(
    mta: str,
    mailbox: str,
    msgid_domain: str,
    now: datetime,
    delayed: bool,
    text: str,
    status: EmailMessage,
    original_part: EmailMessage,
) -> bytes:
    """The outer message around the three parts."""
    policy = _POLICY if mailbox.isascii() else _POLICY_UTF8
    msg = EmailMessage(policy=policy)
    msg["From"] = Address(display_name="Mail Delivery System", username="MAILER-DAEMON", domain=mta)
    msg["To"] = _to_address(mailbox)
    msg["Subject"] = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid(domain=msgid_domain)
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"

    notification = EmailMessage(policy=policy)
    notification.set_content(text)
    del notification["MIME-Version"]  # set_content adds it; it belongs on the outer message only
    notification["Content-Description"] = "Notification"
    for part in (notification, status, original_part):
        msg.attach(part)
    return msg.as_bytes(policy=policy)


def _to_address(mailbox: str) -> Address | str:
    """The sender as a ``To:`` value; a malformed address is quoted rather than refused."""
    if not mailbox:
        return "undisclosed-recipients:;"
    local, at, domain = mailbox.rpartition("@")
    if not at:
        return Address(username=mailbox)
    try:
        probe = EmailMessage(policy=_POLICY_UTF8)
        probe["To"] = mailbox
        if not probe["To"].defects and len(probe["To"].addresses) == 1:
            return mailbox
    except Exception:  # fall through to quoting
        pass
    return Address(username=local, domain=domain)


def _explanation(
    mta: str, recipients: list[FailedRecipient], queue_id: str, arrival: datetime, delayed: bool
) -> str:
    """The human-readable first part: what happened, to whom, and whether anything will still happen."""
    if delayed:
        intro = (
            f"This is the mail system at host {mta}. Your message has not yet been delivered to the "
            "recipients listed below. This is only a warning: the mail system is still trying, and "
            "you do not need to send the message again. You will be told if it finally fails."
        )
    else:
        intro = (
            f"This is the mail system at host {mta}. Your message could not be delivered to the "
            "recipients listed below. The mail system has given up on them and will not try again. "
            "The delivery report and the original message's headers (or the message itself) "
            "are attached."
        )
    out = [*textwrap.wrap(intro, 76), ""]
    out.append(f"Queue ID: {_one_line(queue_id)}")
    out.append(f"Arrived:  {email.utils.format_datetime(arrival)}")
    out.append("")
    for r in recipients:
        address = _one_line(_unbracket(r.address))
        status = _status(r)
        where = f"host {_one_line(r.remote_mta)}" if r.remote_mta else f"the mail system at {mta}"
        if r.diagnostic:
            what = f"{where} said: {_one_line(r.diagnostic)[:_MAX_DIAGNOSTIC]}"
        else:
            what = (
                f"delivery failed at {where}" if r.action == "failed" else f"delivery is delayed at {where}"
            )
        out.extend(
            textwrap.wrap(f"<{address}>: {what}", 76, subsequent_indent="    ", break_on_hyphens=False)
        )
        meaning = _STATUS_TEXT.get(status.split(".", 1)[1])
        outcome = "still being retried" if r.action == "delayed" else "will not be retried"
        detail = f"(status {status}{': ' + meaning if meaning else ''}; {outcome})"
        out.extend(textwrap.wrap(detail, 76, initial_indent="    ", subsequent_indent="    "))
        out.append("")
    return "\n".join(out)


def _delivery_status(
    mta: str,
    recipients: list[FailedRecipient],
    queue_id: str,
    arrival: datetime,
    received_from: str | None,
    now: datetime,
) -> EmailMessage:
    """The ``message/delivery-status`` part (RFC 3464 §2).

    The field groups are written as text and parsed, rather than set as
    header objects: the email package would fold a long unbreakable word in
    a ``Diagnostic-Code`` into RFC 2047 encoded-words, which DSN readers do
    not decode.  Parsed fields are written back as folded here.
    """
    groups = []
    per_message = [_field("Reporting-MTA", f"dns; {mta}")]
    if queue_id:
        per_message.append(_field("X-Queue-ID", _ascii(queue_id)))
    if received_from:
        per_message.append(_field("Received-From-MTA", f"dns; {_ascii(received_from)}"))
    per_message.append(_field("Arrival-Date", email.utils.format_datetime(arrival)))
    groups.append(per_message)
    last_attempt = email.utils.format_datetime(now)
    for r in recipients:
        group = []
        if r.original_recipient:
            group.append(_field("Original-Recipient", _original_recipient(r.original_recipient)))
        group.append(_field("Final-Recipient", _typed_address(_unbracket(r.address))))
        group.append(_field("Action", r.action))
        group.append(_field("Status", _status(r)))
        if r.remote_mta:
            group.append(_field("Remote-MTA", f"dns; {_ascii(r.remote_mta)}"))
        if r.diagnostic:
            group.append(_field("Diagnostic-Code", f"smtp; {_ascii(r.diagnostic)[:_MAX_DIAGNOSTIC]}"))
        group.append(_field("Last-Attempt-Date", last_attempt))
        groups.append(group)
    body = "\r\n\r\n".join("\r\n".join(g) for g in groups) + "\r\n"
    source = b"Content-Type: message/delivery-status\r\n\r\n" + body.encode("ascii")
    part = email.message_from_bytes(source, _class=EmailMessage, policy=_POLICY)
    part["Content-Description"] = "Delivery report"
    return part


def _headers_part(original: bytes, max_content: int) -> EmailMessage:
    """The original's header section as ``text/rfc822-headers`` (RFC 6522 §4), 7-bit safe.

    Line ends are made CRLF; the section ends at the first empty line or at
    the first line that is neither a field nor a continuation (where a parser
    would start the body too).  It is cut at a field boundary once it exceeds
    ``max_content``.  If anything is not 7-bit ASCII or a line is too long,
    the part is quoted-printable: readable where it matters, never corrupt.
    """
    fields: list[list[bytes]] = []
    size = 0
    for n, line in enumerate(_lines(original)):
        if line == b"":
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1].append(line)
                size += len(line) + 2
            continue
        if n == 0 and line.startswith(b"From "):  # an mbox separator, not a field
            continue
        if not _FIELD_NAME.match(line):
            break
        fields.append([line])
        size += len(line) + 2
        if size > max_content:
            break
    while fields and sum(len(x) + 2 for f in fields for x in f) > max_content:
        fields.pop()
    lines = [line for f in fields for line in f]

    part = EmailMessage(policy=_POLICY)
    raw = b"\r\n".join(lines)
    if raw.isascii() and b"\x00" not in raw and all(len(x) <= _MAX_LINE for x in lines):
        part["Content-Type"] = "text/rfc822-headers"
        part["Content-Transfer-Encoding"] = "7bit"
        payload = raw.decode("ascii")
    else:
        try:
            raw.decode("utf-8")
            part["Content-Type"] = "text/rfc822-headers; charset=utf-8"  # RFC 6532 headers
        except UnicodeDecodeError:
            # Not "unknown-8bit" (RFC 1428): readers such as Python's get_content() fail on it,
            # while an undeclared charset lets them substitute the odd bytes.
            part["Content-Type"] = "text/rfc822-headers"
        part["Content-Transfer-Encoding"] = "quoted-printable"
        payload = "\r\n".join(
            binascii.b2a_qp(x, quotetabs=False, istext=True, header=False).decode("ascii") for x in lines
        )
    part.set_payload(payload + "\r\n" if payload else "")
    part["Content-Description"] = "Undelivered Message Headers"
    return part


def _full_part(original: bytes, max_content: int) -> EmailMessage:
    """The whole original as ``message/rfc822``, or ``ValueError`` if it cannot travel as 7-bit."""
    if len(original) > max_content:  # making line ends CRLF never shortens it
        raise ValueError("original too large to return in full")
    lines = list(_lines(original))
    if lines and lines[-1] == b"":
        lines.pop()
    raw = b"".join(x + b"\r\n" for x in lines)
    if len(raw) > max_content:
        raise ValueError("original too large to return in full")
    if not raw.isascii() or b"\x00" in raw or any(len(x) > _MAX_LINE for x in lines):
        raise ValueError("original is not 7-bit clean")
    inner = email.message_from_bytes(raw, _class=EmailMessage, policy=_POLICY)
    part = EmailMessage(policy=_POLICY)
    part.set_content(inner, cte="7bit")
    del part["MIME-Version"]
    part["Content-Description"] = "Undelivered Message"
    return part


def _lines(data: bytes) -> Iterator[bytes]:
    """The lines of ``data``, ended by CRLF, LF or a bare CR; lazily, so a header scan stops early."""
    start = 0
    for end in _LINE_END.finditer(data):
        yield data[start : end.start()]
        start = end.end()
    yield data[start:]


def _well_formed(dsn: bytes, ascii_only: bool) -> bool:
    """The invariants every DSN must keep; a full return that breaks them is replaced by headers."""
    if ascii_only and not dsn.isascii():
        return False
    if b"\x00" in dsn or not dsn.endswith(b"\r\n"):
        return False
    lines = dsn.split(b"\r\n")
    return all(b"\r" not in x and b"\n" not in x and len(x) <= _MAX_LINE for x in lines)


# --- fields and sanitising --------------------------------------------------------------------------------


def _field(name: str, value: str) -> str:
    """``Name: value``, folded at spaces to 78 columns where possible; words are cut to stay under 998."""
    words = [w[:_MAX_WORD] for w in value.split()]
    lines = [f"{name}:"]
    for word in words:
        if len(lines[-1]) + 1 + len(word) > _FOLD_AT and len(lines[-1]) > len(name) + 1:
            lines.append("")
        lines[-1] += " " + word
    return "\r\n".join(lines)


def _one_line(text: str | None) -> str:
    """Text with every control character, CR and LF included, as a space, and runs of spaces as one.

    Category C also covers lone surrogates (undecodable bytes) and Z[lp] the
    Unicode line separators, which ``str.splitlines`` would break on.
    """
    if not text:
        return ""
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" else c for c in text)
    return " ".join(cleaned.split())


def _ascii(text: str | None) -> str:
    """:func:`_one_line`, and anything beyond ASCII as ``?``: DSN fields are 7-bit."""
    return "".join(c if c.isascii() else "?" for c in _one_line(text))


def _unbracket(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address


def _strip_route(path: str) -> str:
    """The mailbox of an RFC 821 source route ``@ONE,@TWO:JOE@THREE``: where a reply is read."""
    if path.startswith("@") and ":" in path:
        return path.split(":", 1)[1]
    return path


def _typed_address(address: str) -> str:
    """``rfc822; addr``, or RFC 6533's ``utf-8; addr`` with ``\\x{HEX}`` escapes for a non-ASCII one."""
    address = _one_line(address)
    if address.isascii():
        return f"rfc822; {address}"
    escaped = "".join(c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):X}}}" for c in address)
    return f"utf-8; {escaped}"


def _original_recipient(orcpt: str) -> str:
    """An ORCPT as given in RCPT (``rfc822;joe+2Bx@y``, xtext) or a bare address, as a DSN field value."""
    orcpt = _one_line(orcpt)
    match = _ADDRESS_TYPE.match(orcpt)
    if match is None:
        return _typed_address(_unbracket(orcpt))
    kind, value = match.groups()
    if kind.lower() == "rfc822":
        value = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)  # RFC 3461 §4
        return _typed_address(_one_line(value))
    return f"{kind}; {_ascii(value)}"


def _status(r: FailedRecipient) -> str:
    """The RFC 3463 code, or a generic one of the right class when what we were given is not one."""
    status = r.status.strip() if isinstance(r.status, str) else ""
    if _STATUS.match(status):
        return status
    return "4.0.0" if r.action == "delayed" else "5.0.0"


def _hostname(name: str | None) -> str:
    """A host name fit for a header: one line, IDNA-encoded if need be, ``?`` if even that fails."""
    name = _one_line(name).replace(" ", "")
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return _ascii(name)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
