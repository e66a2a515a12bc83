"""Two real SMTPPeer instances on loopback: sending, TURN accepted and refused."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from smtppeer.peer.hooks import SenderJob

from .peerutil import Listener, MemoryHooks, connect_line_client, connect_sender, message


@defer.inlineCallbacks
def _exchange(a_hooks, b_hooks, a_job):
    """A connects to B with ``a_job``; wait until both ends have closed."""
    listener = Listener("b.test", b_hooks)
    port = yield listener.start()
    try:
        a_peer = yield connect_sender("a.test", a_hooks, a_job, port)
        a_summary = yield a_peer.done
        b_summary = yield listener.peers[0].done
    finally:
        yield listener.stop()
    return a_summary, b_summary


@pytest_twisted.inlineCallbacks
def test_turn_accepted_swaps_roles_on_the_same_connection():
    a_hooks = MemoryHooks()
    b_job = SenderJob([message(10, "b@b.test", "a@a.test"), message(11, "b@b.test", "a@a.test")])
    b_hooks = MemoryHooks(turn_job=b_job)
    a_job = SenderJob([message(1), message(2), message(3)], finish="TURN")

    a_summary, b_summary = yield _exchange(a_hooks, b_hooks, a_job)

    # A -> B before the turn
    assert [s.body.split(b"Subject: ")[1][:9] for s in b_hooks.stored] == [
        b"message 1",
        b"message 2",
        b"message 3",
    ]
    assert all(r.results["u@b.test"].code == 250 for r in a_job.results)
    assert b".a line with a leading dot\r\n" in b_hooks.stored[0].body  # dot-stuffing undone
    # B -> A after the turn, on the same connection
    assert a_job.turned and a_job.turn_reply.code == 250
    assert b_hooks.turn_asked == 1
    assert [s.recipients for s in a_hooks.stored] == [["a@a.test"], ["a@a.test"]]
    assert [r.results["a@a.test"].code for r in b_job.results] == [250, 250]
    assert a_summary.turned is False and b_summary.turned is True
    assert a_summary.received == 2 and b_summary.received == 3
    assert a_summary.clean and b_summary.clean


@pytest_twisted.inlineCallbacks
def test_turn_refused_then_quit():
    a_hooks, b_hooks = MemoryHooks(), MemoryHooks(turn_job=None)
    a_job = SenderJob([message(1)], finish="TURN")

    a_summary, b_summary = yield _exchange(a_hooks, b_hooks, a_job)

    assert len(b_hooks.stored) == 1
    assert not a_job.turned
    assert a_job.turn_reply.code == 502 and a_job.turn_reply.enhanced == "5.5.1"
    assert a_summary.turn_refused.code == 502
    assert a_summary.clean and b_summary.clean  # A said QUIT after the refusal
    assert a_hooks.stored == []


@pytest_twisted.inlineCallbacks
def test_turn_with_nothing_held_is_a_greeting_then_quit():
    a_hooks, b_hooks = MemoryHooks(), MemoryHooks(turn_job=SenderJob([]))
    a_job = SenderJob([], finish="TURN")
    a_summary, b_summary = yield _exchange(a_hooks, b_hooks, a_job)
    assert a_job.turned and b_summary.turned
    assert a_hooks.stored == [] and a_summary.clean


def _raw_session(port: int, script: list[tuple[bytes, int]]) -> list[bytes]:
    """Blocking client: send each chunk, then read until ``n`` more reply lines arrived."""
    got: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        got.append(f.readline())
        for data, n in script:
            if data:
                s.sendall(data)
            for _ in range(n):
                got.append(f.readline())
    return got


@pytest_twisted.inlineCallbacks
def test_turn_pipelined_behind_the_last_message_and_bytes_past_it_go_to_the_new_role():
    """One packet carries a whole message, TURN, and the client's own 220:
    B must answer 250, 250, 250, 354, 250, 250 (turn), then treat the 220 that
    was already read as the greeting of its new peer and say EHLO at once."""
    b_hooks = MemoryHooks(turn_job=SenderJob([message(5, "b@b.test", "a@a.test")]))
    listener = Listener("b.test", b_hooks)
    port = yield listener.start()
    packet = (
        b"EHLO a.test\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<u@b.test>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nhello\r\n.\r\nTURN\r\n220 a.test ready\r\n"
    )
    try:
        lines = yield threads.deferToThread(_raw_session, port, [(packet, 7 + 6)])
        yield listener.peers[0].done
    finally:
        yield listener.stop()
    replies = [line for line in lines if line[:3].isdigit()]
    codes = [line[:4] for line in replies]
    assert codes[0] == b"220 "
    assert b"250 " in codes[1:9]
    assert [c for c in codes if c[3:4] == b" "][1:] == [b"250 ", b"250 ", b"250 ", b"354 ", b"250 ", b"250 "]
    assert lines[-1] == b"EHLO b.test\r\n"
    assert b_hooks.stored[0].body == b"Subject: x\r\n\r\nhello\r\n"


@pytest_twisted.inlineCallbacks
def test_turn_inside_a_transaction_is_503_and_the_session_goes_on():
    b_hooks = MemoryHooks(turn_job=SenderJob([]))
    listener = Listener("b.test", b_hooks)
    port = yield listener.start()
    script = [
        (b"HELO a.test\r\n", 1),
        (b"MAIL FROM:<a@a.test>\r\n", 1),
        (b"TURN\r\n", 1),
        (b"RSET\r\n", 1),
        (b"QUIT\r\n", 1),
    ]
    try:
        lines = yield threads.deferToThread(_raw_session, port, script)
        yield listener.peers[0].done
    finally:
        yield listener.stop()
    assert lines[3].startswith(b"503 5.5.1 ")
    assert lines[4].startswith(b"250 2.0.0")
    assert lines[5].startswith(b"221 2.0.0")
    assert b_hooks.turn_asked == 0


class SlowTurn(MemoryHooks):
    """Decides TURN later, when the test fires ``decision``."""

    def __init__(self) -> None:
        super().__init__()
        self.decision: defer.Deferred = defer.Deferred()

    def turn(self, session, verb="TURN", domains=None):
        self.turn_asked += 1
        return self.decision


@pytest_twisted.inlineCallbacks
def test_a_job_whose_connection_went_before_the_turn_is_given_back():
    """The client hangs up while TURN is being decided: the job the decision
    brings is never sent, so each of its messages is reported deferred (the
    hold queue gets them back) and its ``on_end`` runs, exactly once.

    A FIN alone is only the end of the client's side (it may still read, issue
    14), so the session waits for the decision it owes an answer, and gives
    the job back then: a client that has stopped sending cannot turn."""
    hooks = SlowTurn()
    listener = Listener("b.test", hooks)
    port = yield listener.start()
    ended = []
    job = SenderJob([message(1, "b@b.test", "a@a.test")], on_end=lambda: ended.append(True))
    try:
        client = yield connect_line_client(port)
        client.send(b"EHLO a.test\r\nTURN\r\n")
        yield client.wait_lines(2)  # the greeting and the EHLO reply; TURN is pending
        client.transport.loseConnection()
        yield client.closed
        server_side = listener.peers[0]
        for _ in range(500):  # bounded: until the server has read the FIN
            if server_side.input_ended:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert server_side.input_ended and hooks.turn_asked == 1
        hooks.decision.callback(job)
        summary = yield listener.peers[0].done
    finally:
        yield listener.stop()
    assert not summary.turned
    assert [{rcpt: r.code for rcpt, r in result.results.items()} for result in job.results] == [
        {"a@a.test": 451}
    ]
    assert ended == [True]
    job.end()
    assert ended == [True]
