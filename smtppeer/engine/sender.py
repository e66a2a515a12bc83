"""The sender-SMTP (client) role as a sans-IO state machine.

The adapter queues envelopes with ``send`` and says how the session ends with
``finish`` (QUIT, TURN, or a command such as ``ATRN dom``); ``request`` adds
commands answered without a transaction (``ETRN node``) to say before it.
Replies go in with ``receive_data``; ``next_event`` reports per-message results.

Between the greeting and the first message the session is secured as
``ClientSecurity`` asks: STARTTLS (the adapter does the handshake when it
sees ``StartTLS`` and then calls ``tls_started``), a fresh EHLO, then AUTH.
A session that cannot be secured as asked sends nothing and defers
everything with a 4.7.0 reply, so the mail stays queued.

Every command sent pushes the handler for its reply onto a FIFO, so with
PIPELINING (RFC 2920) the MAIL, RCPTs and DATA of a message go out in one
write and the replies are matched up in order.  Without it, one command,
one reply (RFC 2920 §3): a command given while another is unanswered waits
for that reply (an RSET after a refused transaction, and the MAIL or QUIT
behind it), because a strict server answers input sent too soon with an
error and hangs up.

The engine reads no files: a body given as bytes is sent as it is; any
other body is the adapter's to read, and the engine asks for it
(``body_wanted``) when the server has said 354 and the bytes before it are
out, and takes it piece by piece (``send_body``, ``end_body``).

An 8-bit message and a server that does not offer 8BITMIME (RFC 6152 §3:
convert it to 7 bits or return it, never send it as it is): the engine says
``ConversionNeeded`` before the message's MAIL and waits for ``converted``,
with a 7-bit replacement or a refusal.  Converting means reading and
rewriting the whole message, which is not the engine's to do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from .auth import decode, encode
from .framing import DotStuffer
from .limits import Limits
from .replies import ProtocolError, Reply, ReplyParser, reply
from .sasl import ClientExchange, SaslError, choose_mechanism, client_exchange
from .session import SessionState

BODY_CHUNK = 64 * 1024


@dataclass
class Envelope:
    """One message to send.

    ``reverse_path`` and ``recipients`` are path contents without the angle
    brackets (``""`` is the null reverse-path; a source route such as
    ``@A,@B:u@c`` is sent as given).  ``body`` has CRLF line ends, unstuffed:
    bytes, or a source the adapter reads and hands over (``body_wanted``).
    ``eight_bit`` says that a body which is not bytes has octets above 127
    (the engine cannot look; a bytes body it checks itself).
    """

    reverse_path: str
    recipients: list[str]
    body: bytes | object
    params: dict[str, str | None] = field(default_factory=dict)
    size: int | None = None
    tag: object = None
    eight_bit: bool = False

    @property
    def is_8bit(self) -> bool:
        """Octets above 127 in the body (RFC 6152's 8-bit data)."""
        if isinstance(self.body, bytes):
            return not self.body.isascii()
        return self.eight_bit


class TlsPolicy(StrEnum):
    """What a session we open insists on (``ClientSecurity.tls``, a peer's ``tls``)."""

    NONE = "none"  # never STARTTLS
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, any certificate
    REQUIRED = "required"  # STARTTLS or nothing is sent; any certificate
    VERIFY = "verify"  # STARTTLS with a certificate the adapter verifies


TLS_NONE, TLS_OPPORTUNISTIC, TLS_REQUIRED, TLS_VERIFY = TlsPolicy


@dataclass
class ClientSecurity:
    """How to secure a session we open.  ``verify`` differs from ``required``
    only in the adapter (which checks the certificate during the handshake)."""

    tls: TlsPolicy = TLS_NONE
    username: str | None = None
    password: str | None = None
    allow_clear: bool = False  # AUTH PLAIN/LOGIN without TLS
    # Without it, AUTH is used when the server offers it, and mail goes anyway when it
    # does not (delivering to a peer's own MTA); polls that turn need it.
    require_auth: bool = False


class SenderEvent:
    pass


@dataclass(frozen=True)
class StartTlsAccepted(SenderEvent):
    """The server said 220 to STARTTLS: start the handshake, then call ``tls_started``."""


@dataclass(frozen=True)
class LoggedIn(SenderEvent):
    """AUTH succeeded (and, for SCRAM, the server proved it knows the password)."""

    mechanism: str


@dataclass(frozen=True)
class CommandResult(SenderEvent):
    """The reply to a command given with ``request`` (``ETRN node``)."""

    command: str
    reply: Reply


@dataclass(frozen=True)
class Ready(SenderEvent):
    """The greeting and EHLO/HELO are done; ``extensions`` maps keyword → argument."""

    extensions: dict[str, str]


@dataclass(frozen=True)
class ConversionNeeded(SenderEvent):
    """``envelope`` is 8-bit and the server does not offer 8BITMIME (RFC 6152 §3).

    Call ``converted`` with a 7-bit replacement (same recipients and tag; its
    body and size are what is sent), or with a Reply that refuses the message
    (``554 5.6.3`` when it cannot be converted).  Nothing is sent meanwhile.
    """

    envelope: Envelope


@dataclass(frozen=True)
class MessageResult(SenderEvent):
    """What happened to each recipient of one envelope.

    A recipient maps to the reply that decided its fate: the RCPT reply if
    that refused it, else MAIL's refusal, else the reply to the final dot.
    """

    envelope: Envelope
    results: dict[str, Reply]

    @property
    def delivered(self) -> list[str]:
        return [r for r, rep in self.results.items() if rep.code == 250 or rep.code == 251]


@dataclass(frozen=True)
class Turned(SenderEvent):
    """The server accepted TURN/ATRN: this side is now the receiver."""

    reply: Reply


@dataclass(frozen=True)
class TurnRefused(SenderEvent):
    reply: Reply


@dataclass(frozen=True)
class SessionEnded(SenderEvent):
    """The session is over (QUIT answered, or the server gave up, or we did)."""

    reply: Reply | None
    clean: bool


class Phase(Enum):
    """Where a sender session stands.  A message, a request or the final command
    may be under way in READY; ``_current`` and ``_request`` say which."""

    GREETING = "greeting"  # waiting for the server's 220
    HELLO = "hello"  # EHLO (or HELO) said
    STARTTLS = "starttls"  # STARTTLS said
    HANDSHAKE = "handshake"  # 220 to STARTTLS: the adapter runs the handshake; nothing is read
    AUTH = "auth"  # an AUTH exchange under way
    READY = "ready"  # set up: messages, requests and the final command
    TURNED = "turned"  # the server accepted TURN/ATRN: this side is the receiver now
    CLOSED = "closed"  # over: QUIT answered, or the session failed


def _ignore(response: Reply) -> None:
    """Handler for replies that change nothing (RSET, QUIT after a failure)."""


def _lost(reason: str) -> Reply:
    return reply(451, "4.4.2", reason)


class Sender:
    """One sender-SMTP session."""

    def __init__(
        self,
        hostname: str,
        limits: Limits | None = None,
        *,
        use_ehlo: bool = True,
        security: ClientSecurity | None = None,
        secure: bool = False,
    ) -> None:
        self.hostname = hostname
        self.limits = limits or Limits()
        self.security = security or ClientSecurity()
        self.secure = secure  # the connection runs over TLS
        self.phase = Phase.GREETING
        self.extensions: dict[str, str] = {}
        self.authenticated = False
        # What this server has shown, which decides what we try next:
        self._use_ehlo = use_ehlo  # False once it refused EHLO (RFC 5321 §3.2)
        self._tls_refused = False  # it refused STARTTLS (opportunistic TLS goes on in clear)
        self._auth_tried = False  # AUTH done, or skipped because the server does not offer it
        self._parser = ReplyParser()
        self._expect: deque[Callable[[Reply], None]] = deque([self._on_greeting])
        self._out: deque[bytes | _Body] = deque()
        # Commands waiting for the reply to the one before (no PIPELINING), with their handlers.
        self._held: deque[tuple[bytes, Callable[[Reply], None]]] = deque()
        self._events: deque[SenderEvent] = deque()
        self._queue: deque[Envelope] = deque()
        self._requests: deque[str] = deque()
        self._current: _Attempt | None = None  # the message under way
        self._converting: Envelope | None = None  # waiting for ``converted`` (ConversionNeeded)
        self._request: str | None = None  # the request under way (``ETRN node``)
        self._finish: str | None = None

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def turned(self) -> bool:
        return self.phase is Phase.TURNED

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def over(self) -> bool:
        """Nothing more will be sent or read in this role."""
        return self.phase is Phase.CLOSED or self.phase is Phase.TURNED

    @property
    def awaiting_data_end(self) -> bool:
        """The body is on its way: the next reply decides the message (§4.5.3.2.6 timeout)."""
        return self._current is not None and self._current.body_sent

    @property
    def state(self) -> SessionState:
        """What this session has established, as the engine's value."""
        return SessionState(secure=self.secure)

    # -- the adapter's interface -------------------------------------------------

    def send(self, envelope: Envelope) -> None:
        if self.over:
            # Too late for this session: report it at once rather than never.
            lost = _lost("session already ended")
            self._events.append(MessageResult(envelope, dict.fromkeys(envelope.recipients, lost)))
            return
        self._queue.append(envelope)
        self._advance()

    def finish(self, command: str = "QUIT") -> None:
        """End the session with QUIT, or with TURN / ATRN to swap roles."""
        self._finish = command
        self._advance()

    def request(self, command: str) -> None:
        """A command to say after the messages and before the finish (``ETRN node``);
        its reply comes back as ``CommandResult``."""
        self._requests.append(command)
        self._advance()

    def tls_started(self) -> None:
        """The handshake has begun: forget the clear-text EHLO answer and anything
        the server sent behind its 220 (RFC 3207 §4.2), and say EHLO again."""
        self.secure = True
        self._parser.take_rest()
        self.extensions = {}
        self._hello()

    def receive_data(self, data: bytes) -> None:
        if self.over:
            return
        self._parser.feed(data)
        while not self.over and self.phase is not Phase.HANDSHAKE:
            try:
                response = self._parser.next_reply()
            except ProtocolError as e:
                self._fail(str(e))
                return
            if response is None:
                return
            if response.code == 421:
                # RFC 5321 §3.8: whatever it answers, 421 means the server is
                # closing; every unfinished message is deferred with that reply.
                self._fail(f"server closing: {response}", response)
                return
            if not self._expect:
                self._fail(f"unexpected reply {response}")
                return
            self._expect.popleft()(response)
            if self._held and not self._expect:
                line, handler = self._held.popleft()
                self._out.append(line)
                self._expect.append(handler)

    def next_event(self) -> SenderEvent | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self, max_bytes: int = 4 * BODY_CHUNK) -> bytes:
        """Up to about ``max_bytes`` to write.  Stops at a body the adapter has not
        handed over yet (``body_wanted``)."""
        parts: list[bytes] = []
        size = 0
        out = self._out
        while out and size < max_bytes:
            item = out[0]
            if isinstance(item, bytes):
                out.popleft()
                parts.append(item)
                size += len(item)
                continue
            chunk = item.take()
            if chunk:
                parts.append(chunk)
                size += len(chunk)
            elif item.ended:
                out.popleft()
            else:
                break  # the adapter's turn: body_wanted
        return b"".join(parts)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    @property
    def body_wanted(self) -> Envelope | None:
        """The envelope whose body must come next (through ``send_body`` and
        ``end_body``): everything before it has been handed out."""
        out = self._out
        if out and isinstance(out[0], _Body) and not out[0].ended and not out[0].pending:
            return out[0].envelope
        return None

    def send_body(self, data: bytes) -> None:
        """The next piece of the wanted body (CRLF line ends, not dot-stuffed)."""
        self._wanted().feed(data)

    def end_body(self) -> None:
        """The wanted body is complete: the final dot follows."""
        self._wanted().end()

    def _wanted(self) -> _Body:
        out = self._out
        if not out or not isinstance(out[0], _Body) or out[0].ended:
            raise RuntimeError("no body is wanted now")
        return out[0]

    def converted(self, envelope: Envelope, replacement: Envelope | Reply) -> None:
        """The answer to ``ConversionNeeded(envelope)``: a 7-bit replacement to send
        in its place (results are reported for ``envelope``), or a refusal for every
        recipient.  Ignored once the session has reported ``envelope`` otherwise."""
        if self._converting is not envelope:
            return
        self._converting = None
        problem = replacement if isinstance(replacement, Reply) else self._unsendable(replacement)
        if problem is None and replacement.is_8bit:
            problem = reply(
                554, "5.6.3", "Conversion required but not supported: the conversion left 8-bit data"
            )
        if problem is not None:
            self._events.append(MessageResult(envelope, dict.fromkeys(envelope.recipients, problem)))
        else:
            self._start(envelope, replacement)
            return
        self._advance()

    def take_unread(self) -> bytes:
        """Bytes after the TURN reply: they belong to the new receiver."""
        return self._parser.take_rest()

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The transport went away: report every unfinished message as deferred."""
        if not self.over:
            self._fail(reason)

    # -- session set-up -----------------------------------------------------------

    def _on_greeting(self, response: Reply) -> None:
        if response.code != 220:
            self._command("QUIT", _ignore)
            self._fail(f"greeting refused: {response}", response)
            return
        self._hello()

    def _hello(self) -> None:
        self.phase = Phase.HELLO
        verb = "EHLO" if self._use_ehlo else "HELO"
        self._command(f"{verb} {self.hostname}", self._on_hello)

    def _on_hello(self, response: Reply) -> None:
        if response.code == 250:
            if self._use_ehlo:
                self.extensions = _parse_ehlo(response)
            self._secure_session()
        elif self._use_ehlo and response.code in (500, 501, 502, 504, 550):
            self._use_ehlo = False  # RFC 5321 §3.2: fall back to HELO
            self._hello()
        else:
            self._command("QUIT", _ignore)
            self._fail(f"HELO refused: {response}", response)

    # -- securing the session -----------------------------------------------------

    def _secure_session(self) -> None:
        """STARTTLS, then AUTH, as far as ``security`` asks; then ready."""
        security = self.security
        if security.tls != TLS_NONE and not self.secure and not self._tls_refused:
            if "STARTTLS" in self.extensions:
                self.phase = Phase.STARTTLS
                self._command("STARTTLS", self._on_starttls)
                return
            if security.tls != TLS_OPPORTUNISTIC:
                self._give_up("STARTTLS is required but the server does not offer it")
                return
        if security.username is not None and not self._auth_tried:
            self._authenticate()
            return
        self.phase = Phase.READY
        self._events.append(Ready(dict(self.extensions)))
        self._advance()

    def _on_starttls(self, response: Reply) -> None:
        if response.code == 220:
            self.phase = Phase.HANDSHAKE
            self._events.append(StartTlsAccepted())
        elif self.security.tls == TLS_OPPORTUNISTIC:
            self._tls_refused = True
            self._secure_session()
        else:
            self._give_up(f"STARTTLS is required but the server refused it: {response}")

    def _authenticate(self) -> None:
        security = self.security
        if "AUTH" not in self.extensions:
            if security.require_auth:
                self._give_up("AUTH is configured but the server does not offer it")
                return
            self._auth_tried = True  # this server does not want it: deliver without
            self._secure_session()
            return
        if not security.username:
            # Only SCRAM refuses an empty authcid itself; PLAIN, LOGIN and CRAM-MD5 would send the password.
            self._give_up("AUTH is configured with an empty username")
            return
        offered = self.extensions["AUTH"].upper().split()
        mechanism = choose_mechanism(offered, secure=self.secure, allow_clear=security.allow_clear)
        if mechanism is None:
            self._give_up(f"no AUTH mechanism we may use here (offered: {' '.join(offered) or 'none'})")
            return
        try:
            exchange = client_exchange(mechanism, security.username or "", security.password or "")
        except SaslError as e:
            self._give_up(f"cannot AUTH {mechanism} with these credentials: {e}")
            return
        line = f"AUTH {mechanism}"
        if exchange.initial is not None:
            line += " " + (encode(exchange.initial) or "=")
        self.phase = Phase.AUTH
        self._command(line, lambda response: self._on_auth(mechanism, exchange, response))

    def _on_auth(self, mechanism: str, exchange: ClientExchange, response: Reply) -> None:
        if response.code == 334:
            challenge = decode(response.text)
            try:
                if challenge is None:
                    raise SaslError("challenge is not base64")
                answer = exchange.respond(challenge)
            except SaslError as e:
                # Cancel (RFC 4954 §4); QUIT once the server has answered the cancel with 501.
                reason = f"AUTH {mechanism} failed: {e}"
                self._command("*", lambda _: self._give_up(reason))
                return
            self._command(encode(answer), lambda r: self._on_auth(mechanism, exchange, r))
        elif response.code == 235:
            try:
                exchange.verify_success()
            except SaslError as e:
                self._give_up(f"AUTH {mechanism}: the server did not prove it knows the password: {e}")
                return
            self.authenticated = self._auth_tried = True
            self._events.append(LoggedIn(mechanism))
            self._secure_session()
        else:
            self._give_up(f"AUTH {mechanism} refused: {response}")

    def _give_up(self, reason: str) -> None:
        """The session cannot be secured as configured: QUIT and defer everything."""
        self._command("QUIT", _ignore)
        self._fail(reason, status="4.7.0")

    # -- transactions -------------------------------------------------------------

    def _advance(self) -> None:
        """Start the next message, request or the final command when the session is idle."""
        if self.phase is not Phase.READY or self._current is not None or self._request is not None:
            return
        if self._converting is not None:
            return
        while self._queue:
            envelope = self._queue.popleft()
            problem = self._unsendable(envelope)
            if problem is None and envelope.is_8bit and "8BITMIME" not in self.extensions:
                self._converting = envelope
                self._events.append(ConversionNeeded(envelope))
                return
            if problem is None:
                self._start(envelope)
                return
            self._events.append(MessageResult(envelope, dict.fromkeys(envelope.recipients, problem)))
        if self._requests:
            command = self._request = self._requests.popleft()
            self._command(command, lambda response: self._on_request(command, response))
            return
        self._send_finish()

    def _on_request(self, command: str, response: Reply) -> None:
        self._request = None
        self._events.append(CommandResult(command, response))
        self._advance()

    def _send_finish(self) -> None:
        if self._finish is not None:
            command, self._finish = self._finish, None
            if command.upper() == "QUIT":
                self._command("QUIT", self._on_quit)
            else:
                self._command(command, self._on_turn)

    def _unsendable(self, envelope: Envelope) -> Reply | None:
        needs_utf8 = "SMTPUTF8" in envelope.params
        if needs_utf8 and "SMTPUTF8" not in self.extensions:
            return reply(553, "5.6.7", "Server does not support SMTPUTF8 addresses")
        limit = self.extensions.get("SIZE", "")
        size = _size(envelope)
        if size and limit.isdigit() and int(limit) and size > int(limit):
            return reply(552, "5.3.4", f"Message size exceeds the server's limit of {limit}")
        if not envelope.recipients:
            return reply(554, "5.5.1", "No recipients")
        return None

    def _start(self, envelope: Envelope, sending: Envelope | None = None) -> None:
        """MAIL for ``envelope``; ``sending``: what goes out in its place (a converted copy)."""
        sending = sending or envelope
        attempt = _Attempt(envelope, sending)
        self._current = attempt
        params = dict(sending.params)
        size = _size(sending)
        if "SIZE" in self.extensions and size is not None:
            params["SIZE"] = str(size)
        if "8BITMIME" not in self.extensions:
            params.pop("BODY", None)
        if "SMTPUTF8" not in self.extensions:
            params.pop("SMTPUTF8", None)
        if "AUTH" not in self.extensions:
            # RFC 4954 §5's AUTH= is optional and only for servers that offer AUTH; like
            # Postfix we never add AUTH=<> ourselves (aiosmtpd, for one, answers it with 555).
            params.pop("AUTH", None)
        args = "".join(f" {k}={v}" if v is not None else f" {k}" for k, v in params.items())
        self._command(f"MAIL FROM:<{envelope.reverse_path}>{args}", self._on_mail)
        if "PIPELINING" in self.extensions:
            for rcpt in envelope.recipients:
                self._command(f"RCPT TO:<{rcpt}>", self._rcpt_handler(rcpt))
            self._command("DATA", self._on_data)
        else:
            attempt.lockstep = True

    def _on_mail(self, response: Reply) -> None:
        attempt = self._current
        assert attempt is not None
        if response.code == 530:
            # "Must issue STARTTLS first" / "Authentication required": our configuration does
            # not match the server's, which is no reason to bounce the mail; keep it queued.
            response = reply(451, "4.7.0", f"The server wants TLS or AUTH first: {response}")
        if not response.is_positive:
            attempt.mail_failed = response
            for rcpt in attempt.envelope.recipients:
                attempt.results[rcpt] = response
            if attempt.lockstep:
                self._done()
            return
        if attempt.lockstep:
            self._next_lockstep_rcpt()

    def _next_lockstep_rcpt(self) -> None:
        attempt = self._current
        assert attempt is not None
        pending = [r for r in attempt.envelope.recipients if r not in attempt.results]
        pending = [r for r in pending if r not in attempt.accepted]
        if pending:
            rcpt = pending[0]
            self._command(f"RCPT TO:<{rcpt}>", self._rcpt_handler(rcpt))
        elif attempt.accepted:
            self._command("DATA", self._on_data)
        else:
            self._command("RSET", _ignore)
            self._done()

    def _rcpt_handler(self, rcpt: str) -> Callable[[Reply], None]:
        def on_rcpt(response: Reply) -> None:
            attempt = self._current
            assert attempt is not None
            if attempt.mail_failed is None:
                if response.is_positive:
                    attempt.accepted.append(rcpt)
                else:
                    attempt.results[rcpt] = response
            if attempt.lockstep:
                self._next_lockstep_rcpt()

        return on_rcpt

    def _on_data(self, response: Reply) -> None:
        attempt = self._current
        assert attempt is not None
        if response.code != 354:
            for rcpt in attempt.accepted:
                attempt.results[rcpt] = response
            if attempt.mail_failed is None:
                self._command("RSET", _ignore)
            self._done()
            return
        if not attempt.accepted:
            # RFC 2920 §3.1: all RCPTs failed but DATA was accepted: send an
            # empty message and make sure it is not delivered.
            self._out.append(b".\r\n")
            self._expect.append(_ignore)
            self._done()
            return
        self._out.append(_Body(attempt.sending))
        attempt.body_sent = True
        self._expect.append(self._on_data_end)
        if "PIPELINING" in self.extensions and not self._queue and not self._requests:
            # RFC 2920 §3.1: message content may open a group and QUIT/TURN
            # close it, so the last message and the final command share a
            # round trip.
            self._send_finish()

    def _on_data_end(self, response: Reply) -> None:
        attempt = self._current
        assert attempt is not None
        for rcpt in attempt.accepted:
            attempt.results[rcpt] = response
        self._done()

    def _done(self) -> None:
        attempt = self._current
        assert attempt is not None
        self._current = None
        results = {r: attempt.results[r] for r in attempt.envelope.recipients}
        self._events.append(MessageResult(attempt.envelope, results))
        self._advance()

    # -- the end ------------------------------------------------------------------

    def _on_quit(self, response: Reply) -> None:
        self.phase = Phase.CLOSED
        self._events.append(SessionEnded(response, clean=True))

    def _on_turn(self, response: Reply) -> None:
        if response.code == 250:
            self.phase = Phase.TURNED
            self._events.append(Turned(response))
        else:
            self._events.append(TurnRefused(response))
            self._command("QUIT", self._on_quit)

    def _fail(self, reason: str, response: Reply | None = None, status: str = "4.4.2") -> None:
        """The session is over: every message not finished is deferred."""
        lost = response if response is not None and response.code == 421 else reply(451, status, reason)
        if self._converting is not None:
            envelope, self._converting = self._converting, None
            self._events.append(MessageResult(envelope, dict.fromkeys(envelope.recipients, lost)))
        if self._current is not None:
            attempt, self._current = self._current, None
            results = {r: attempt.results.get(r, lost) for r in attempt.envelope.recipients}
            self._events.append(MessageResult(attempt.envelope, results))
        while self._queue:
            envelope = self._queue.popleft()
            self._events.append(MessageResult(envelope, dict.fromkeys(envelope.recipients, lost)))
        self._cut_unfinished_body()
        self._held.clear()
        self.phase = Phase.CLOSED
        self._events.append(SessionEnded(response, clean=False))

    def _cut_unfinished_body(self) -> None:
        """A body that will not be finished goes, with everything queued behind it:
        the server would read those commands as message text.  Without its final
        dot the server delivers nothing of it."""
        for index, item in enumerate(self._out):
            if isinstance(item, _Body) and not item.ended:
                for _ in range(len(self._out) - index):
                    self._out.pop()
                return

    def _command(self, line: str, handler: Callable[[Reply], None]) -> None:
        data = line.encode("utf-8") + b"\r\n"
        if self._expect and "PIPELINING" not in self.extensions:
            self._held.append((data, handler))  # one command, one reply (RFC 2920 §3)
            return
        self._out.append(data)
        self._expect.append(handler)


@dataclass
class _Attempt:
    envelope: Envelope  # what results are reported for
    sending: Envelope  # what is sent: the envelope, or its 7-bit conversion
    accepted: list[str] = field(default_factory=list)
    results: dict[str, Reply] = field(default_factory=dict)
    mail_failed: Reply | None = None
    lockstep: bool = False  # no PIPELINING: one command, one reply
    body_sent: bool = False  # 354 came and the body is on its way


class _Body:
    """One message's body on its way out, dot-stuffed piece by piece.  A bytes
    body is cut into pieces as they are wanted; any other comes from the adapter."""

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope
        self._bytes = envelope.body if isinstance(envelope.body, bytes) else None
        self._offset = 0
        self._stuffer = DotStuffer()
        self._ready: deque[bytes] = deque()
        self.ended = False

    @property
    def pending(self) -> bool:
        """Something is ready to go, or can be cut from a bytes body."""
        return bool(self._ready) or (self._bytes is not None and not self.ended)

    def feed(self, data: bytes) -> None:
        if data:
            self._ready.append(self._stuffer.feed(data))

    def end(self) -> None:
        self._ready.append(self._stuffer.finish())
        self.ended = True

    def take(self) -> bytes:
        if not self._ready and self._bytes is not None and not self.ended:
            chunk = self._bytes[self._offset : self._offset + BODY_CHUNK]
            self._offset += len(chunk)
            if chunk:
                self.feed(chunk)
            else:
                self.end()
        return self._ready.popleft() if self._ready else b""


def _size(envelope: Envelope) -> int | None:
    """The declared size (RFC 1870), known for a bytes body without being told."""
    if envelope.size is not None:
        return envelope.size
    return len(envelope.body) if isinstance(envelope.body, bytes) else None


def _parse_ehlo(response: Reply) -> dict[str, str]:
    extensions = {}
    for line in response.lines[1:]:
        keyword, _, arg = line.partition(" ")
        if keyword:
            extensions[keyword.upper()] = arg
    return extensions
