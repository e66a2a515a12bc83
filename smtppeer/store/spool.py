"""The durable spool: mail that is not delivered yet (relay, retry, held for a peer).

Layout under ``<data-dir>/spool/`` (documented in the README so an
administrator can inspect it with ``ls`` and a JSON viewer)::

    incoming/<id>.eml   a body still being received; never acknowledged
    queue/<id>.eml      the message as it will be sent (Received: header first)
    queue/<id>.json     its envelope; the entry exists once this file does

A message is committed by the ``Committer``: the body is synced and renamed
into ``queue/``, then the envelope is written to a temporary name, synced and
renamed next to it, and ``queue/`` is synced.  The envelope's rename is the
commit point: at start-up a body without an envelope is the remains of a
crash before the ``250`` and is deleted, never delivered.

Envelope updates (per-recipient results, the next attempt) replace the JSON
file the same way (temporary name, sync, rename, sync), so a crash leaves
either the old or the new state, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from twisted.internet import defer
from twisted.logger import Logger

from smtppeer.engine import reply

from .bodybuffer import BodyBuffer
from .commits import Commit, unlink
from .committer import Committer

log = Logger()


class RecipientState(StrEnum):
    """Where one recipient of a spooled message stands; the value is what the
    envelope file says."""

    PENDING = "pending"  # to be relayed, now or at next_attempt
    HELD = "held"  # waiting for its peer to call in (TURN, ATRN, ETRN)
    DELIVERED = "delivered"
    FAILED = "failed"  # permanently; a bounce is due (unless the reverse-path is null)


PENDING, HELD, DELIVERED, FAILED = RecipientState


@dataclass
class Recipient:
    address: str
    state: RecipientState = PENDING
    # {"relay": ENDPOINT or "mx", "domain": D} for mail to send, {"hold": PEER} for held mail
    route: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    last_reply: str | None = None
    next_attempt: float = 0.0
    notified: bool = False  # FAILED: the sender has been told (a bounce is queued), or cannot be

    def __post_init__(self) -> None:
        self.state = RecipientState(self.state)  # as read from an envelope file: a plain string

    @property
    def relay(self) -> str | None:
        """The next hop to send to: an endpoint description or "mx"; None when held."""
        return self.route.get("relay")

    @property
    def hold(self) -> str | None:
        """The peer whose hold queue keeps this recipient; None when it is to be sent."""
        return self.route.get("hold")


@dataclass
class Envelope:
    """What the spool keeps about one message besides its bytes."""

    id: str
    reverse_path: str
    recipients: list[Recipient]
    arrival: float
    params: dict[str, str | None] = field(default_factory=dict)
    client: dict[str, str] = field(default_factory=dict)
    size: int = 0
    frozen: bool = False  # put on hold by an administrator: not sent until released
    # The message has octets above 127 (a next hop without 8BITMIME needs it converted);
    # None in an envelope written before this was recorded.
    eight_bit: bool | None = None
    version: int = 1

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        raw = json.loads(data)
        if raw.get("version") != 1:
            raise ValueError(f"unknown envelope version {raw.get('version')!r}")
        raw["recipients"] = [Recipient(**r) for r in raw["recipients"]]
        return cls(**raw)

    @property
    def done(self) -> bool:
        """Nothing left to do: every recipient final, and every failure reported.

        The entry (and with it the body a bounce quotes) stays until the
        bounce is itself safely queued.
        """
        return all(r.state == DELIVERED or (r.state == FAILED and r.notified) for r in self.recipients)

    def unreported(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == FAILED and not r.notified]

    def held_for(self, peer: str) -> list[Recipient]:
        return [r for r in self.recipients if r.state == HELD and r.hold == peer]


class Spool:
    def __init__(self, root: str, committer: Committer) -> None:
        self.root = root
        self.committer = committer
        self.incoming = os.path.join(root, "incoming")
        self.queue = os.path.join(root, "queue")
        for path in (self.incoming, self.queue):
            os.makedirs(path, mode=0o700, exist_ok=True)

    # -- paths -------------------------------------------------------------------

    def body_path(self, queue_id: str) -> str:
        return os.path.join(self.queue, queue_id + ".eml")

    def envelope_path(self, queue_id: str) -> str:
        return os.path.join(self.queue, queue_id + ".json")

    # -- start-up ----------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Remove what no ``250`` ever covered; count what is queued."""
        report = {"incoming_removed": 0, "orphan_bodies_removed": 0, "temporaries_removed": 0, "queued": 0}
        for name in os.listdir(self.incoming):
            os.unlink(os.path.join(self.incoming, name))
            report["incoming_removed"] += 1
        names = set(os.listdir(self.queue))
        for name in names:
            path = os.path.join(self.queue, name)
            if name.endswith(".tmp"):
                os.unlink(path)
                report["temporaries_removed"] += 1
            elif name.endswith(".eml") and name[:-4] + ".json" not in names:
                os.unlink(path)
                report["orphan_bodies_removed"] += 1
            elif name.endswith(".json"):
                report["queued"] += 1
        if any(report.values()):
            log.info("spool recovered: {report}", report=report)
        return report

    def discard_unfinished(self, created_by: Callable[[str], bool]) -> int:
        """Remove what a dead writer left unfinished: its bodies in ``incoming/``, and
        new entries it did not get to publish (a body or a ``.json.tmp`` with no
        envelope).  ``created_by(queue_id)`` says whose the IDs are; only that
        writer ever wrote them, so nothing of anyone else's is touched."""
        removed = 0
        for name in os.listdir(self.incoming):
            if created_by(name.split(".")[0]):
                unlink(os.path.join(self.incoming, name))
                removed += 1
        names = set(os.listdir(self.queue))
        for name in names:
            queue_id = name.split(".")[0]
            if (name.endswith((".eml", ".json.tmp")) and f"{queue_id}.json" not in names) and created_by(
                queue_id
            ):
                unlink(os.path.join(self.queue, name))
                removed += 1
        return removed

    # -- reading -----------------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(n[:-5] for n in os.listdir(self.queue) if n.endswith(".json"))

    def load(self, queue_id: str) -> Envelope:
        with open(self.envelope_path(queue_id), "rb") as f:
            return Envelope.from_json(f.read())

    def envelopes(self) -> Iterator[Envelope]:
        """Every queued envelope; one that cannot be read is logged and skipped."""
        for queue_id in self.ids():
            try:
                yield self.load(queue_id)
            except FileNotFoundError:
                continue  # delivered and removed meanwhile
            except (ValueError, TypeError, KeyError):
                log.failure("unreadable envelope {queue_id}; left in place", queue_id=queue_id)

    def held_for(self, peer: str) -> list[Envelope]:
        """The hold queue of ``peer``: every message with a recipient held for it."""
        return [e for e in self.envelopes() if e.held_for(peer)]

    # -- writing -----------------------------------------------------------------

    def new_message(self, envelope: Envelope, header: bytes) -> SpoolMessage:
        return SpoolMessage(self, envelope, header)

    def update(self, envelope: Envelope) -> defer.Deferred:
        """Replace the envelope durably (or remove the entry once every recipient is final)."""
        if envelope.done:
            return self.committer.submit(_removal(self, envelope.id))
        return self.committer.submit(_envelope_write(self, envelope))


