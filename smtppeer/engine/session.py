"""What a session knows about itself, as values, and what survives a change.

RFC 3207 §4.2 and RFC 821 §3.8 say what a connection forgets when it goes
over to TLS or turns around; the adapter does not decide that, it asks
these functions, so the rules are tested here with plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .address import Path


@dataclass(frozen=True)
class Transaction:
    """The state between MAIL and the end of DATA; replaced, never changed, so a
    hook that keeps one keeps what was true when it was asked."""

    reverse_path: Path
    params: dict[str, str | None]
    recipients: tuple[Path, ...] = ()
    utf8: bool = False

    def with_recipient(self, path: Path) -> Transaction:
        return replace(self, recipients=(*self.recipients, path))


@dataclass(frozen=True)
class SessionState:
    """What one connection has established, whichever role it plays now.

    ``secure`` (TLS) belongs to the connection; ``helo_name``, ``esmtp`` and
    ``authenticated`` (the client's AUTH identity) belong to the receiver
    role that learnt them; ``turned`` says the connection has changed roles
    (a sender that took over a turned connection does not STARTTLS or AUTH:
    it is as secure as it will get).
    """

    secure: bool = False
    helo_name: str | None = None
    esmtp: bool = False
    authenticated: str | None = None
    turned: bool = False

    def after_starttls(self) -> SessionState:
        """RFC 3207 §4.2: nothing learnt in clear survives the handshake."""
        return SessionState(secure=True, turned=self.turned)

    def after_turn(self) -> SessionState:
        """Both sides start "as if the channel just opened" (RFC 821 §3.8), on the
        same connection: TLS stays, a greeting and an identity do not (an
        identity was the client's, and the client is now the server)."""
        return SessionState(secure=self.secure, turned=True)
