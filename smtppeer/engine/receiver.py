"""The receiver-SMTP (server) role as a sans-IO state machine.

Bytes go in with ``receive_data``; ``next_event`` returns what happened; the
adapter answers decisions with ``answer``; ``data_to_send`` returns the bytes
to write.  Parsing stops at each decision, so replies to pipelined commands
always go out in command order (RFC 2920 §3.1) however long a decision takes.

Sequencing and reply codes follow RFC 5321 §4.1 and §4.3.2 and RFC 821 §4.3.
"""

from __future__ import annotations

from collections.abc import Callable

from . import events as ev
from .address import AddressError, parse_path, split_mail_argument
from .extensions import Extension, default_extensions
from .framing import BARE_LINE_END, NUL, BareLineEnd, DataDecoder, LineReader, LineTooLong
from .limits import Limits
from .replies import Reply, printable, reply
from .session import SessionState, Transaction

HELP_TEXT = (
    "smtppeer: an SMTP peer that can TURN",
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN TURN",
    "SOML and SAML are taken as MAIL; SEND is not implemented",
)

AUTH_LINE = 12288

ECHO = 64  # characters of client input a reply repeats (escaped by replies.printable)

# Replies sent on every message or command, serialised once.
_OK = reply(250, "2.0.0", "OK").to_bytes()
_GO_AHEAD = reply(354, None, "End data with <CR><LF>.<CR><LF>").to_bytes()

# What a client may say before STARTTLS on a listener that requires TLS (RFC 3207 §4).
BEFORE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "QUIT"})