class SpoolMessage:
    """A ``MessageSink`` for one body bound for ``incoming/``; committed with its envelope."""

    def __init__(self, spool: Spool, envelope: Envelope, header: bytes) -> None:
        self.spool = spool
        self.envelope = envelope
        self.body = BodyBuffer(os.path.join(spool.incoming, envelope.id + ".eml"), header)
        self._ascii = header.isascii()

    def write(self, data: bytes) -> None:
        # Noted as it arrives (a C scan of each chunk), so the relay never reads a body to know.
        if self._ascii and not data.isascii():
            self._ascii = False
        self.body.write(data)

    def finish(self) -> defer.Deferred:
        self.envelope.size = self.body.size
        self.envelope.eight_bit = not self._ascii
        writes, syncs = self.body.commit_parts()
        queue_id = self.envelope.id
        envelope = _envelope_write(self.spool, self.envelope)  # the commit point: after the body
        body = ("rename", self.body.path, self.spool.body_path(queue_id))
        commit = Commit(writes + envelope.writes, syncs, (body, *envelope.steps))
        d = self.spool.committer.submit(commit)
        d.addCallback(lambda _: reply(250, "2.0.0", f"Ok: queued as {queue_id}"))
        return d

    def abort(self) -> None:
        self.body.discard()

    def retract(self) -> defer.Deferred:
        return self.spool.committer.submit(_removal(self.spool, self.envelope.id))


def _envelope_write(spool: Spool, envelope: Envelope) -> Commit:
    final = spool.envelope_path(envelope.id)
    return Commit(writes=((final + ".tmp", envelope.to_json()),), steps=(("rename", final + ".tmp", final),))


def _removal(spool: Spool, queue_id: str) -> Commit:
    """Envelope first: a crash in between leaves an orphan body, which recovery removes.

    The directory is not synced afterwards (Postfix does not either): an
    entry that every recipient already has can only come back after a power
    failure, and then at worst it is delivered twice.  Syncing here cost a
    directory fsync per delivered message on the hot path.
    """
    paths = (spool.envelope_path(queue_id), spool.body_path(queue_id))
    return Commit(steps=tuple(("unlink", path, "") for path in paths))
