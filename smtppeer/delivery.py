"""Receiving policy for a peer that delivers its local domains into Maildirs.

Mail for a local domain is accepted into ``<data-dir>/mail/<domain>/<local>/``;
``postmaster`` without a domain goes to the primary domain's postmaster
(RFC 5321 §4.5.1); anything else is refused with 550 5.7.1, so the peer is
never an open relay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from .engine import Path, Reply, reply
from .hooks import MessageSink, ReceiverHooks
from .ids import new_queue_id
from .maildir import MaildirStore
from .trace import protocol_name, received_header

if TYPE_CHECKING:
    from .peer import SMTPPeer

log = Logger()


class LocalDelivery(ReceiverHooks):
    def __init__(self, hostname: str, domains: list[str], store: MaildirStore) -> None:
        self.hostname = hostname
        self.domains = [d.lower().rstrip(".") for d in domains]
        self.store = store

    def is_local(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def maildir_for(self, path: Path) -> str | None:
        box = path.mailbox
        if box is None:
            return None
        if not box.domain and box.is_postmaster:
            return self.store.path_for(self.domains[0], "postmaster")
        if self.is_local(box.domain_key):
            local = "postmaster" if box.is_postmaster else box.local_unquoted
            return self.store.path_for(box.domain_key, local)
        return None

    def rcpt_to(self, peer: SMTPPeer, path: Path, params: dict[str, str | None]) -> Reply:
        if self.maildir_for(path) is None:
            log.info(
                "refused {rcpt} from {client}: not a local domain", rcpt=str(path), client=peer.client_address
            )
            return reply(550, "5.7.1", "Relaying denied")
        return reply(250, "2.1.5", "Recipient OK")

    def begin_message(self, peer: SMTPPeer) -> MessageSink:
        receiver = peer.receiver
        tx = receiver.transaction
        queue_id = new_queue_id()
        rcpts = tx.recipients
        header = received_header(
            helo=receiver.helo_name,
            client_literal=peer.client_literal,
            by=self.hostname,
            protocol=protocol_name(receiver.esmtp, utf8=tx.utf8),
            queue_id=queue_id,
            recipient=str(rcpts[0].mailbox) if len(rcpts) == 1 else None,
        )
        maildirs = [self.maildir_for(p) for p in rcpts]
        sink = self.store.new_message([m for m in maildirs if m], header, queue_id)
        summary = f"from {tx.reverse_path} via {receiver.helo_name} [{peer.client_address}] to " + ", ".join(
            str(p) for p in rcpts
        )
        return _Logged(sink, queue_id, summary)


class _Logged(MessageSink):
    """One log line per accepted message, with its queue ID.

    The line is pre-formatted into a single field: twisted.logger's
    per-field formatting is a measurable share of the per-message cost.
    """

    def __init__(self, sink: MessageSink, queue_id: str, summary: str) -> None:
        self.sink, self.queue_id, self.summary = sink, queue_id, summary
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.sink.write(data)

    def finish(self):
        d = self.sink.finish()
        d.addCallback(self._log)
        return d

    def _log(self, result: Reply) -> Reply:
        log.info(
            "{line}",
            line=f"{self.queue_id}: accepted {self.summary}, {self.size} octets",
            queue_id=self.queue_id,
        )
        return result

    def abort(self) -> None:
        log.info("{line}", line=f"{self.queue_id}: abandoned before the end of DATA", queue_id=self.queue_id)
        self.sink.abort()
