"""Who may AUTH, and who they are once they have.

Logins come from two places in the configuration: peers (a relationship
with another host: its AUTH identity owns its domains, so it may TURN, ATRN
and ETRN for them) and users (may submit and relay, own nothing).  The
engine's AUTH extension only sees ``lookup``; the receiving policy asks
``peer_for`` what an authenticated login may take.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from smtppeer.engine.sasl import SERVER_MECHANISMS, Credentials, parse_secret


@dataclass(frozen=True)
class Login:
    """One login: a user's, or a peer's (``peer`` names it: that login is the peer)."""

    name: str
    password: str | None = None
    password_hash: str | None = None  # RFC 5803
    peer: str | None = None


class Accounts:
    def __init__(self, logins: Iterable[Login] = ()) -> None:
        self._credentials: dict[str, Credentials] = {}
        self._peers: dict[str, str] = {}  # login -> peer name
        for login in logins:
            secret = parse_secret(login.password_hash) if login.password_hash else None
            self._credentials[login.name] = Credentials(login.name, password=login.password, secret=secret)
            if login.peer is not None:
                self._peers[login.name] = login.peer

    def __bool__(self) -> bool:
        return bool(self._credentials)

    def lookup(self, username: str) -> Credentials | None:
        return self._credentials.get(username)

    def peer_for(self, login: str | None) -> str | None:
        """The peer an authenticated login speaks for, or None (a user, or nobody)."""
        return self._peers.get(login) if login is not None else None

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """What to offer: every mechanism some login can use (CRAM-MD5 needs a clear password)."""
        usable: set[str] = set()
        for credentials in self._credentials.values():
            usable |= credentials.mechanisms()
        return tuple(m for m in SERVER_MECHANISMS if m in usable)