class Receiver:
    """One receiver-SMTP session, from the greeting to QUIT (or a TURN)."""

    def __init__(
        self,
        hostname: str,
        limits: Limits | None = None,
        extensions: list[Extension] | None = None,
        *,
        secure: bool = False,
        require_tls: bool = False,
        only_commands: frozenset[str] | None = None,
        screen: frozenset[str] = frozenset(),
    ) -> None:
        """``screen``: commands (upper case) the adapter sees first, as ``Screened``
        decisions, before they run."""
        self.hostname = hostname
        self.limits = limits or Limits()
        self.extensions = default_extensions() if extensions is None else extensions
        self.helo_name: str | None = None
        self.esmtp = False
        self.transaction: Transaction | None = None
        self.closed = False
        self.secure = secure  # the session runs over TLS
        self.require_tls = require_tls
        self.only_commands = only_commands  # e.g. the ODMR port's restricted profile (RFC 2645 §4)
        self.screen = screen
        self._screened: tuple | None = None
        self.started = False  # the greeting has been queued
        self.authenticated: str | None = None  # the AUTH identity, once there is one
        self.auth_failures = 0
        self.auth_gate: Callable[[], Reply | None] | None = None  # see ExtensionHost
        self.lines_read = 0  # command lines taken so far (an adapter times each one's arrival)
        # An extension in mid-exchange (AUTH) takes the next line instead of the command parser.
        self.continuation: Callable[[str], None] | None = None
        self._tls_pending = False
        self._input_ended = False  # the client will send nothing more (receive_eof)
        # RFC 4954 §4: AUTH lines (the command and the client's answers) may be up to
        # 12288 octets; every other command is still held to the command-line limit.
        self._auth_offered = any(x.keyword == "AUTH" for x in self.extensions)
        longest = max(self.limits.command_line, AUTH_LINE) if self._auth_offered else self.limits.command_line
        self._lines = LineReader(longest)
        self._out: list[bytes] = []
        self._events: list[ev.Event] = []
        self._awaiting: ev.Decision | None = None
        self._decoder: DataDecoder | None = None
        self._data_size = 0
        self._too_big = False
        self._bad_commands = 0
        self._refused = False
        self._commands = self._command_table()
        self._mail_params = {k: f for x in self.extensions for k, f in x.mail_params.items()}
        self._rcpt_params = {k: f for x in self.extensions for k, f in x.rcpt_params.items()}

    # -- the adapter's interface -------------------------------------------------

    def start(self, greeting: Reply | None = None) -> None:
        """Queue the 220 greeting, or refuse the session.

        After a 554 greeting the server "MUST still wait for the client to send
        a QUIT" and answers anything else with 503 (RFC 5321 §3.1); any other
        code (421) closes the session at once.
        """
        greeting = greeting or reply(220, None, f"{self.hostname} ESMTP smtppeer")
        self.started = True
        self._send(greeting)
        if greeting.is_permanent:
            self._refused = True
        elif greeting.code != 220:
            self.closed = True

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if self._decoder is not None:
            self._feed_body(data)
        else:
            self._lines.feed(data)

    def receive_eof(self) -> None:
        """The client has shut down its sending side (a TCP FIN, a TLS close_notify).

        It can still read: a half-closed connection carries replies (RFC 5321
        §3.8, §6.1), and Exim half-closes right after ``.`` and ``QUIT``,
        before it has read the ``250`` for the dot.  So everything it sent is
        still parsed and answered, decisions pending included; once its input
        runs out the session ends (``Close``, then ``CLOSED``).  A last line
        without its CRLF is not a command, and a message without its final
        dot is not a message: neither gets a reply.
        """
        self._input_ended = True

    def next_event(self) -> ev.Event | object:
        """The next event, or NEED_DATA / PAUSED (awaiting an answer) / CLOSED."""
        while True:
            if self._events:
                event = self._events.pop(0)
                if event.needs_answer:
                    self._awaiting = event
                return event
            if self._awaiting is not None or self._tls_pending:
                return ev.PAUSED
            if self.closed:
                return ev.CLOSED
            line = None if self._decoder is not None else self._lines.next_line()
            if line is None:
                if not self._input_ended:
                    return ev.NEED_DATA
                self._end_of_input()
                continue
            self.lines_read += 1
            self._handle_line(line)

    def _end_of_input(self) -> None:
        """Everything the client sent has been read and it will send no more."""
        self.closed = True
        self.continuation = None
        self._decoder = None
        self.transaction = None
        self._events.append(ev.Close("the client closed its side of the connection"))

    def answer(self, response: Reply) -> None:
        """Answer the pending decision; its reply is queued at once."""
        decision = self._awaiting
        if decision is None:
            raise RuntimeError("no decision is pending")
        self._awaiting = None
        if isinstance(decision, ev.MailFrom):
            if response.is_positive:
                params = decision.params
                self.transaction = Transaction(decision.path, params, utf8="SMTPUTF8" in params)
        elif isinstance(decision, ev.RcptTo):
            if response.is_positive and self.transaction is not None:
                self.transaction = self.transaction.with_recipient(decision.path)
        elif isinstance(decision, ev.DataEnd):
            self.transaction = None
        elif isinstance(decision, ev.StartTLSRequested):
            # Nothing more is read in clear: whatever followed STARTTLS is dropped at tls_started.
            self._tls_pending = response.code == 220
        elif isinstance(decision, ev.Screened):
            self._screened = None  # refused: it does not run
        self._send(response)

    def tls_started(self) -> int:
        """The TLS handshake has begun: forget everything learnt in clear (RFC 3207 §4.2)
        and drop any input received before it.  Returns the octets dropped."""
        self._tls_pending = False
        self.secure = True
        self.helo_name, self.esmtp = None, False
        self.authenticated = None  # an AUTH in clear does not carry over to the TLS session
        self.transaction = None
        self.continuation = None
        return self._lines.discard()

    # -- for extensions ---------------------------------------------------------------

    def send_reply(self, response: Reply) -> None:
        self._send(response)

    def reject(self, response: Reply) -> None:
        """A reply to bad input, counted towards the bad-command limit."""
        self._reply_or_error(response)

    def emit(self, event: ev.Event) -> None:
        self._events.append(event)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def buffered_input(self) -> int:
        """Octets received and not parsed yet (the adapter's back-pressure signal)."""
        return self._lines.buffered

    @property
    def line_pending(self) -> bool:
        """Waiting for the rest of a command line the client has started.

        What a cap on the time one command line may take to arrive is timed
        on (a client trickling a byte at a time re-arms an idle timer for
        ever): true from the first octet of a line to its LF, also while an
        over-long line is being skipped; false between lines, inside DATA and
        while a decision is pending (then the wait is ours, not the client's).
        A change of ``lines_read`` while it stays true means a new line began.
        """
        return self._decoder is None and self._awaiting is None and not self.closed and self._lines.partial

    def take_unread(self) -> bytes:
        """Bytes received but not yet parsed: after TURN they belong to the new role."""
        return self._lines.take_rest()

    def discard_unread(self) -> int:
        """Drop buffered input (at STARTTLS: nothing sent in clear may act later)."""
        return self._lines.discard()

    def close(self, response: Reply) -> None:
        """End the session from outside (timeout, shutdown): queue ``response``."""
        if not self.closed:
            self._send(response)
            self.closed = True

    @property
    def state(self) -> SessionState:
        """What this session has established so far, as a value."""
        return SessionState(self.secure, self.helo_name, self.esmtp, self.authenticated)

    @property
    def in_transaction(self) -> bool:
        """Between an accepted MAIL and the end of its DATA."""
        return self.transaction is not None

    @property
    def in_data(self) -> bool:
        return self._decoder is not None

    # -- commands -----------------------------------------------------------------

    def _command_table(self) -> dict[str, object]:
        table: dict[str, object] = {
            "HELO": self._helo,
            "EHLO": self._ehlo,
            "MAIL": self._mail,
            "SOML": self._mail,
            "SAML": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit,
            "HELP": self._help,
            "VRFY": self._verify,
            "EXPN": self._verify,
            "TURN": self._turn,
            "SEND": self._send_cmd,
        }
        for x in self.extensions:
            for verb, handler in x.commands.items():
                table[verb] = (x, handler)
        return table

    def _handle_line(self, line: bytes | LineTooLong | BareLineEnd) -> None:
        # A line that cannot be an answer ends an exchange in progress (AUTH): the error
        # reply tells the client so, and its next line must be read as a command again.
        continuation, self.continuation = self.continuation, None
        text = self._line_text(line, continuation is not None)
        if text is None:
            return None
        if continuation is not None:
            return continuation(text)
        return self._run_command(text)

    def _line_text(self, line: bytes | LineTooLong | BareLineEnd, answering: bool) -> str | None:
        """The line as text; or None, having replied why it cannot be read at all."""
        if isinstance(line, LineTooLong):
            if answering:
                return self._error(reply(500, "5.5.6", "Authentication exchange line is too long"))
            return self._error(reply(500, "5.5.2", "Line too long"))
        if isinstance(line, BareLineEnd):
            return self._error(reply(500, "5.5.2", "Bare CR or LF not allowed; end lines with CRLF"))
        if len(line) + 2 > self.limits.command_line and not answering and line[:5].upper() != b"AUTH ":
            return self._error(reply(500, "5.5.2", "Line too long"))
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(reply(500, "5.5.2", "Command is not valid UTF-8"))

    def _run_command(self, text: str) -> None:
        verb, _, arg = text.partition(" ")
        upper = verb.upper()
        if self._refused and upper != "QUIT":
            return self._error(reply(503, "5.5.1", "Bad sequence of commands: service refused, send QUIT"))
        handler = self._commands.get(upper)
        if self.only_commands is not None and verb and upper not in self.only_commands:
            return self._error(reply(502, "5.5.1", f"{printable(upper, ECHO)} not available on this port"))
        if handler is None:
            if not verb:
                return self._error(reply(500, "5.5.2", "Empty command"))
            return self._error(reply(500, "5.5.1", "Command not recognized"))
        if self.require_tls and not self.secure and upper not in BEFORE_TLS:
            return self._error(reply(530, "5.7.0", "Must issue a STARTTLS command first"))
        if upper in self.screen:
            self._screened = (handler, upper, arg)
            self._events.append(ev.Screened(upper, arg))
            return None
        return self._execute(handler, upper, arg)

    def _execute(self, handler, upper: str, arg: str) -> None:
        if isinstance(handler, tuple):
            return self._run_extension_command(*handler, upper, arg)
        handler(upper, arg)
        return None

    def proceed(self) -> None:
        """Run the command the adapter was shown (``Screened``) as if nothing had stopped it."""
        if not isinstance(self._awaiting, ev.Screened) or self._screened is None:
            raise RuntimeError("no screened command is pending")
        self._awaiting = None
        handler, upper, arg = self._screened
        self._screened = None
        self._execute(handler, upper, arg)

    def _run_extension_command(self, ext: Extension, fn, upper: str, arg: str) -> None:
        if not ext.available(self):
            return self._error(reply(503, "5.5.1", f"{upper} not available now"))
        result = fn(self, arg)
        if isinstance(result, Reply):
            return self._reply_or_error(result)
        if result is not None:
            self._events.append(result)
        return None

    def _helo(self, verb: str, arg: str) -> None:
        self._hello(verb, arg, esmtp=False)

    def _ehlo(self, verb: str, arg: str) -> None:
        self._hello(verb, arg, esmtp=True)

    def _hello(self, verb: str, arg: str, esmtp: bool) -> None:
        name = arg.strip()
        # No control characters: the name goes into the Received: header of every message.
        if not name or " " in name or not name.isprintable():
            return self._error(reply(501, "5.5.4", f"Syntax: {verb} hostname"))
        self._reset_transaction()
        self.helo_name, self.esmtp = name, esmtp
        if esmtp:
            lines = [f"{self.hostname} greets {printable(name, 255)}"]
            lines += [line for x in self.extensions if (line := x.ehlo_line(self))]
            self._send(reply(250, None, *lines))
        else:
            self._send(reply(250, None, f"{self.hostname} greets {printable(name, 255)}"))
        self._events.append(ev.Hello(verb, name))
        return None

    def _mail(self, verb: str, arg: str) -> None:
        if self.helo_name is None:
            return self._error(reply(503, "5.5.1", "Send HELO or EHLO first"))
        if self.transaction is not None:
            return self._error(reply(503, "5.5.1", "Nested MAIL command"))
        try:
            path_text, params = split_mail_argument(arg, "FROM:")
        except AddressError as e:
            return self._error(reply(501, "5.5.4", f"Syntax: MAIL FROM:<address> ({e})"))
        problem = self._check_params(params, self._mail_params)
        if problem:
            return self._reply_or_error(problem)
        try:
            path, _ = parse_path(path_text, reverse=True, utf8="SMTPUTF8" in params)
        except AddressError as e:
            return self._error(reply(501, "5.1.7", f"Bad sender address syntax: {e}"))
        self._events.append(ev.MailFrom(path, params))
        return None

    def _rcpt(self, verb: str, arg: str) -> None:
        tx = self.transaction
        if tx is None:
            return self._error(reply(503, "5.5.1", "Need MAIL before RCPT"))
        try:
            path_text, params = split_mail_argument(arg, "TO:")
        except AddressError as e:
            return self._error(reply(501, "5.5.4", f"Syntax: RCPT TO:<address> ({e})"))
        problem = self._check_params(params, self._rcpt_params)
        if problem:
            return self._reply_or_error(problem)
        try:
            path, _ = parse_path(path_text, reverse=False, utf8=tx.utf8)
        except AddressError as e:
            return self._error(reply(501, "5.1.3", f"Bad recipient address syntax: {e}"))
        if len(tx.recipients) >= self.limits.recipients:
            return self._send(reply(452, "4.5.3", "Too many recipients"))
        self._events.append(ev.RcptTo(path, params))
        return None

    def _check_params(self, params: dict[str, str | None], known: dict) -> Reply | None:
        if params and not self.esmtp:
            return reply(555, "5.5.4", "MAIL and RCPT parameters need EHLO, not HELO")
        for key, value in params.items():
            check = known.get(key)
            if check is None:
                return reply(555, "5.5.4", f"Parameter {printable(key, ECHO)} not recognized")
            problem = check(self, value)
            if problem:
                return problem
        return None

    def _data(self, verb: str, arg: str) -> None:
        if arg:
            return self._error(reply(501, "5.5.4", "DATA takes no arguments"))
        tx = self.transaction
        if tx is None:
            return self._error(reply(503, "5.5.1", "Need MAIL before DATA"))
        if not tx.recipients:
            return self._error(reply(554, "5.5.1", "No valid recipients"))
        self._out.append(_GO_AHEAD)
        self._decoder = DataDecoder(self.limits.text_line)
        self._data_size = 0
        self._too_big = False
        self._events.append(ev.DataStarted())
        rest = self._lines.take_rest()
        if rest:
            self._feed_body(rest)
        return None

    def _feed_body(self, data: bytes) -> None:
        decoder = self._decoder
        assert decoder is not None
        body = decoder.feed(data)
        if body and not self._too_big:
            room = self.limits.message_size - self._data_size
            if len(body) > room:
                # Passed on up to the limit exactly, not up to wherever this chunk ended, so
                # that the events do not depend on the chunking either.
                self._too_big = True
                body = body[:room]
            if body:
                self._data_size += len(body)
                self._events.append(ev.DataChunk(body))
        if decoder.done:
            self._decoder = None
            self._lines.feed(decoder.rest)
            if self._too_big:
                self._fail_data(reply(552, "5.3.4", "Message size exceeds fixed maximum message size"))
            elif decoder.line_too_long:
                limit = self.limits.text_line
                self._fail_data(
                    reply(500, "5.5.2", f"Line too long (text lines are limited to {limit} octets)")
                )
            elif decoder.bad_line_end:
                self._fail_data(reply(550, "5.6.0", BARE_LINE_END))
            elif decoder.nul:
                self._fail_data(reply(550, "5.6.0", NUL))
            else:
                self._events.append(ev.DataEnd(self._data_size))

    def _fail_data(self, response: Reply) -> None:
        self.transaction = None
        self._events.append(ev.DataFailed(response.text))
        self._send(response)

    def _rset(self, verb: str, arg: str) -> None:
        if arg.strip():
            return self._error(reply(501, "5.5.4", "RSET takes no arguments"))
        self._reset_transaction()
        self._out.append(_OK)
        return None

    def _reset_transaction(self) -> None:
        if self.transaction is not None:
            self.transaction = None
            self._events.append(ev.Reset())

    def _noop(self, verb: str, arg: str) -> None:
        self._out.append(_OK)

    def _quit(self, verb: str, arg: str) -> None:
        if arg.strip():
            return self._error(reply(501, "5.5.4", "QUIT takes no arguments"))
        self._send(reply(221, "2.0.0", f"{self.hostname} closing connection"))
        self.closed = True
        self._events.append(ev.Quit())
        return None

    def _help(self, verb: str, arg: str) -> None:
        self._send(reply(214, "2.0.0", *HELP_TEXT))

    def _verify(self, verb: str, arg: str) -> None:
        if not arg.strip():
            return self._error(reply(501, "5.5.4", f"Syntax: {verb} string"))
        self._events.append(ev.Verify(verb, arg.strip()))
        return None

    def _turn(self, verb: str, arg: str) -> None:
        if arg.strip():
            return self._error(reply(501, "5.5.4", "TURN takes no arguments"))
        if self.helo_name is None:
            return self._error(reply(503, "5.5.1", "Send HELO or EHLO first"))
        if self.transaction is not None:
            return self._error(reply(503, "5.5.1", "TURN is not allowed inside a mail transaction"))
        self._events.append(ev.TurnRequested())
        return None

    def _send_cmd(self, verb: str, arg: str) -> None:
        self._send(reply(502, "5.5.1", f"{verb} not implemented; use MAIL"))

    # -- output -----------------------------------------------------------------

    def _send(self, response: Reply) -> None:
        self._out.append(response.to_bytes())

    def _reply_or_error(self, response: Reply) -> None:
        if response.code in (500, 501, 502, 503, 504):
            self._error(response)
        else:
            self._send(response)

    def _error(self, response: Reply) -> None:
        """A reply to bad input; too many of them end the session (421)."""
        self._bad_commands += 1
        self._send(response)
        if self._bad_commands >= self.limits.bad_commands:
            self.close(reply(421, "4.7.0", f"{self.hostname} Too many errors, closing connection"))
            self._events.append(ev.Close("too many bad commands"))
