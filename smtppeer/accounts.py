"""Who may AUTH, and who they are once they have.

Logins come from two places in the configuration: peers (a relationship
with another host: its AUTH identity owns its domains, so it may TURN, ATRN
and ETRN for them) and users (may submit and relay, own nothing).  The
engine's AUTH extension only sees ``lookup``; the receiving policy asks
``peer_for`` what an authenticated login may take.
"""

from __future__ import annotations

from .config import Peer, User
from .engine.sasl import SERVER_MECHANISMS, Credentials, parse_secret


class Accounts:
    def __init__(self, peers: dict[str, Peer] | None = None, users: dict[str, User] | None = None) -> None:
        self._credentials: dict[str, Credentials] = {}
        self._peers: dict[str, str] = {}  # login -> peer name
        for peer in (peers or {}).values():
            if peer.username is not None:
                self._add(peer.username, peer.password, peer.password_hash)
                self._peers[peer.username] = peer.name
        for user in (users or {}).values():
            self._add(user.name, user.password, user.password_hash)

    def _add(self, username: str, password: str | None, password_hash: str | None) -> None:
        secret = parse_secret(password_hash) if password_hash else None
        self._credentials[username] = Credentials(username, password=password, secret=secret)

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
