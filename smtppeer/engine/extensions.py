"""The ESMTP extension registry and the extensions every session offers.

An extension contributes an EHLO keyword line, MAIL/RCPT parameters it
understands, and commands of its own.  Later features (STARTTLS, AUTH, ETRN,
ATRN) plug in here; the receiver's core only consults the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .events import Event
from .limits import Limits
from .replies import Reply, reply


class ExtensionHost(Protocol):
    """What an extension sees of the receiver it is plugged into, and may do to it.

    ``Receiver`` is the one implementation.  Extensions are written against
    this, not against the receiver module, so the registry sits below the
    state machine that consults it.
    """

    hostname: str
    limits: Limits
    helo_name: str | None
    esmtp: bool
    secure: bool
    authenticated: str | None
    auth_failures: int
    # Set by the adapter: asked before an AUTH exchange starts; a reply refuses it
    # (421: and ends the session).  It knows what the engine cannot: other sessions, time.
    auth_gate: Callable[[], Reply | None] | None
    continuation: Callable[[str], None] | None  # an extension in mid-exchange takes the next line

    @property
    def in_transaction(self) -> bool: ...

    def send_reply(self, response: Reply) -> None: ...

    def reject(self, response: Reply) -> None: ...

    def emit(self, event: Event) -> None: ...

    def close(self, response: Reply) -> None: ...


# A parameter check returns None when the value is fine, or the reply to refuse with.
ParamCheck = Callable[[ExtensionHost, "str | None"], "Reply | None"]
# A command handler returns a reply (sent at once) or an event for the adapter.
CommandHandler = Callable[[ExtensionHost, str], "Reply | Event"]


class Extension:
    keyword: str = ""
    mail_params: dict[str, ParamCheck] = {}
    rcpt_params: dict[str, ParamCheck] = {}
    commands: dict[str, CommandHandler] = {}

    def ehlo_line(self, receiver: ExtensionHost) -> str | None:
        """The EHLO keyword line, or None when not offered in this state."""
        return self.keyword

    def available(self, receiver: ExtensionHost) -> bool:
        """May its commands be used now?  (Otherwise 503.)  By default: when offered."""
        return self.ehlo_line(receiver) is not None


class Pipelining(Extension):
    keyword = "PIPELINING"


class EnhancedStatusCodes(Extension):
    keyword = "ENHANCEDSTATUSCODES"


class EightBitMime(Extension):
    keyword = "8BITMIME"

    @staticmethod
    def _body(receiver: ExtensionHost, value: str | None) -> Reply | None:
        if value is None or value.upper() not in ("7BIT", "8BITMIME"):
            return reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
        return None

    mail_params = {"BODY": _body}


class Size(Extension):
    """RFC 1870: advertise the limit; refuse a declared size over it at MAIL."""

    keyword = "SIZE"

    def ehlo_line(self, receiver: ExtensionHost) -> str:
        return f"SIZE {receiver.limits.message_size}"

    @staticmethod
    def _size(receiver: ExtensionHost, value: str | None) -> Reply | None:
        if value is None or not value.isdigit() or len(value) > 20:
            return reply(501, "5.5.4", "SIZE needs a number of octets")
        if int(value) > receiver.limits.message_size:
            return reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        return None

    mail_params = {"SIZE": _size}


class SmtpUtf8(Extension):
    """RFC 6531: the MAIL parameter switches on UTF-8 paths for the transaction."""

    keyword = "SMTPUTF8"

    @staticmethod
    def _flag(receiver: ExtensionHost, value: str | None) -> Reply | None:
        if value is not None:
            return reply(501, "5.5.4", "SMTPUTF8 takes no value")
        return None

    mail_params = {"SMTPUTF8": _flag}


class Help(Extension):
    keyword = "HELP"


def default_extensions() -> list[Extension]:
    return [Pipelining(), Size(), EightBitMime(), EnhancedStatusCodes(), SmtpUtf8(), Help()]
