"""A failing hook or an internal error costs one session, cleanly; never the service."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from smtppeer.engine import reply

from .peerutil import Listener, MemoryHooks, connect_line_client


class BrokenHooks(MemoryHooks):
    def rcpt_to(self, session, path, params):
        if path.mailbox.local == "boom":
            raise RuntimeError("policy lookup failed")
        if path.mailbox.local == "later":
            return defer.fail(RuntimeError("asynchronous lookup failed"))
        return reply(250, "2.1.5", "OK")

    def reset(self, session):
        raise RuntimeError("bug in reset")


@pytest_twisted.inlineCallbacks
def test_hook_exceptions_become_451_and_the_session_continues():
    hooks = BrokenHooks()
    listener = Listener("b.test", hooks)
    port = yield listener.start()
    try:
        client = yield connect_line_client(port)
        client.send(
            b"EHLO a\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<boom@b.test>\r\n"
            b"RCPT TO:<later@b.test>\r\nRCPT TO:<ok@b.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n"
        )
        lines = yield client.closed
        finals = [line[:9] for line in lines if line[3:4] == b" "]
        assert finals == [
            b"220 b.tes",
            b"250 HELP",
            b"250 2.1.0",
            b"451 4.3.0",
            b"451 4.3.0",
            b"250 2.1.5",
            b"354 End d",
            b"250 2.0.0",
            b"221 2.0.0",
        ]
        assert hooks.stored[0].recipients == ["ok@b.test"]
        yield listener.peers[0].done
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_internal_error_gives_421_and_the_listener_keeps_serving():
    hooks = BrokenHooks()
    listener = Listener("b.test", hooks)
    port = yield listener.start()
    try:
        client = yield connect_line_client(port)
        client.send(b"HELO a\r\nMAIL FROM:<a@a.test>\r\nRSET\r\n")
        lines = yield client.closed
        assert lines[-1].startswith(b"421 4.3.0 ")
        summary = yield listener.peers[0].done
        assert summary.error
        second = yield connect_line_client(port)
        second.send(b"QUIT\r\n")
        lines = yield second.closed
        assert lines[-1].startswith(b"221 ")
        yield listener.peers[1].done
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_connections_over_the_limit_get_421_and_a_freed_slot_is_reused():
    hooks = MemoryHooks()
    listener = Listener("b.test", hooks, max_connections=2)
    port = yield listener.start()
    try:
        first = yield connect_line_client(port)
        second = yield connect_line_client(port)
        yield first.wait_lines(1)
        yield second.wait_lines(1)
        third = yield connect_line_client(port)
        lines = yield third.closed
        assert lines == [b"421 4.7.0 b.test Too many connections, try again later"]
        first.send(b"QUIT\r\n")
        yield first.closed
        yield listener.peers[0].done
        fourth = yield connect_line_client(port)
        yield fourth.wait_lines(1)
        assert fourth.lines[0].startswith(b"220 ")
        for client in (second, fourth):
            client.send(b"QUIT\r\n")
            yield client.closed
        for peer in listener.peers:
            yield peer.done
        assert listener.factory.active == 0
    finally:
        yield listener.stop()
