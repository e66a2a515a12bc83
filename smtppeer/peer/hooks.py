"""What the connection adapter asks of the mail system, in both roles.

``SMTPPeer`` knows SMTP and the transport; everything it must decide (who may
send, where mail goes, whether to turn) it asks a ``ReceiverHooks``, and
everything it sends comes from a ``SenderJob``.  Service code implements
these; tests can implement them with plain objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from smtppeer.engine import Envelope, Path, Reply, reply
from smtppeer.engine.sender import MessageResult

if TYPE_CHECKING:
    from .protocol import SMTPPeer

ReplyOrDeferred = Reply | Deferred


class MessageSink:
    """Where one message's body goes while DATA runs.

    ``finish`` must not fire with a 2xx until the message is durable.
    """

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> ReplyOrDeferred:
        raise NotImplementedError

    def abort(self) -> None:
        """Throw away what was written (bad body, reset, lost connection)."""

    def retract(self) -> ReplyOrDeferred | None:
        """Take back a finished message, because another part of it failed
        (the client is told to send it again); best effort."""


class ReceiverHooks:
    """Policy and storage for the receiving role.  The defaults refuse mail.

    Methods may return a ``Reply`` or a ``Deferred`` firing with one.
    """

    def greeting(self, peer: SMTPPeer) -> Reply | None:
        """A 220 to greet with, a 554 to refuse the connection, or None (default 220)."""
        return None

    def mail_from(self, peer: SMTPPeer, path: Path, params: dict[str, str | None]) -> ReplyOrDeferred:
        return reply(250, "2.1.0", "Sender OK")

    def rcpt_to(self, peer: SMTPPeer, path: Path, params: dict[str, str | None]) -> ReplyOrDeferred:
        return reply(550, "5.7.1", "Relaying denied")

    def begin_message(self, peer: SMTPPeer) -> MessageSink:
        raise NotImplementedError

    def reset(self, peer: SMTPPeer) -> None:
        """The transaction was abandoned before DATA completed."""

    def verify(self, peer: SMTPPeer, verb: str, argument: str) -> ReplyOrDeferred:
        """VRFY/EXPN: by default say nothing about who exists (RFC 5321 §3.5.3)."""
        return reply(252, "2.5.2", "Cannot verify, but will accept message and attempt delivery")

    def turn(self, peer: SMTPPeer, verb: str = "TURN", domains: list[str] | None = None):
        """TURN, or ATRN with the domains asked for: a ``SenderJob`` to send after
        turning, a refusal ``Reply``, or None (502).  May return a Deferred."""
        return None

    def start_queue(self, peer: SMTPPeer, node: str, kind: str) -> ReplyOrDeferred:
        """ETRN: start delivering what is held for ``node`` (see ``QueueStartRequested``)."""
        return reply(458, "4.3.0", f"Unable to queue messages for node {node}")

    def extension_command(self, peer: SMTPPeer, verb: str, argument: str) -> ReplyOrDeferred:
        return reply(502, "5.5.1", f"{verb} not implemented")


@dataclass
class SenderJob:
    """Messages to send in one sender session, and how the session ends.

    ``finish`` is ``QUIT`` or a turning command (``TURN``, ``ATRN dom``).
    ``on_result`` is called with each ``MessageResult`` as soon as it is known.
    """

    envelopes: list[Envelope] = field(default_factory=list)
    finish: str = "QUIT"
    on_result: Callable[[MessageResult], object] | None = None
    results: list[MessageResult] = field(default_factory=list)
    turned: bool = False
    turn_reply: Reply | None = None
    requests: list[str] = field(default_factory=list)  # said before ``finish`` (``ETRN node``)
    request_results: list[tuple[str, Reply]] = field(default_factory=list)

    def record(self, result: MessageResult) -> None:
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)
