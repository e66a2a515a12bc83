"""``SMTPPeer``: the one Twisted protocol, playing receiver or sender, turning on TURN.

This is the only module that knows a connection can change roles or go
over to TLS.  It owns the transport, the timers and the current engine
object, feeds bytes in and writes bytes out; every decision goes to
``ReceiverHooks``, every message to send comes from a ``SenderJob``.

TLS and AUTH state belong to the connection, not to a role: a session
secured before a TURN stays secured after it, and the new sender does not
STARTTLS again.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smtppeer.engine import Limits, Receiver, Reply, Sender, reply
from smtppeer.engine import events as ev
from smtppeer.engine import sender as sev
from smtppeer.engine.address import address_literal
from smtppeer.engine.extensions import Extension
from smtppeer.engine.sender import ClientSecurity
from smtppeer.engine.session import SessionState
from smtppeer.twisted_private import start_tls

from .clients import AuthBudget, client_key
from .hooks import DropConnection, MessageSink, ReceiverHooks, SenderJob, Session
from .sendnow import send_now

log = Logger()

# Stop reading while a decision is pending and this much input is queued,
# so a client that pipelines without limit cannot fill our memory.
MAX_BUFFERED_INPUT = 1024 * 1024
BODY_CHUNK = 64 * 1024  # read from a body source at a time, while the transport takes it
WRITE_SIZE = 256 * 1024  # written at once, at most, while more is ready


@dataclass
class SessionSummary:
    """What one connection did, in both roles; ``Deferred`` result of ``peer.done``."""

    sent: list[sev.MessageResult] = field(default_factory=list)
    received: int = 0
    turned: bool = False
    turn_refused: Reply | None = None
    clean: bool = False
    error: str | None = None


@implementer(interfaces.IPushProducer, interfaces.IHalfCloseableProtocol)
class SMTPPeer(Protocol):
    """One SMTP connection; starts as receiver, or as sender when given a job."""

    def __init__(
        self,
        hostname: str,
        hooks: ReceiverHooks,
        *,
        job: SenderJob | None = None,
        limits: Limits | None = None,
        clock: interfaces.IReactorTime | None = None,
        extensions: list[Extension] | None = None,
        server_tls: object | None = None,
        require_tls: bool = False,
        only_commands: frozenset[str] | None = None,
        screen: frozenset[str] = frozenset(),
        client_security: ClientSecurity | None = None,
        client_tls: object | None = None,
    ) -> None:
        """``server_tls`` is the connection creator (``CertificateOptions``) for
        STARTTLS as a receiver; ``client_tls`` the one for STARTTLS as a sender,
        which ``client_security`` says when to use."""
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415
        self.hostname = hostname
        self.hooks = hooks
        self.job = job
        self.limits = limits or Limits()
        self.clock = clock
        self.extensions = extensions
        self.server_tls = server_tls
        self.require_tls = require_tls
        self.only_commands = only_commands
        self.screen = screen  # commands the hooks see before they run (``ReceiverHooks.screen``)
        self.client_security = client_security
        self.client_tls = client_tls
        # What the connection has established; the receiver keeps it up to date while it
        # runs, and a turn hands on what survives (``SessionState.after_turn``).
        self.state = SessionState()
        self._session: Session | None = None  # what hooks are given; rebuilt when it changes
        self.summary = SessionSummary()
        self.done: defer.Deferred[SessionSummary] = defer.Deferred()
        self.receiver: Receiver | None = None
        self.sender: Sender | None = None
        self.sink: MessageSink | None = None
        self._timer = None
        self._line_timer = None  # a command line that has begun must end within command_line_time
        self._line_mark = -1  # Receiver.lines_read when the line being timed began
        self._write_paused = False
        self._reading_paused = False
        self._pumping = False
        self._pump_again = False
        self._lost = False
        self._input_ended = False  # the other side shut down its sending side
        self.refusal: Reply | None = None  # set by the factory: a 421 to greet with (over a limit)
        self.counted_as: str | None = None  # the client address the factory counts this session under
        self.admitted = False  # the factory counts this session as holding a slot

    @property
    def role(self) -> str:
        return "sender" if self.sender is not None else "receiver"

    @property
    def input_ended(self) -> bool:
        """The other side has shut down its sending side (it may still read)."""
        return self._input_ended

    @property
    def secure(self) -> bool:
        return self.state.secure

    @property
    def session(self) -> Session:
        """The receiving session as hooks see it (a value, made again only when it changes)."""
        session = self._session
        if session is None:
            session = self._session = self._make_session()
        return session

    def _make_session(self) -> Session:
        receiver = self.receiver
        state = receiver.state if receiver is not None else self.state
        offers_auth = receiver is not None and any(
            x.keyword == "AUTH" and x.ehlo_line(receiver) for x in receiver.extensions
        )
        factory = self.factory
        return Session(
            self.client_address,
            self.client_literal,
            helo_name=state.helo_name,
            esmtp=state.esmtp,
            secure=state.secure,
            authenticated=state.authenticated,
            offers_auth=offers_auth,
            turn_by_address=getattr(factory, "turn_by_address", False),
            may_turn=getattr(factory, "may_turn", True),
            turned=self.state.turned,
            connection=self.connection,
        )

    # -- connection life ------------------------------------------------------------

    def connectionMade(self) -> None:
        if self.factory is not None:
            self.factory.peers.add(self)
        self.connection = next(_connections)
        peer = self.transport.getPeer()
        self.client_address: str = getattr(peer, "host", str(peer))
        prefix = getattr(self.factory, "client_ipv6_prefix_length", 128)
        self.client_key = client_key(getattr(peer, "host", None), prefix)
        self.client_literal = address_literal(self.client_address)
        self.transport.registerProducer(self, True)
        if self.job is not None:
            self._become_sender(self.job, b"")
        else:
            self._become_receiver(b"")

    def dataReceived(self, data: bytes) -> None:
        try:
            if self.receiver is not None:
                self.receiver.receive_data(data)
            elif self.sender is not None:
                self.sender.receive_data(data)
            self._pump()
        except Exception:
            # A bug must cost one session, cleanly, never the service.
            log.failure("internal error in {role} session with {c}", role=self.role, c=self.client_address)
            self._abandon(reply(421, "4.3.0", f"{self.hostname} Internal error, closing connection"))

    def readConnectionLost(self) -> None:
        """The other side shut down its sending side (TCP FIN; under TLS its
        close_notify, or a FIN) and may still read.

        Exim says ``.`` and ``QUIT`` in one write and then shuts down its side
        before it reads the ``250`` for the dot.  Closing now would commit the
        message without saying so, and the client would send it again.  So a
        receiver answers everything it was sent, decisions still pending
        included (a message's ``250`` comes when the disk says so), then the
        ``221``, and only then closes.  A server that stops sending ends a
        sender's session: what it did not answer is deferred.
        """
        if self._input_ended or self._lost:
            return
        self._input_ended = True
        self._reading_paused = False  # reading has stopped for good: never resume it
        try:
            if self.receiver is not None:
                self.receiver.receive_eof()
                self._pump()
            elif self.sender is not None and not self.sender.over:
                self._abandon(reply(451, "4.4.2", "The server closed the connection"), "closed by the server")
        except Exception:
            log.failure("internal error in {role} session with {c}", role=self.role, c=self.client_address)
            self._abandon(reply(421, "4.3.0", f"{self.hostname} Internal error, closing connection"))

    def writeConnectionLost(self) -> None:
        """``IHalfCloseableProtocol``: we never shut down our sending side alone."""

    def connectionLost(self, reason: Failure = None) -> None:
        if self.factory is not None:
            self.factory.session_ended(self)
        self._lost = True
        self._cancel_timer()
        self._drop_sink()
        if self.sender is not None:
            self.sender.connection_lost(reason.getErrorMessage() if reason else "connection lost")
            self._pump_sender()
        if self.summary.error is None and not self.summary.clean:
            self.summary.error = reason.getErrorMessage() if reason else "connection lost"
        if self.job is not None:
            self.job.end()
        if not self.done.called:
            self.done.callback(self.summary)

    # IPushProducer: the transport tells us when its write buffer is full.
    def pauseProducing(self) -> None:
        self._write_paused = True
        if self.sender is not None and not self._lost:
            # RFC 5321 §4.5.3.2.5: a block of data that the other side does not
            # take within this long ends the session (its messages stay queued).
            self._arm(self.limits.data_block_timeout)

    def resumeProducing(self) -> None:
        self._write_paused = False
        if self.sender is not None:
            self._pump()  # writes what is left and sets the timer for the reply again
        else:
            self._flush()

    def stopProducing(self) -> None:
        self._write_paused = True

    # -- roles ------------------------------------------------------------------------

    def _become_receiver(self, unread: bytes) -> None:
        self.sender = None
        self.receiver = Receiver(
            self.hostname,
            self.limits,
            self.extensions,
            secure=self.state.secure,
            require_tls=self.require_tls,
            only_commands=self.only_commands,
            screen=self.screen,
        )
        self._session = None
        receiver = self.receiver
        if getattr(self.factory, "auth_budget", None) is not None:
            receiver.auth_gate = self._auth_gate
        if unread:
            receiver.receive_data(unread)
        if self._input_ended:
            receiver.receive_eof()  # it has said all it will: what it said is still answered
        if self.refusal is not None:  # over a limit of the factory's: 421, and nothing else
            self._greet(receiver, self.refusal)
            return

        def failed(failure: Failure) -> Reply | None:
            if not self._dropped(failure):
                log.failure("greeting hook failed; greeting as usual", failure)
            return None

        _call_hook(lambda: self.hooks.greeting(self.session), lambda g: self._greet(receiver, g), failed)

    def _greet(self, receiver: Receiver, greeting: Reply | None) -> None:
        """Start the receiver with its greeting: only now is anything read and answered."""
        if receiver is not self.receiver or self._lost:
            return
        receiver.start(greeting)
        self._arm(self.limits.command_timeout)
        self._pump()

    def _become_sender(self, job: SenderJob, unread: bytes) -> None:
        self._cancel_line_timer()
        self.receiver = None
        self._session = None
        self.job = job
        # A sender that took over a turned connection is already as secure as it will get.
        security = None if self.state.turned else self.client_security
        self.sender = Sender(self.hostname, self.limits, security=security, secure=self.state.secure)
        for command in job.requests:
            self.sender.request(command)
        for envelope in job.envelopes:
            self.sender.send(envelope)
        self.sender.finish(job.finish)
        if unread:
            self.sender.receive_data(unread)
        if self._input_ended and not self.sender.over:
            # The other side turned and stopped sending: it cannot answer what we would send.
            self._abandon(reply(451, "4.4.2", "The other side closed the connection"), "closed after turning")
            return
        self._arm(self.limits.reply_timeout)
        self._pump()

    # -- the engine pump --------------------------------------------------------------

    def _pump(self) -> None:
        """Run the current engine until it needs input or an answer."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                if self.receiver is not None:
                    self._pump_receiver()
                elif self.sender is not None:
                    self._pump_sender()
                self._flush()
                if not self._pump_again:
                    break
        finally:
            self._pumping = False

    def _pump_receiver(self) -> None:
        receiver = self.receiver
        if not receiver.started:
            return  # the greeting is being decided
        while receiver is self.receiver:
            event = receiver.next_event()
            if event is ev.NEED_DATA:
                self._resume_reading()
                in_data = receiver.in_data
                self._arm(self.limits.data_timeout if in_data else self.limits.command_timeout)
                if self._line_timer is not None or (not in_data and receiver.line_pending):
                    self._time_line(receiver)
                return
            if event is ev.PAUSED:
                self._cancel_timer()  # the client is waiting for us, not we for it
                if receiver.buffered_input > MAX_BUFFERED_INPUT:
                    self._pause_reading()
                return
            if event is ev.CLOSED:
                self._close_after_flush()
                return
            handler = _RECEIVER_EVENTS.get(type(event))
            if handler is not None:
                handler(self, receiver, event)

    # What to do with each receiver event: a table, not a chain of isinstance checks.

    def _on_mail_from(self, receiver: Receiver, event: ev.MailFrom) -> None:
        self._decide(receiver, lambda: self.hooks.mail_from(self.session, event.path, event.params))

    def _on_rcpt_to(self, receiver: Receiver, event: ev.RcptTo) -> None:
        self._decide(receiver, lambda: self.hooks.rcpt_to(self.session, event.path, event.params))

    def _on_data_started(self, receiver: Receiver, event: ev.DataStarted) -> None:
        try:
            self.sink = self.hooks.begin_message(self.session, receiver.transaction)
        except Exception:
            log.failure("could not start storing a message")

    def _on_data_chunk(self, receiver: Receiver, event: ev.DataChunk) -> None:
        if self.sink is not None:
            self.sink.write(event.data)

    def _on_data_end(self, receiver: Receiver, event: ev.DataEnd) -> None:
        sink, self.sink = self.sink, None
        if sink is None:
            self._decide(receiver, lambda: reply(451, "4.3.0", "Could not store the message"))
        else:
            self._decide(receiver, sink.finish, received=True)

    def _on_data_failed(self, receiver: Receiver, event: ev.DataFailed) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.refused(event.reason)
        else:
            log.info("message refused by the engine: {reason}", reason=event.reason)

    def _on_reset(self, receiver: Receiver, event: ev.Reset) -> None:
        self._drop_sink()
        self.hooks.reset(self.session)

    def _on_hello(self, receiver: Receiver, event: ev.Hello) -> None:
        self._session = None

    def _on_verify(self, receiver: Receiver, event: ev.Verify) -> None:
        self._decide(receiver, lambda: self.hooks.verify(self.session, event.verb, event.argument))

    def _auth_gate(self) -> Reply | None:
        return self.factory.auth_budget.check(self.client_key, self.hostname)

    def _on_authenticated(self, receiver: Receiver, event: ev.Authenticated) -> None:
        self._session = None
        budget = getattr(self.factory, "auth_budget", None)
        if budget is not None:
            budget.succeeded(self.client_key)
        log.info(
            "{line}",
            line=f"AUTH {event.mechanism} as {event.identity} from {self.client_address}",
            identity=event.identity,
        )

    def _on_auth_failed(self, receiver: Receiver, event: ev.AuthFailed) -> None:
        budget = getattr(self.factory, "auth_budget", None)
        if budget is not None and event.guess:
            budget.failed(self.client_key)
        log.info(
            "{line}",
            line=f"AUTH {event.mechanism} failed from {self.client_address}: {event.reason}",
            client=self.client_address,
        )

    def _on_queue_start(self, receiver: Receiver, event: ev.QueueStartRequested) -> None:
        self._decide(receiver, lambda: self.hooks.start_queue(self.session, event.node, event.kind))

    def _on_extension_command(self, receiver: Receiver, event: ev.ExtensionCommand) -> None:
        self._decide(receiver, lambda: self.hooks.extension_command(self.session, event.verb, event.argument))

    def _on_quit(self, receiver: Receiver, event: ev.Quit) -> None:
        self.summary.clean = True

    def _on_close(self, receiver: Receiver, event: ev.Close) -> None:
        self.summary.error = event.reason
        self._drop_sink()

    def _decide(self, receiver: Receiver, ask, received: bool = False) -> None:
        """Ask a hook; answer the engine now, or when its Deferred fires."""

        def answer(response: Reply | None) -> None:
            if receiver is not self.receiver or self._lost or response is None:
                return
            if received and response.is_positive:
                self.summary.received += 1
            receiver.answer(response)
            self._pump()

        def failed(failure: Failure) -> Reply | None:
            if self._dropped(failure):
                return None
            log.failure("hook failed; answering 451", failure)
            return reply(451, "4.3.0", "Local error in processing; try again later")

        _call_hook(ask, answer, failed)

    def _on_screened(self, receiver: Receiver, event: ev.Screened) -> None:
        """A command shown to the hooks first: None runs it, a reply refuses it."""

        def decided(response: Reply | None) -> None:
            if receiver is not self.receiver or self._lost:
                return
            if response is None:
                receiver.proceed()
            else:
                receiver.answer(response)
            self._pump()

        def failed(failure: Failure) -> Reply | None:
            if self._dropped(failure):
                return None
            log.failure("screen hook failed; running the command", failure)
            return None

        session = self.session
        _call_hook(lambda: self.hooks.screen(session, event.verb, event.argument), decided, failed)

    def _dropped(self, failure: Failure) -> bool:
        """A hook said ``DropConnection``: cut the connection now, answering nothing."""
        if not failure.check(DropConnection):
            return False
        if not self._lost:
            log.info("{line}", line=f"connection with {self.client_address} dropped on purpose")
            self.summary.error = "dropped"
            self._flush()  # what was answered before goes out; nothing after it
            self._drop_sink()
            self._cancel_timer()
            self._lost = True  # nothing more is written; connectionLost finishes the clean-up
            self.transport.abortConnection()
        return True

    def _on_turn(self, receiver: Receiver, event: ev.TurnRequested) -> None:
        """The hook returns the job to send after turning, or a refusal (None: 502)."""

        def decided(job: SenderJob | Reply | None) -> None:
            if receiver is not self.receiver or self._lost:
                if isinstance(job, SenderJob):  # it will never be sent: give it back
                    job.abandon("connection lost before turning")
                return
            if self._input_ended and isinstance(job, SenderJob):
                # The client has stopped sending: it could never greet us as a server.
                job.abandon("the client closed its side before turning")
                job = reply(451, "4.4.2", "Not turning: the connection is closing")
            if not isinstance(job, SenderJob):
                receiver.answer(job or reply(502, "5.5.1", f"{event.verb} not allowed"))
                self._pump()
                return
            receiver.answer(reply(250, "2.0.0", "OK, turning around"))
            self._flush()
            self.summary.turned = True
            self.state = receiver.state.after_turn()
            self._become_sender(job, receiver.take_unread())

        def failed(failure: Failure) -> Reply | None:
            if self._dropped(failure):
                return None  # decided() finds the connection gone
            log.failure("turn hook failed; refusing", failure)
            return reply(451, "4.3.0", "Local error in processing; try again later")

        session = self.session
        _call_hook(lambda: self.hooks.turn(session, event.verb, event.domains), decided, failed)

    def _on_starttls(self, receiver: Receiver, event: ev.StartTLSRequested) -> None:
        """220, then the handshake; what the client sent behind STARTTLS in clear
        is dropped by the engine, never parsed."""
        if self.server_tls is None:
            receiver.answer(reply(454, "4.7.0", "TLS not available"))
            return
        receiver.answer(reply(220, "2.0.0", "Ready to start TLS"))
        self._flush()
        dropped = receiver.tls_started()
        self._session = None
        if dropped:
            log.info(
                "{line}",
                line=f"dropped {dropped} octets sent in clear behind STARTTLS by {self.client_address}",
            )
        self._start_tls(self.server_tls)

    def _start_tls(self, creator: object) -> None:
        self.state = self.state.after_starttls()
        # startTLS re-registers the producer with the TLS layer, which wants a streaming one;
        # start_tls makes that layer report the other side's close_notify as a half-close.
        start_tls(self.transport, creator)

    def _pump_sender(self) -> None:
        sender = self.sender
        while sender is self.sender:
            event = sender.next_event()
            if event is None:
                if not self._lost:
                    limits = self.limits
                    self._arm(limits.data_end_timeout if sender.awaiting_data_end else limits.reply_timeout)
                return
            handler = _SENDER_EVENTS.get(type(event))
            if handler is not None:
                handler(self, sender, event)

    def _on_message_result(self, sender: Sender, event: sev.MessageResult) -> None:
        self.summary.sent.append(event)
        if self.job is not None:
            self.job.record(event)

    def _on_sender_starttls(self, sender: Sender, event: sev.StartTlsAccepted) -> None:
        self._start_tls(self.client_tls or _any_certificate())
        sender.tls_started()

    def _on_conversion_needed(self, sender: Sender, event: sev.ConversionNeeded) -> None:
        """The job converts the message (it may take a while: the whole message is
        read); the engine waits meanwhile and drops an answer that comes too late."""
        convert = self.job.convert if self.job is not None else None

        def ask() -> sev.Envelope | Reply | defer.Deferred:
            if convert is None:
                return reply(554, "5.6.3", "Conversion required but not supported: the server lacks 8BITMIME")
            return convert(event.envelope)

        def answer(result: sev.Envelope | Reply) -> None:
            if sender is self.sender and not self._lost:
                sender.converted(event.envelope, result)
                self._pump()

        def failed(failure: Failure) -> Reply:
            log.failure("could not convert a message to 7 bits", failure)
            return reply(451, "4.3.0", "Could not convert the message to 7 bits; will try again")

        _call_hook(ask, answer, failed)

    def _on_logged_in(self, sender: Sender, event: sev.LoggedIn) -> None:
        log.debug("authenticated with {mechanism}", mechanism=event.mechanism)

    def _on_command_result(self, sender: Sender, event: sev.CommandResult) -> None:
        if self.job is not None:
            self.job.request_results.append((event.command, event.reply))

    def _on_turned(self, sender: Sender, event: sev.Turned) -> None:
        if self.job is not None:
            self.job.turned, self.job.turn_reply = True, event.reply
        self.state = self.state.after_turn()
        self._become_receiver(sender.take_unread())

    def _on_turn_refused(self, sender: Sender, event: sev.TurnRefused) -> None:
        self.summary.turn_refused = event.reply
        if self.job is not None:
            self.job.turn_reply = event.reply

    def _on_session_ended(self, sender: Sender, event: sev.SessionEnded) -> None:
        self.summary.clean = event.clean
        if not event.clean and self.summary.error is None:
            self.summary.error = str(event.reply) if event.reply else "session failed"
        self._close_after_flush()

    # -- output and timers -----------------------------------------------------------

    def _flush(self) -> None:
        if self._lost:
            return
        engine = self.receiver if self.receiver is not None else self.sender
        # What is ready goes out in one write: a body and its final dot (or a reply and the
        # next) in separate small writes would wait on the peer's delayed ACK (Nagle).
        pending: list[bytes] = []
        size = 0
        while engine is not None and not self._write_paused:
            data = engine.data_to_send()
            if data:
                pending.append(data)
                size += len(data)
                if size >= WRITE_SIZE:
                    self._write(b"".join(pending))
                    pending, size = [], 0
            elif not (engine is self.sender and self._feed_body(engine)):
                break
        if pending:
            self._write(b"".join(pending))

    def _write(self, data: bytes) -> None:
        rest = send_now(self.transport, data)
        if rest:
            self.transport.write(rest)

    def _feed_body(self, sender: Sender) -> bool:
        """Hand the sender the next piece of the body it wants, read here (the engine
        reads no files) only while the transport takes what we write.  A body that
        cannot be read ends the session before its final dot, so nothing truncated
        is ever delivered; its message stays queued."""
        envelope = sender.body_wanted
        if envelope is None:
            return False
        try:
            chunk = envelope.body.read(BODY_CHUNK)
        except OSError as e:
            log.info("{line}", line=f"cannot read a message body to send: {e}")
            self._abandon(reply(451, "4.3.0", f"Cannot read the message: {e}"), f"body unreadable: {e}")
            return False
        if chunk:
            sender.send_body(chunk)
        else:
            sender.end_body()
        return True

    def _close_after_flush(self) -> None:
        self._flush()
        self._cancel_timer()
        self._disconnect()

    def _disconnect(self) -> None:
        if self._lost:
            # Called from connectionLost (the sender's Closed event): nothing left to close,
            # and a TLS transport has already dropped its protocol (unregisterProducer raises).
            return
        # TLS sends its close_notify only once no producer is registered; without
        # this a secured session would stay open after QUIT until the timeout.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self._input_ended:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._input_ended:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _arm(self, seconds: float) -> None:
        """(Re)start the timer; ``reset`` is much cheaper than cancel + callLater."""
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(seconds)
        else:
            self._timer = self.clock.callLater(seconds, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._cancel_line_timer()

    def _time_line(self, receiver: Receiver) -> None:
        """Time each command line from its first octet to its end, as a whole: the idle
        timer is re-armed by every octet, so a client trickling one a second would
        otherwise hold its session (and a slot of the listener) for ever."""
        if not receiver.line_pending:
            if self._line_timer is not None:
                self._cancel_line_timer()
            return
        mark = receiver.lines_read
        if self._line_timer is not None and mark == self._line_mark:
            return  # still the same line
        self._line_mark = mark
        seconds = self.limits.command_line_time
        if self._line_timer is not None:
            self._line_timer.reset(seconds)
        else:
            self._line_timer = self.clock.callLater(seconds, self._line_timed_out)

    def _cancel_line_timer(self) -> None:
        timer, self._line_timer = self._line_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _line_timed_out(self) -> None:
        self._line_timer = None
        seconds = self.limits.command_line_time
        log.info("{line}", line=f"{self.client_address} took over {seconds:g}s to send a command line")
        self._abandon(
            reply(421, "4.4.2", f"{self.hostname} Command line too slow, closing connection"),
            "command line timeout",
        )
        if self._write_paused and not self._lost:
            self.transport.abortConnection()  # as in _timed_out: it reads nothing either

    def _timed_out(self) -> None:
        self._timer = None
        log.info("{role} session with {client} timed out", role=self.role, client=self.client_address)
        self._abandon(reply(421, "4.4.2", f"{self.hostname} Timeout, closing connection"), "timeout")
        if self._write_paused and not self._lost:
            # The other side takes nothing we write: a graceful close would wait for it
            # to read our buffered data forever.
            self.transport.abortConnection()

    def shut_down(self) -> None:
        """The service is stopping: end this session cleanly from our side."""
        if not self._lost:
            self._abandon(reply(421, "4.3.2", f"{self.hostname} Service shutting down"), "shutdown")

    def _abandon(self, response: Reply, error: str | None = None) -> None:
        """End the session from our side: a receiver says ``response`` first;
        a sender reports its unfinished messages as deferred."""
        self.summary.error = error or str(response)
        self._drop_sink()
        if self.receiver is not None:
            self.receiver.close(response)
            self._close_after_flush()
            return
        if self.sender is not None:
            self.sender.connection_lost(error or response.text)
            self._pump_sender()
        self._cancel_timer()
        self._disconnect()

    def _drop_sink(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.abort()


_RECEIVER_EVENTS = {
    ev.MailFrom: SMTPPeer._on_mail_from,
    ev.RcptTo: SMTPPeer._on_rcpt_to,
    ev.DataStarted: SMTPPeer._on_data_started,
    ev.DataChunk: SMTPPeer._on_data_chunk,
    ev.DataEnd: SMTPPeer._on_data_end,
    ev.DataFailed: SMTPPeer._on_data_failed,
    ev.Reset: SMTPPeer._on_reset,
    ev.Hello: SMTPPeer._on_hello,
    ev.Verify: SMTPPeer._on_verify,
    ev.TurnRequested: SMTPPeer._on_turn,
    ev.StartTLSRequested: SMTPPeer._on_starttls,
    ev.Screened: SMTPPeer._on_screened,
    ev.Authenticated: SMTPPeer._on_authenticated,
    ev.AuthFailed: SMTPPeer._on_auth_failed,
    ev.QueueStartRequested: SMTPPeer._on_queue_start,
    ev.ExtensionCommand: SMTPPeer._on_extension_command,
    ev.Quit: SMTPPeer._on_quit,
    ev.Close: SMTPPeer._on_close,
}

_SENDER_EVENTS = {
    sev.MessageResult: SMTPPeer._on_message_result,
    sev.StartTlsAccepted: SMTPPeer._on_sender_starttls,
    sev.ConversionNeeded: SMTPPeer._on_conversion_needed,
    sev.LoggedIn: SMTPPeer._on_logged_in,
    sev.CommandResult: SMTPPeer._on_command_result,
    sev.Turned: SMTPPeer._on_turned,
    sev.TurnRefused: SMTPPeer._on_turn_refused,
    sev.SessionEnded: SMTPPeer._on_session_ended,
}


_connections = itertools.count(1)


@functools.cache
def _any_certificate() -> object:
    """Opportunistic TLS: encryption against passive eavesdroppers, no authentication.
    One for the process: its SSL context is built once, not per connection."""
    from twisted.internet import ssl  # noqa: PLC0415 - pyOpenSSL only when TLS is used

    return ssl.CertificateOptions()


def _call_hook(ask, then, on_failure) -> None:
    """``then(ask())``, waiting if ``ask`` returns a Deferred; ``then(on_failure(f))``
    if it fails.  No Deferred is made for a plain result: this runs for every
    MAIL, RCPT and DATA."""
    try:
        result = ask()
    except Exception:
        then(on_failure(Failure()))
        return
    if isinstance(result, defer.Deferred):
        result.addCallbacks(then, lambda f: then(on_failure(f)))
    else:
        then(result)


class SMTPPeerFactory(Factory):
    """Builds peers for a listener (receiver first) or for one outgoing job (sender first).

    ``peer_options`` are passed to every ``SMTPPeer`` (``job``, ``limits``,
    ``clock``, ``extensions``).
    """

    noisy = False
    protocol = SMTPPeer

    def __init__(
        self,
        hostname: str,
        hooks: ReceiverHooks,
        *,
        max_connections: int | None = None,
        max_connections_per_client: int | None = None,
        client_ipv6_prefix_length: int = 128,
        auth_budget: AuthBudget | None = None,
        turn_by_address: bool = False,
        may_turn: bool = True,
        **peer_options,
    ) -> None:
        """``max_connections_per_client``: sessions one client address may hold here
        (None or 0: no limit), an IPv6 client counted as its network of
        ``client_ipv6_prefix_length`` bits; ``auth_budget``: failed AUTHs per client
        address (counted alike), usually shared by every listener of the service."""
        self.hostname = hostname
        self.hooks = hooks
        self.peer_options = peer_options
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client or None
        self.client_ipv6_prefix_length = client_ipv6_prefix_length
        self.auth_budget = auth_budget
        self.per_client: dict[str, int] = {}  # sessions counted per client address
        self._admitted = 0  # sessions not refused at their greeting
        self.turn_by_address = turn_by_address  # a listener's ``turn = true``, for the TURN policy
        self.may_turn = may_turn  # False: this listener never turns (it is shared with workers)
        self.peers: set[SMTPPeer] = set()

    @property
    def active(self) -> int:
        """Sessions that hold a slot: not those refused at the greeting, which end at
        once (a client reconnecting over its limit cannot take the others' slots)."""
        return self._admitted

    def shutdown(self) -> defer.Deferred:
        """Say 421 to every session and close it; fires when all are gone.

        Nothing unacknowledged is lost: a message whose 250 was not sent is
        still the client's to retry, and queued mail stays in the spool.
        """
        closing = [peer.done for peer in self.peers]
        for peer in list(self.peers):
            peer.shut_down()
        return defer.DeferredList(closing, consumeErrors=True)

    def buildProtocol(self, addr) -> SMTPPeer:
        """Over ``max_connections``, or over ``max_connections_per_client`` for its
        address, the peer still answers, with 421, so the client knows to retry later
        instead of seeing a reset.  Refused sessions are not counted, neither against
        the listener nor against their address: they end at once."""
        peer = self.protocol(self.hostname, self.hooks, **self.peer_options)
        peer.factory = self
        if self.max_connections is not None and self.active >= self.max_connections:
            peer.refusal = reply(421, "4.7.0", f"{self.hostname} Too many connections, try again later")
            return peer
        limit = self.max_connections_per_client
        host = getattr(addr, "host", None)
        key = client_key(host, self.client_ipv6_prefix_length) if limit is not None else None
        if key is not None:
            count = self.per_client.get(key, 0)
            if count >= limit:
                peer.refusal = reply(
                    421, "4.7.0", f"{self.hostname} Too many connections from your address, try again later"
                )
                return peer
            self.per_client[key] = count + 1
            peer.counted_as = key
            if count + 1 == limit:
                log.info(
                    "{line}", line=f"{key} has {limit} sessions (max_connections_per_client)", client=key
                )
        self._admitted += 1
        peer.admitted = True
        return peer

    def session_ended(self, peer: SMTPPeer) -> None:
        self.peers.discard(peer)
        if peer.admitted:
            peer.admitted = False
            self._admitted -= 1
        key, peer.counted_as = peer.counted_as, None
        if key is not None:
            count = self.per_client.pop(key) - 1
            if count:
                self.per_client[key] = count
