"""The queue in memory: the spool's envelopes, and which recipients are being sent.

The spool on disk is the truth; this is the runner's index of it.  A
recipient is *marked* while a session is sending it, so that no second
session (another delivery, a TURN, an ETRN, a poll) sends the same message.
The marks a session took are its own (``Marks``) and only it gives them
back: a session that ends late (its results still being written) cannot
free a recipient that a newer session is sending now.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtppeer.store.spool import HELD, PENDING, Envelope, Recipient

# One message and the recipients of it that one session sends.
Item = tuple[Envelope, list[Recipient]]


@dataclass
class RunnerSettings:
    interval: float = 60.0  # scan at least this often
    lifetime: float = 5 * 86400.0  # RFC 5321 §4.5.4.1: give up after 4-5 days
    backoff_base: float = 60.0
    backoff_max: float = 3600.0
    jitter: float = 0.2  # ± this fraction of each delay
    max_connections: int = 20
    per_destination: int = 4
    messages_per_connection: int = 100
    connect_timeout: float = 30.0
    # Relays (endpoints, "peer:NAME") whose mail waits for a poll of their peer (send = "on-poll"):
    # no connection of its own, unless flushed; it expires after the lifetime like any.
    on_poll: frozenset[str] = frozenset()


class Marks:
    """The recipients one session took to send; it gives them back as their results
    are written, and whatever is left when it ends."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.keys: set[tuple[str, str]] = set()

    def release(self, envelope: Envelope, rcpts: list[Recipient]) -> None:
        sending = self.queue._sending
        for rcpt in rcpts:
            key = (envelope.id, rcpt.address)
            self.keys.discard(key)
            if sending.get(key) is self:
                del sending[key]

    def release_all(self) -> None:
        sending = self.queue._sending
        for key in self.keys:
            if sending.get(key) is self:
                del sending[key]
        self.keys.clear()


class Queue:
    def __init__(self) -> None:
        self.entries: dict[str, Envelope] = {}
        self._sending: dict[tuple[str, str], Marks] = {}

    def mark(self, items: list[Item]) -> Marks:
        """Take ``items``' recipients for one session."""
        marks = Marks(self)
        for envelope, rcpts in items:
            for rcpt in rcpts:
                key = (envelope.id, rcpt.address)
                marks.keys.add(key)
                self._sending[key] = marks
        return marks

    def is_sending(self, envelope: Envelope, rcpt: Recipient) -> bool:
        return (envelope.id, rcpt.address) in self._sending

    def busy(self, queue_id: str) -> bool:
        """Is any recipient of this message being sent right now?"""
        return any(q == queue_id for q, _ in self._sending)

    @property
    def sending(self) -> int:
        """Recipients being sent right now."""
        return len(self._sending)

    def held(self, peer_name: str, domains: list[str] | None = None, exact: bool = False) -> list[Item]:
        """What is held for ``peer_name`` (only for ``domains`` and, unless ``exact``,
        their subdomains, if given) and not being sent right now by another session."""
        items = []
        for envelope in self.entries.values():
            if envelope.frozen:
                continue
            held = [
                r
                for r in envelope.held_for(peer_name)
                if not self.is_sending(envelope, r)
                and (domains is None or in_domains(r.address, domains, exact))
            ]
            if held:
                items.append((envelope, held))
        return items

    def pending_via(self, relays: set[str]) -> list[Item]:
        """What waits to be sent to one of ``relays`` (endpoints) and is not being sent."""
        items = []
        for envelope in self.entries.values():
            if envelope.frozen:
                continue
            rcpts = [
                r
                for r in envelope.recipients
                if r.state == PENDING and r.relay in relays and not self.is_sending(envelope, r)
            ]
            if rcpts:
                items.append((envelope, rcpts))
        return items

    def expired_holds(self, now: float, lifetime: float, waiting: frozenset[str] = frozenset()) -> list[Item]:
        """Held recipients of messages older than ``lifetime`` that nobody is sending, and
        pending ones for ``waiting`` relays (sent only by polls, which may never come)."""
        items = []
        for envelope in self.entries.values():
            if now - envelope.arrival < lifetime:
                continue
            expired = [
                r
                for r in envelope.recipients
                if (r.state == HELD or (r.state == PENDING and r.relay in waiting))
                and not self.is_sending(envelope, r)
            ]
            if expired:
                items.append((envelope, expired))
        return items


def in_domains(address: str, domains: list[str], exact: bool = False) -> bool:
    """Is the address's domain one of ``domains`` (or, unless ``exact``, a subdomain of one)?"""
    domain = address.rpartition("@")[2].lower()
    return any(domain == d or (not exact and domain.endswith("." + d)) for d in domains)
