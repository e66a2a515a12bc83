"""A client that shuts down its sending side still gets every reply (issue 14, item 1).

Exim ends a session with the final dot and ``QUIT`` in one write, then
``shutdown(SHUT_WR)``, and only then reads the ``250`` for the dot.  A half
closed TCP connection still carries replies (RFC 5321 §3.8, §4.1.1.10, §6.1);
a server that closed at the client's FIN would have committed the message
without saying so, and the client would send it again.  Under TLS the same
end comes as a ``close_notify`` alert, with or without a FIN after it.

These are raw sockets (and an ``ssl.SSLObject`` over memory buffers, so the
test decides when the ``close_notify`` goes) against a real ``twistd
smtppeer`` with a certificate; every message is counted in its Maildir.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from .conftest import TwistdProcess, wait_until
from .daemons import delivered as maildir_messages
from .daemons import peer_with_tls
from .trustlab import insecure_context

HOSTNAME = "peer.test"
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with peer_with_tls(tmp_path_factory.mktemp("half-close"), HOSTNAME) as proc:
        yield proc


def delivered(server: TwistdProcess, user: str) -> list[bytes]:
    return maildir_messages(server, HOSTNAME, user)


class Client:
    """An SMTP client on a blocking socket that can half-close, in clear or over TLS.

    Over TLS it drives an ``ssl.SSLObject`` through memory buffers itself, so it
    can send its ``close_notify`` (and a FIN, or not) and still read what the
    server answers after it.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.tls: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.buffer = b""
        self.eof = False  # the server closed its side (FIN, and over TLS its close_notify too)
        self.close_notify = False  # over TLS: the server's close_notify arrived
        assert self.reply().startswith(b"220 ")

    # -- bytes in and out ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            return
        self.tls.write(data)
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        """Read what the server sends next; ``eof`` once its side is closed (the FIN)."""
        if self.eof:
            return
        raw = self.sock.recv(65536)
        if not raw:
            self.eof = True
        if self.tls is None:
            self.buffer += raw
            return
        if raw:
            self.incoming.write(raw)
        else:
            self.incoming.write_eof()
        for _ in range(10_000):
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:  # its close_notify, after ours
                self.close_notify = True
                return
            except ssl.SSLEOFError:  # its FIN without a close_notify
                return
            if not data:  # its close_notify, before ours
                self.close_notify = True
                return
            self.buffer += data

    def reply(self) -> bytes:
        """One reply line (multi-line replies come line by line)."""
        for _ in range(1000):
            line, sep, rest = self.buffer.partition(b"\r\n")
            if sep:
                self.buffer = rest
                return line
            if self.eof:
                raise ConnectionError(f"closed; unread {self.buffer!r}")
            self._fill()
        raise AssertionError("no reply")

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        while (response := self.reply())[3:4] == b"-":
            pass
        return response

    def rest(self) -> list[bytes]:
        """Every line the server still sends, until it has closed the connection."""
        deadline = time.monotonic() + TIMEOUT
        while not self.eof and time.monotonic() < deadline:
            self._fill()
        assert self.eof, "the server did not close the connection"
        lines = self.buffer.split(b"\r\n")
        assert lines[-1] == b"", f"a partial line at the end: {self.buffer!r}"
        return lines[:-1]

    # -- the session -------------------------------------------------------------------

    def starttls(self) -> None:
        assert self.command(b"EHLO client.test").startswith(b"250 ")
        assert self.command(b"STARTTLS").startswith(b"220 ")
        assert self.buffer == b""
        self.tls = insecure_context().wrap_bio(self.incoming, self.outgoing, server_hostname=HOSTNAME)
        for _ in range(100):
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                raw = self.sock.recv(65536)
                if not raw:
                    raise ConnectionError("closed during the handshake") from None
                self.incoming.write(raw)
        self._flush()

    def transaction(self, user: str, subject: str) -> None:
        """EHLO, MAIL, RCPT and DATA, each answered; the body is the caller's."""
        assert self.command(b"EHLO client.test").startswith(b"250 ")
        assert self.command(b"MAIL FROM:<a@client.test>").startswith(b"250 ")
        assert self.command(f"RCPT TO:<{user}@{HOSTNAME}>".encode()).startswith(b"250 ")
        assert self.command(b"DATA").startswith(b"354 ")
        self.send(f"Subject: {subject}\r\n\r\nsent by a client that half-closes\r\n".encode())

    def send_close_notify(self) -> None:
        assert self.tls is not None
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:  # sent ours; the server's is still to come
            pass
        self._flush()

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(server):
    opened: list[Client] = []

    def connect() -> Client:
        opened.append(Client(server.port))
        return opened[-1]

    yield connect
    for c in opened:
        c.close()


# -- the dot, QUIT, and the end of the client's side --------------------------------------


@pytest.mark.parametrize(
    "how",
    ["fin", "tls close_notify and fin", "tls close_notify", "tls fin"],
)
def test_dot_quit_and_half_close_get_250_and_221(server, client, how):
    """The issue's case: ``.`` and ``QUIT`` in one write, then the client's side ends."""
    user = "half-" + how.replace(" ", "-")
    c = client()
    if how.startswith("tls"):
        c.starttls()
    c.transaction(user, how)
    c.send(b".\r\nQUIT\r\n")
    if "close_notify" in how:
        c.send_close_notify()
    if "fin" in how:
        c.shutdown_write()
    lines = c.rest()
    assert [line[:3] for line in lines] == [b"250", b"221"], lines
    assert lines[0].startswith(b"250 2.0.0 Ok: queued as ")
    if how.startswith("tls"):
        assert c.close_notify, "the server ended TLS with its own close_notify"
    assert len(wait_until(lambda: delivered(server, user), what="the delivery")) == 1


def test_pipelined_transaction_then_half_close_gets_every_reply(server, client):
    """Everything pipelined, no QUIT, then FIN: every command is still answered
    (the message is on disk, and acknowledged), then the server closes."""
    user = "half-pipelined"
    c = client()
    assert c.command(b"EHLO client.test").startswith(b"250 ")
    c.send(
        b"MAIL FROM:<a@client.test>\r\n"
        + f"RCPT TO:<{user}@{HOSTNAME}>\r\n".encode()
        + b"DATA\r\nSubject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\n"
    )
    c.shutdown_write()
    lines = c.rest()
    assert [line[:3] for line in lines] == [b"250", b"250", b"354", b"250", b"250"], lines
    assert len(wait_until(lambda: delivered(server, user), what="the delivery")) == 1


def test_input_after_quit_is_still_ignored(server, client):
    c = client()
    c.send(b"QUIT\r\nNOOP\r\nHELP\r\n")
    c.shutdown_write()
    lines = c.rest()
    assert [line[:3] for line in lines] == [b"221"], lines


def test_half_close_inside_data_delivers_nothing(server, client):
    """The client's side ended before the final dot: no 250, nothing stored."""
    user = "half-inside-data"
    c = client()
    c.transaction(user, "never finished")
    c.shutdown_write()
    assert c.rest() == []  # the server closed without a 250: it committed nothing
    assert delivered(server, user) == []


def test_half_close_with_a_command_cut_short(server, client):
    """A last line without its CRLF is not a command: nothing is answered for it."""
    c = client()
    assert c.command(b"EHLO client.test").startswith(b"250 ")
    c.send(b"NOOP\r\nQUI")
    c.shutdown_write()
    lines = c.rest()
    assert [line[:3] for line in lines] == [b"250"], lines
