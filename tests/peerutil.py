"""Helpers for tests that run real SMTPPeer instances on loopback sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer, endpoints, protocol, reactor

from smtppeer.engine import Envelope, reply
from smtppeer.peer.hooks import MessageSink, ReceiverHooks, SenderJob, Session, Transaction
from smtppeer.peer.protocol import SMTPPeer, SMTPPeerFactory


@dataclass
class Stored:
    reverse_path: str
    recipients: list[str]
    body: bytes


class MemorySink(MessageSink):
    def __init__(self, hooks: MemoryHooks, tx: Transaction) -> None:
        self.hooks = hooks
        self.reverse_path = str(tx.reverse_path)
        self.recipients = [str(p.mailbox) for p in tx.recipients]
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def finish(self):
        self.hooks.stored.append(Stored(self.reverse_path, self.recipients, b"".join(self.chunks)))
        return reply(250, "2.0.0", f"Ok: stored #{len(self.hooks.stored)}")


@dataclass
class MemoryHooks(ReceiverHooks):
    """Accepts everything into a list; TURN decided by ``turn_job``."""

    stored: list[Stored] = field(default_factory=list)
    turn_job: SenderJob | None = None
    turn_asked: int = 0
    sessions: list[Session] = field(default_factory=list)  # as each greeting saw it

    def greeting(self, session):
        self.sessions.append(session)
        return None

    def rcpt_to(self, session, path, params):
        return reply(250, "2.1.5", "OK")

    def begin_message(self, session, transaction) -> MessageSink:
        return MemorySink(self, transaction)

    def turn(self, session, verb="TURN", domains=None):
        self.turn_asked += 1
        return self.turn_job


def message(n: int, frm: str = "a@a.test", to: str = "u@b.test") -> Envelope:
    body = (
        f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: message {n}\r\n\r\n"
        f".a line with a leading dot\r\nline {n}\r\n"
    ).encode()
    return Envelope(frm, [to], body)


class RecordingFactory(SMTPPeerFactory):
    """Keeps every peer it builds (``factory.peers`` forgets them when they close)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[SMTPPeer] = []

    def buildProtocol(self, addr) -> SMTPPeer:
        peer = super().buildProtocol(addr)
        self.built.append(peer)
        return peer


class Listener:
    """A receiver-first SMTPPeer listening on a loopback port, closed by ``stop``;
    ``peers`` are the connections it accepted, in order."""

    def __init__(self, hostname: str, hooks: ReceiverHooks, *, protocol=None, **kwargs) -> None:
        self.factory = RecordingFactory(hostname, hooks, **kwargs)
        if protocol is not None:
            self.factory.protocol = protocol
        self.peers = self.factory.built
        self.port = None

    @defer.inlineCallbacks
    def start(self):
        ep = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        self.port = yield ep.listen(self.factory)
        return self.port.getHost().port

    def stop(self):
        return defer.maybeDeferred(self.port.stopListening)


@defer.inlineCallbacks
def connect_sender(hostname: str, hooks: ReceiverHooks, job: SenderJob, port: int, **kwargs):
    """Open an outgoing SMTPPeer with a job; returns the protocol once connected."""
    factory = SMTPPeerFactory(hostname, hooks, job=job, **kwargs)
    ep = endpoints.clientFromString(reactor, f"tcp:host=127.0.0.1:port={port}")
    peer = yield ep.connect(factory)
    return peer


class LineClient(protocol.Protocol):
    """A raw client in the reactor: records lines, waits for a count of them."""

    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[bytes] = []
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\r\n")
        self.lines.extend(complete)
        self._check()

    def _check(self) -> None:
        for item in list(self._waiters):
            n, d = item
            if len(self.lines) >= n:
                self._waiters.remove(item)
                d.callback(self.lines)

    def wait_lines(self, n: int) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((n, d))
        self._check()
        return d

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(self.lines)


@defer.inlineCallbacks
def connect_line_client(port: int):
    ep = endpoints.clientFromString(reactor, f"tcp:host=127.0.0.1:port={port}")
    client = yield endpoints.connectProtocol(ep, LineClient())
    return client
