"""Events the receiver emits.  Those with ``needs_answer`` pause the engine
until the adapter calls ``Receiver.answer`` — this is how a slow decision (a
disk write, a policy lookup) keeps pipelined commands in order."""

from __future__ import annotations

from dataclasses import dataclass, field

from .address import Path


class Event:
    needs_answer = False


class Decision(Event):
    needs_answer = True


@dataclass(frozen=True)
class Hello(Event):
    """HELO or EHLO was accepted (the receiver has replied already)."""

    verb: str
    name: str


@dataclass(frozen=True)
class MailFrom(Decision):
    """Answer 250 to open the transaction, or a 4xx/5xx to refuse it."""

    path: Path
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RcptTo(Decision):
    """Answer 250/251 to accept the recipient, or a 4xx/5xx to refuse it."""

    path: Path
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class DataStarted(Event):
    """354 has been sent; body chunks follow."""


@dataclass(frozen=True)
class DataChunk(Event):
    """Decoded (unstuffed) body bytes, in order."""

    data: bytes


@dataclass(frozen=True)
class DataEnd(Decision):
    """The body was complete and valid: answer 250 once it is durable."""

    size: int


@dataclass(frozen=True)
class DataFailed(Event):
    """The body was refused by the engine itself (size, bare CR/LF, long line);
    the adapter throws away what it stored of it."""

    reason: str


@dataclass(frozen=True)
class Reset(Event):
    """The transaction was abandoned (RSET, EHLO, or a refused DATA)."""


@dataclass(frozen=True)
class Verify(Decision):
    """VRFY or EXPN: answer per policy (the default discloses nothing)."""

    verb: str
    argument: str


@dataclass(frozen=True)
class TurnRequested(Decision):
    """TURN, or ATRN (RFC 2645) with the domains asked for (empty: all the
    client's): answer 250 and swap roles, or refuse and stay receiver."""

    verb: str = "TURN"
    domains: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StartTLSRequested(Decision):
    """STARTTLS (RFC 3207): answer 220 and call ``Receiver.tls_started`` once
    the handshake is under way, or 454 to carry on in clear.  After a 220
    the receiver reads nothing more until then."""


@dataclass(frozen=True)
class Authenticated(Event):
    """AUTH succeeded (235 already queued); ``Receiver.authenticated`` is set."""

    identity: str
    mechanism: str


@dataclass(frozen=True)
class AuthFailed(Event):
    """AUTH failed; ``reason`` is for the log, never for the client.  ``guess``: the
    credentials were checked and wrong (535), which is what a budget of failures per
    client counts; not a cancelled or garbled exchange, nor our own lookup failing."""

    mechanism: str
    reason: str
    guess: bool = False


@dataclass(frozen=True)
class QueueStartRequested(Decision):
    """ETRN (RFC 1985): start delivery of mail held for a node over a new
    connection.  ``kind`` is "domain", "subdomains" (``@domain``) or "queue"
    (``#name``); answer 250/251/252/253, 458 or 459."""

    node: str
    kind: str


@dataclass(frozen=True)
class ExtensionCommand(Decision):
    """A command registered by an extension (STARTTLS, AUTH, ETRN, ATRN...)."""

    verb: str
    argument: str


@dataclass(frozen=True)
class Screened(Decision):
    """A command the adapter asked to see first (``Receiver(screen=...)``): answer
    a reply to refuse it (it is not run), or call ``Receiver.proceed`` to run it.
    A test lab uses this to inject failures at EHLO, AUTH or any other command."""

    verb: str
    argument: str


@dataclass(frozen=True)
class Quit(Event):
    """221 has been queued; close the connection once it is written."""


@dataclass(frozen=True)
class Close(Event):
    """The session ends without QUIT: the engine gave up on it (421 queued), or the
    client's input ended (``Receiver.receive_eof``).  Close after writing; a
    message still being received is thrown away."""

    reason: str


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Marker("NEED_DATA")
PAUSED = _Marker("PAUSED")
CLOSED = _Marker("CLOSED")
