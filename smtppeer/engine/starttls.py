"""STARTTLS (RFC 3207), server side.

The engine's part is the sequencing and the reset: after a ``220`` nothing
more is parsed until the adapter has started the handshake and called
``Receiver.tls_started``, which drops whatever arrived in clear behind the
command — the plaintext command injection of CVE-2011-0411 cannot happen.
"""

from __future__ import annotations

from . import events as ev
from .extensions import Extension, ExtensionHost
from .replies import Reply, reply


class StartTls(Extension):
    keyword = "STARTTLS"

    def ehlo_line(self, receiver: ExtensionHost) -> str | None:
        return None if receiver.secure else self.keyword

    @staticmethod
    def _starttls(receiver: ExtensionHost, arg: str) -> Reply | ev.Event:
        if arg.strip():
            return reply(501, "5.5.4", "Syntax error (no parameters allowed)")
        if receiver.helo_name is None:
            return reply(503, "5.5.1", "Send EHLO first")
        if receiver.in_transaction:
            return reply(503, "5.5.1", "STARTTLS is not allowed inside a mail transaction")
        return ev.StartTLSRequested()

    commands = {"STARTTLS": _starttls}
