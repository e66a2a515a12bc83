"""RFC 5321 §4.5.3.2 timeouts, driven by an injected ``task.Clock`` over real sockets."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task

from smtppeer.engine import Envelope, Limits, reply
from smtppeer.peer.hooks import SenderJob
from smtppeer.peer.protocol import SMTPPeer, SMTPPeerFactory

from .conftest import wait_until_async
from .peerutil import Listener, MemoryHooks, connect_line_client, connect_sender, message


@defer.inlineCallbacks
def _listen_with_clock(limits: Limits | None = None, hooks: MemoryHooks | None = None):
    clock = task.Clock()
    hooks = hooks or MemoryHooks()
    listener = Listener("b.test", hooks, clock=clock, limits=limits)
    port = yield listener.start()
    client = yield connect_line_client(port)
    yield client.wait_lines(1)
    return clock, hooks, listener, client


@pytest_twisted.inlineCallbacks
def test_idle_client_gets_421_after_five_minutes():
    clock, hooks, listener, client = yield _listen_with_clock()
    try:
        clock.advance(299)
        assert not client.closed.called
        clock.advance(2)
        lines = yield client.closed
        assert lines[-1].startswith(b"421 4.4.2 ")
        summary = yield listener.peers[0].done
        assert summary.error == "timeout"
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_each_command_restarts_the_timer():
    clock, hooks, listener, client = yield _listen_with_clock()
    try:
        for n in range(2, 6):
            clock.advance(250)
            client.send(b"NOOP\r\n")
            yield client.wait_lines(n)
        assert not client.closed.called
        client.send(b"QUIT\r\n")
        lines = yield client.closed
        assert lines[-1].startswith(b"221 ")
        yield listener.peers[0].done
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_silence_inside_data_times_out_after_ten_minutes_and_stores_nothing():
    clock, hooks, listener, client = yield _listen_with_clock()
    try:
        client.send(b"HELO a\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<u@b.test>\r\nDATA\r\nSubject: x\r\n")
        yield client.wait_lines(5)
        assert client.lines[-1].startswith(b"354 ")
        clock.advance(599)
        assert not client.closed.called
        clock.advance(2)
        lines = yield client.closed
        assert lines[-1].startswith(b"421 4.4.2 ")
        yield listener.peers[0].done
        assert hooks.stored == []
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_limits_set_the_timeouts():
    clock, hooks, listener, client = yield _listen_with_clock(Limits(command_timeout=5))
    try:
        clock.advance(5.5)
        lines = yield client.closed
        assert lines[-1].startswith(b"421 ")
        yield listener.peers[0].done
    finally:
        yield listener.stop()


class _Silent(protocol.Protocol):
    """A server that accepts the connection and never says a word."""

    closed: defer.Deferred = None

    def connectionMade(self) -> None:
        _Silent.closed = defer.Deferred()

    def connectionLost(self, reason=None) -> None:
        _Silent.closed.callback(None)


@pytest_twisted.inlineCallbacks
def test_sender_gives_up_on_a_silent_server_and_defers_its_messages():
    clock = task.Clock()
    ep = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = yield ep.listen(protocol.Factory.forProtocol(_Silent))
    try:
        job = SenderJob([message(1), message(2)])
        peer = yield connect_sender("a.test", MemoryHooks(), job, port.getHost().port, clock=clock)
        clock.advance(299)
        assert not peer.done.called
        clock.advance(2)
        summary = yield peer.done
        assert summary.error
        assert [r.results["u@b.test"].code for r in job.results] == [451, 451]
        yield _Silent.closed
    finally:
        yield port.stopListening()


class SlowHooks(MemoryHooks):
    """RCPT is decided later, when the test fires ``pending``."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: defer.Deferred | None = None

    def rcpt_to(self, session, path, params):
        self.pending = defer.Deferred()
        return self.pending


@pytest_twisted.inlineCallbacks
def test_a_slow_decision_is_not_the_clients_timeout_and_the_timer_runs_again_after():
    clock, hooks, listener, client = yield _listen_with_clock(hooks=SlowHooks())
    try:
        client.send(b"HELO a\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<u@b.test>\r\n")
        yield client.wait_lines(3)
        yield defer.ensureDeferred(
            wait_until_async(lambda: hooks.pending is not None, what="the RCPT decision to be pending")
        )
        clock.advance(700)  # a decision pending for ten minutes and more
        assert not client.closed.called, "timed out while the client waited for us"
        hooks.pending.callback(reply(250, "2.1.5", "OK"))
        lines = yield client.wait_lines(4)
        assert lines[3].startswith(b"250 2.1.5")
        clock.advance(299)  # now it is the client's turn: five minutes from the reply
        assert not client.closed.called
        clock.advance(2)
        lines = yield client.closed
        assert lines[-1].startswith(b"421 4.4.2 ")
        yield listener.peers[0].done
    finally:
        yield listener.stop()


class _StopsReadingAfter354(protocol.Protocol):
    """A server that says 354 and then takes no more data: our writes back up."""

    ended: defer.Deferred

    def connectionMade(self) -> None:
        _StopsReadingAfter354.instance = self
        self.buffer = b""
        self.transport.write(b"220 stall.test ESMTP\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line.upper().startswith(b"DATA"):
                self.transport.write(b"354 go ahead\r\n")
                self.transport.pauseProducing()  # and read nothing more
                return
            self.transport.write(b"250 2.0.0 OK\r\n")

    def connectionLost(self, reason=None) -> None:
        _StopsReadingAfter354.ended.callback(None)


class _SmallSendBuffer(SMTPPeer):
    def connectionMade(self) -> None:
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().connectionMade()


@pytest_twisted.inlineCallbacks
def test_a_data_block_the_server_does_not_take_times_out_after_three_minutes():
    """RFC 5321 §4.5.3.2.5: once our writes back up, 3 minutes (not the 5 of a
    reply) end the session, and the message stays queued (451)."""
    clock = task.Clock()
    _StopsReadingAfter354.ended = defer.Deferred()
    ep = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = yield ep.listen(protocol.Factory.forProtocol(_StopsReadingAfter354))
    try:
        body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 16_000  # 16 MB
        job = SenderJob([Envelope("a@a.test", ["u@b.test"], body)])
        factory = SMTPPeerFactory("a.test", MemoryHooks(), job=job, clock=clock)
        factory.protocol = _SmallSendBuffer
        peer = yield endpoints.clientFromString(
            reactor, f"tcp:host=127.0.0.1:port={port.getHost().port}"
        ).connect(factory)
        yield defer.ensureDeferred(  # until the transport tells us to stop writing
            wait_until_async(
                lambda: peer._write_paused,
                what="our writes to back up (else this test would not test the timeout)",
            )
        )
        clock.advance(179)
        assert not peer.done.called
        clock.advance(1)
        summary = yield peer.done
        assert summary.error == "timeout"
        assert [r.results["u@b.test"].code for r in job.results] == [451]
        _StopsReadingAfter354.instance.transport.resumeProducing()  # to see that we have gone
        yield _StopsReadingAfter354.ended
    finally:
        yield port.stopListening()
