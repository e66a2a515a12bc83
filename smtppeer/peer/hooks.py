"""What the connection asks of the mail system, in both roles, as plain values.

``SMTPPeer`` knows SMTP and the transport; everything it must decide (who may
send, where mail goes, whether to turn) it asks a ``ReceiverHooks``, and
everything it sends comes from a ``SenderJob``.  Hooks are given a
``Session`` and a ``Transaction``, values rather than the protocol object, so
a policy can be tested by calling it with values, and cannot reach into the
connection it is deciding about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from smtppeer.engine import Envelope, Path, Reply, reply
from smtppeer.engine.sender import MessageResult
from smtppeer.engine.session import Transaction

ReplyOrDeferred = Reply | Deferred

__all__ = [
    "DropConnection",
    "MessageSink",
    "ReceiverHooks",
    "ReplyOrDeferred",
    "SenderJob",
    "Session",
    "Transaction",
]


class DropConnection(Exception):  # noqa: N818 - it is an instruction, not an error
    """A hook raises this (or fails its Deferred with it) to have the connection cut
    at once, with no reply: a network failure, as a test lab injects one."""


@dataclass(frozen=True)
class Session:
    """A receiving session as the mail system sees it.

    A new value is made whenever the session changes (HELO/EHLO, STARTTLS,
    AUTH, a turn), so a hook that keeps one keeps what was true when it was
    asked.
    """

    client_address: str  # the IP address (or UNIX path) the client connects from
    client_literal: str = ""  # the same as an SMTP address literal, for Received:
    helo_name: str | None = None
    esmtp: bool = False
    secure: bool = False  # TLS is running on this connection
    authenticated: str | None = None  # the client's AUTH identity
    offers_auth: bool = False  # AUTH is offered here now (a refusal says 530 rather than 502)
    turn_by_address: bool = False  # the listener trusts peers' addresses for TURN (RFC 821 model)
    may_turn: bool = True  # False on a listener that never turns (shared with worker processes)
    turned: bool = False  # this connection has changed roles before
    connection: int = 0  # which connection of this process: tells sessions of one client apart


class MessageSink:
    """Where one message's body goes while DATA runs.

    ``finish`` must not fire with a 2xx until the message is durable.
    """

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> ReplyOrDeferred:
        raise NotImplementedError

    def abort(self) -> None:
        """Throw away what was written (reset, lost connection)."""

    def refused(self, why: str, response: Reply | None = None) -> None:
        """The message itself was refused (by the engine: its size, a bare CR or LF,
        a NUL, a long line); ``why`` is for the log.  By default, ``abort``."""
        self.abort()

    def retract(self) -> ReplyOrDeferred | None:
        """Take back a finished message, because another part of it failed
        (the client is told to send it again); best effort."""


class ReceiverHooks:
    """Policy and storage for the receiving role.  The defaults refuse mail.

    Methods may return a ``Reply`` or a ``Deferred`` firing with one.
    """

    def greeting(self, session: Session) -> Reply | None:
        """A 220 to greet with, a 554 to refuse the connection, or None (default 220).
        May return a Deferred: nothing is read or answered until it fires."""
        return None

    def screen(self, session: Session, verb: str, argument: str) -> ReplyOrDeferred | None:
        """A command listed in the factory's ``screen``, before it runs: None runs it,
        a reply refuses it.  Nothing is screened unless a listener asks for it."""
        return None

    def mail_from(self, session: Session, path: Path, params: dict[str, str | None]) -> ReplyOrDeferred:
        return reply(250, "2.1.0", "Sender OK")

    def rcpt_to(self, session: Session, path: Path, params: dict[str, str | None]) -> ReplyOrDeferred:
        return reply(550, "5.7.1", "Relaying denied")

    def begin_message(self, session: Session, transaction: Transaction) -> MessageSink:
        raise NotImplementedError

    def reset(self, session: Session) -> None:
        """The transaction was abandoned before DATA completed."""

    def verify(self, session: Session, verb: str, argument: str) -> ReplyOrDeferred:
        """VRFY/EXPN: by default say nothing about who exists (RFC 5321 §3.5.3)."""
        return reply(252, "2.5.2", "Cannot verify, but will accept message and attempt delivery")

    def turn(self, session: Session, verb: str = "TURN", domains: list[str] | None = None):
        """TURN, or ATRN with the domains asked for: a ``SenderJob`` to send after
        turning, a refusal ``Reply``, or None (502).  May return a Deferred."""
        return None

    def start_queue(self, session: Session, node: str, kind: str) -> ReplyOrDeferred:
        """ETRN: start delivering what is held for ``node`` (see ``QueueStartRequested``)."""
        return reply(458, "4.3.0", f"Unable to queue messages for node {node}")

    def extension_command(self, session: Session, verb: str, argument: str) -> ReplyOrDeferred:
        return reply(502, "5.5.1", f"{verb} not implemented")


@dataclass
class SenderJob:
    """Messages to send in one sender session, and how the session ends.

    ``finish`` is ``QUIT`` or a turning command (``TURN``, ``ATRN dom``).
    ``on_result`` is called with each ``MessageResult`` as soon as it is known;
    every envelope gets exactly one, even when the session never starts
    (``abandon``).  ``on_end`` is called once when the job is over, however
    it ended: whoever handed the job out may then release what it reserved.
    ``convert`` makes a 7-bit copy of an 8-bit envelope for a server without
    8BITMIME (RFC 6152 §3): an ``Envelope``, a refusal ``Reply``, or a
    Deferred firing with one; without it such a message is refused with
    ``554 5.6.3``.
    """

    envelopes: list[Envelope] = field(default_factory=list)
    finish: str = "QUIT"
    on_result: Callable[[MessageResult], object] | None = None
    on_end: Callable[[], object] | None = None
    convert: Callable[[Envelope], Envelope | Reply | Deferred] | None = None
    results: list[MessageResult] = field(default_factory=list)
    turned: bool = False
    turn_reply: Reply | None = None
    requests: list[str] = field(default_factory=list)  # said before ``finish`` (``ETRN node``)
    request_results: list[tuple[str, Reply]] = field(default_factory=list)

    def record(self, result: MessageResult) -> None:
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def abandon(self, reason: str) -> None:
        """The job will never be sent (its connection went first): every envelope
        without a result is deferred with ``reason``, then the job ends."""
        reported = {id(result.envelope) for result in self.results}
        lost = reply(451, "4.4.2", reason)
        for envelope in self.envelopes:
            if id(envelope) not in reported:
                self.record(MessageResult(envelope, dict.fromkeys(envelope.recipients, lost)))
        self.end()

    def end(self) -> None:
        callback, self.on_end = self.on_end, None
        if callback is not None:
            callback()
