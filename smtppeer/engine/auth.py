"""AUTH (RFC 4954), server side: the SMTP framing around ``sasl``.

The mechanisms themselves live in ``sasl``; this module turns their steps
into 334 challenges, reads the client's answers as continuation lines (not
commands), and keeps the rules: EHLO first, not twice, not inside a
transaction, PLAIN and LOGIN only under TLS unless a listener allows them in
clear (538), ``*`` cancels (501), and after ``max_failures`` failed attempts
the session ends with 421.

Failures across sessions are not this module's to count (it has no clock and
sees one session): the adapter may set ``auth_gate`` on the receiver, which
is asked before each exchange starts and may refuse it (454), or end the
session (421).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable

from . import events as ev
from .extensions import Extension, ExtensionHost
from .replies import Reply, reply
from .sasl import (
    CLEAR_ONLY,
    NO_INITIAL_RESPONSE,
    SERVER_MECHANISMS,
    Challenge,
    Lookup,
    ServerExchange,
    Success,
    server_exchange,
)


def decode(text: str) -> bytes | None:
    """A base64 SASL message; ``=`` is the empty one (RFC 4954 §4); None if malformed."""
    text = text.strip()
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# RFC 3461 §4 xtext (hex digits taken in either case: the value is only checked).
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})+")


def _mail_auth(receiver: ExtensionHost, value: str | None) -> Reply | None:
    """RFC 4954 §5: a server that offers AUTH MUST accept ``MAIL ... AUTH=<mailbox>`` (xtext)
    even from an unauthenticated client.  Only its syntax is checked; nothing trusts it, which
    §5 allows (every client treated as insufficiently trusted, as if it had sent ``AUTH=<>``)."""
    if value is None or not _XTEXT.fullmatch(value):
        return reply(501, "5.5.4", "AUTH= needs an xtext mailbox or <>")
    return None


class Auth(Extension):
    keyword = "AUTH"
    mail_params = {"AUTH": _mail_auth}

    def __init__(
        self,
        lookup: Lookup,
        *,
        mechanisms: Iterable[str] = SERVER_MECHANISMS,
        allow_clear: bool = False,
        max_failures: int = 3,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        self.lookup = lookup
        self.mechanisms = tuple(m.upper() for m in mechanisms)
        self.allow_clear = allow_clear
        self.max_failures = max_failures
        self.nonce = nonce
        self.commands = {"AUTH": self._auth}

    def offered(self, receiver: ExtensionHost) -> tuple[str, ...]:
        if receiver.secure or self.allow_clear:
            return self.mechanisms
        return tuple(m for m in self.mechanisms if m not in CLEAR_ONLY)

    def ehlo_line(self, receiver: ExtensionHost) -> str | None:
        offered = self.offered(receiver)
        return f"AUTH {' '.join(offered)}" if offered else None

    def available(self, receiver: ExtensionHost) -> bool:
        """Even when nothing can be offered in clear, AUTH PLAIN gets its 538, not a 503."""
        return bool(self.mechanisms)

    def _auth(self, receiver: ExtensionHost, arg: str) -> Reply | None:
        if receiver.helo_name is None or not receiver.esmtp:
            return reply(503, "5.5.1", "Send EHLO first")
        if receiver.authenticated is not None:
            return reply(503, "5.5.1", "Already authenticated")
        if receiver.in_transaction:
            return reply(503, "5.5.1", "AUTH is not allowed inside a mail transaction")
        gate = receiver.auth_gate
        refusal = gate() if gate is not None else None
        if refusal is not None:
            if refusal.code == 421:
                receiver.close(refusal)
                receiver.emit(ev.Close("AUTH refused: too many failures from this client"))
                return None
            return refusal
        mechanism, _, initial_text = arg.strip().partition(" ")
        mechanism = mechanism.upper()
        if not mechanism or " " in initial_text.strip():
            return reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        if mechanism not in self.offered(receiver):
            if mechanism in self.mechanisms:
                return reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
            return reply(504, "5.5.4", "Unrecognized authentication type")
        if initial_text and mechanism in NO_INITIAL_RESPONSE:
            # RFC 4954 §4: an initial response to a server-first mechanism is a 501, not a failed login.
            return reply(501, "5.7.0", f"{mechanism} does not take an initial response")
        initial = None
        if initial_text:
            initial = decode(initial_text)
            if initial is None:
                return reply(501, "5.5.2", "Cannot decode the initial response (base64)")
        exchange = server_exchange(mechanism, self.lookup, receiver.hostname, nonce=self.nonce)
        self._advance(receiver, mechanism, exchange, lambda: exchange.start(initial))
        return None

    def _advance(self, receiver: ExtensionHost, mechanism: str, exchange: ServerExchange, step) -> None:
        """A failing credentials store is our problem, not the client's: 454, not 535."""
        try:
            result = step()
        except Exception as e:  # noqa: BLE001 - lookup is the service's code
            receiver.send_reply(reply(454, "4.7.0", "Temporary authentication failure"))
            receiver.emit(ev.AuthFailed(mechanism, f"credentials lookup failed: {e!r}"))
            return
        self._step(receiver, mechanism, exchange, result)

    def _step(self, receiver: ExtensionHost, mechanism: str, exchange: ServerExchange, step) -> None:
        if isinstance(step, Challenge):
            receiver.send_reply(reply(334, None, encode(step.data)))
            receiver.continuation = lambda line: self._continue(receiver, mechanism, exchange, line)
        elif isinstance(step, Success):
            receiver.authenticated = step.identity
            receiver.send_reply(reply(235, "2.7.0", "Authentication successful"))
            receiver.emit(ev.Authenticated(step.identity, mechanism))
        else:
            self._failed(receiver, mechanism, step.reason)

    def _continue(self, receiver: ExtensionHost, mechanism: str, exchange: ServerExchange, line: str) -> None:
        if line.strip() == "*":
            receiver.reject(reply(501, "5.0.0", "Authentication cancelled"))
            receiver.emit(ev.AuthFailed(mechanism, "cancelled by the client"))
            return
        data = decode(line)
        if data is None:
            receiver.reject(reply(501, "5.5.2", "Cannot decode the response (base64)"))
            receiver.emit(ev.AuthFailed(mechanism, "response was not base64"))
            return
        self._advance(receiver, mechanism, exchange, lambda: exchange.respond(data))

    def _failed(self, receiver: ExtensionHost, mechanism: str, reason: str) -> None:
        receiver.auth_failures += 1
        receiver.send_reply(reply(535, "5.7.8", "Authentication credentials invalid"))
        receiver.emit(ev.AuthFailed(mechanism, reason, guess=True))
        if receiver.auth_failures >= self.max_failures:
            receiver.close(reply(421, "4.7.0", f"{receiver.hostname} Too many failed authentications"))
            receiver.emit(ev.Close("too many failed AUTH attempts"))
