"""The ``Received:`` trace header every hop prepends (RFC 5321 §4.4)."""

from __future__ import annotations

import email.utils
import time


def protocol_name(esmtp: bool, utf8: bool = False, tls: bool = False, auth: bool = False) -> str:
    """The ``with`` keyword from the IANA mail transmission types (RFC 3848, RFC 6531)."""
    base = "ESMTP" if esmtp else "SMTP"
    if utf8:
        base = "UTF8" + base
    return base + ("S" if tls else "") + ("A" if auth else "")


_date_cache: tuple[int, str] = (0, "")


def rfc5322_date(when: float | None = None) -> str:
    """The local date-time in RFC 5322 form, cached per second (it is on the hot path)."""
    global _date_cache
    now = int(time.time() if when is None else when)
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


def received_header(
    *,
    helo: str | None,
    client_literal: str,
    by: str,
    protocol: str,
    queue_id: str,
    recipient: str | None = None,
    when: float | None = None,
) -> bytes:
    """The folded header line, CRLF-terminated, ready to prepend to a body.

    ``for`` is given only with one recipient, so that a message to several
    people does not reveal the others' addresses (RFC 5321 §7.2).
    """
    date = rfc5322_date(when)
    lines = [
        f"Received: from {helo or 'unknown'} ({client_literal})",
        f"\tby {by} (smtppeer) with {protocol} id {queue_id}",
    ]
    if recipient:
        lines.append(f"\tfor <{recipient}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
