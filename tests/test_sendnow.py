"""Replies sent at once (``sendnow.py``): taken where safe, never reordered or lost."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable

import pytest_twisted
from twisted.internet import threads

from smtppeer.peer import protocol as peer
from smtppeer.peer.protocol import SMTPPeer
from smtppeer.peer.sendnow import send_now

from .conftest import wait_until
from .peerutil import Listener, MemoryHooks, connect_line_client

COMMANDS = {b"NOOP": b"250", b"VRFY someone": b"252", b"HELP": b"214"}


@pytest_twisted.inlineCallbacks
def test_a_plain_tcp_transport_takes_the_shortcut():
    """Guards the attributes ``send_now`` reads: if Twisted renamed them, the shortcut
    would silently never be taken again."""
    hooks = MemoryHooks()
    listener = Listener("b.test", hooks)
    port = yield listener.start()
    try:
        client = yield connect_line_client(port)
        yield client.wait_lines(1)  # the greeting
        transport = listener.peers[0].transport
        assert send_now(transport, b"250 2.0.0 sent at once\r\n") == b""
        lines = yield client.wait_lines(2)
        assert lines[1] == b"250 2.0.0 sent at once"
        client.transport.loseConnection()
        yield client.closed
        yield listener.peers[0].done
    finally:
        yield listener.stop()


def test_anything_else_goes_the_usual_way():
    data = b"250 2.0.0 ok\r\n"
    assert send_now(object(), data) is data  # no socket at all

    class Closing:
        socket = socket.socket()  # never used: the checks stop first
        TLS, connected, disconnecting, _writeDisconnected = False, True, True, False
        dataBuffer, _tempDataBuffer = b"", []

    try:
        assert send_now(Closing(), data) is data
        buffered = Closing()
        buffered.disconnecting, buffered._tempDataBuffer = False, [b"earlier"]
        assert send_now(buffered, data) is data  # behind what is buffered already
        tls = Closing()
        tls.disconnecting, tls.TLS = False, True
        assert send_now(tls, data) is data
    finally:
        Closing.socket.close()


class SmallSendBuffer(SMTPPeer):
    """Gives each session a 4 KiB kernel send buffer, so that replies overflow it."""

    def connectionMade(self):
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().connectionMade()


def _pipeline(port: int, commands: list[bytes], filled: Callable[[], object]) -> list[bytes]:
    """Send every command at once, reading nothing until the server's socket has
    filled (``filled()``), so that its replies queue up behind a partial send."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        s.settimeout(60)
        s.connect(("127.0.0.1", port))
        payload = b"".join(c + b"\r\n" for c in commands) + b"QUIT\r\n"
        writer = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        writer.start()
        wait_until(filled, timeout=60, what="the server's socket to fill (a reply held back)")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        writer.join(timeout=30)
    return [line[:3] for line in data.split(b"\r\n") if line[3:4] == b" "]


@pytest_twisted.inlineCallbacks
def test_replies_keep_their_order_when_the_socket_fills(monkeypatch):
    held_back = []

    def watched(transport, data):  # the real send_now, counting when it could not send all
        rest = send_now(transport, data)
        held_back.append(len(rest))
        return rest

    monkeypatch.setattr(peer, "send_now", watched)
    rng = random.Random(7)
    commands = [rng.choice(list(COMMANDS)) for _ in range(5000)]
    listener = Listener("b.test", MemoryHooks(), protocol=SmallSendBuffer)
    port = yield listener.start()
    try:
        codes = yield threads.deferToThread(_pipeline, port, commands, lambda: any(held_back))
    finally:
        yield listener.stop()
    assert any(held_back), "the socket never filled: this test did not test the fallback"
    assert 0 in held_back
    assert codes[0] == b"220"
    assert codes[1:-1] == [COMMANDS[c] for c in commands]
    assert codes[-1] == b"221"
