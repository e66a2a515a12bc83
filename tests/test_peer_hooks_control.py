"""What hooks can do to a connection besides answering: delay the greeting, see
a command before it runs, and cut the connection with no reply (the lab's
failures are made of these)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from smtppeer.engine import reply
from smtppeer.peer.hooks import DropConnection

from .peerutil import Listener, MemoryHooks, connect_line_client


class Controlled(MemoryHooks):
    def __init__(self) -> None:
        super().__init__()
        self.greeting_decision: defer.Deferred | None = None
        self.screened: list[tuple[str, str]] = []
        self.drop_rcpt = False

    def greeting(self, session):
        super().greeting(session)
        return self.greeting_decision

    def screen(self, session, verb, argument):
        self.screened.append((verb, argument))
        return reply(421, "4.3.2", "Not now") if verb == "VRFY" else None

    def rcpt_to(self, session, path, params):
        if self.drop_rcpt:
            raise DropConnection()
        return super().rcpt_to(session, path, params)


@pytest_twisted.inlineCallbacks
def test_nothing_is_read_or_answered_until_a_delayed_greeting_is_decided():
    hooks = Controlled()
    hooks.greeting_decision = defer.Deferred()
    listener = Listener("b.test", hooks)
    port = yield listener.start()
    try:
        client = yield connect_line_client(port)
        client.send(b"EHLO a.test\r\nQUIT\r\n")
        for _ in range(20):  # the reactor turns; nothing may come back yet
            yield defer.succeed(None)
        assert client.lines == []
        hooks.greeting_decision.callback(None)
        lines = yield client.closed
        assert lines[0].startswith(b"220 ") and lines[1].startswith(b"250-")
        assert lines[-1].startswith(b"221 ")
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_a_screened_command_may_be_refused_and_others_run():
    hooks = Controlled()
    listener = Listener("b.test", hooks, screen=frozenset({"EHLO", "VRFY"}))
    port = yield listener.start()
    try:
        client = yield connect_line_client(port)
        client.send(b"EHLO a.test\r\nVRFY someone\r\nNOOP\r\nQUIT\r\n")
        lines = yield client.closed
    finally:
        yield listener.stop()
    assert hooks.screened == [("EHLO", "a.test"), ("VRFY", "someone")]  # NOOP is not screened
    assert [line[:4] for line in lines if line[3:4] == b" "] == [b"220 ", b"250 ", b"421 ", b"250 ", b"221 "]


@pytest_twisted.inlineCallbacks
def test_drop_connection_cuts_the_session_with_no_reply():
    hooks = Controlled()
    hooks.drop_rcpt = True
    listener = Listener("b.test", hooks)
    port = yield listener.start()
    try:
        client = yield connect_line_client(port)
        client.send(b"HELO a.test\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<u@b.test>\r\n")
        lines = yield client.closed
        summary = yield listener.peers[0].done
    finally:
        yield listener.stop()
    assert [line[:3] for line in lines] == [b"220", b"250", b"250"]  # nothing for the RCPT
    assert summary.error == "dropped"
