"""One client cannot lock out everyone (issue 13, item 2), over real loopback sockets.

200 sockets trickling a byte a second from one address held every slot of a
listener, and every byte re-armed the 5-minute idle timer.  Now a command line
must be complete within ``command_line_time`` of its first octet, and one
client address holds at most ``max_connections_per_client`` sessions of a
listener.  The listeners run in the test's reactor with an injected
``task.Clock`` for their timers; the clients are real TCP connections, the
attacker's from 127.0.0.1 and the legitimate client's from 127.0.0.2.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor, task

from smtppeer.engine import Limits

from .peerutil import LineClient, Listener, MemoryHooks

ATTACKERS = 30


@defer.inlineCallbacks
def connect_from(port: int, source: str):
    """A raw client whose socket is bound to ``source`` (another loopback address)."""
    ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    client = yield endpoints.connectProtocol(ep, LineClient())
    return client


@defer.inlineCallbacks
def until(predicate, what: str):
    """Let the real reactor run (bounded) until ``predicate()`` holds."""
    for _ in range(500):
        if predicate():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"never happened: {what}")


@defer.inlineCallbacks
def trickle(clock: task.Clock, listener: Listener, clients: list[LineClient], seconds: int, sent: int = 0):
    """Each client sends one more octet of ``EHLO ...`` per second of ``clock``; the
    clock moves on only once the server has read it."""
    line = b"EHLO " + b"x" * 400
    for second in range(seconds):
        for client in clients:
            client.send(line[sent + second : sent + second + 1])
        peers = [p for p in listener.peers if p.refusal is None and p.receiver is not None]
        yield until(
            lambda peers=peers, read=sent + second: all(
                p.receiver.buffered_input > read for p in peers if not p._lost
            ),
            "the server to read the octets",
        )
        clock.advance(1)


@defer.inlineCallbacks
def attack(per_client: int):
    """A listener (``max_connections`` = ATTACKERS) and ATTACKERS clients from 127.0.0.1,
    each past its greeting: (clock, hooks, listener, port, clients)."""
    clock = task.Clock()
    hooks = MemoryHooks()
    listener = Listener(
        "b.test", hooks, clock=clock, max_connections=ATTACKERS, max_connections_per_client=per_client
    )
    port = yield listener.start()
    attackers = []
    for _ in range(ATTACKERS):
        client = yield connect_from(port, "127.0.0.1")
        yield client.wait_lines(1)
        attackers.append(client)
    return clock, hooks, listener, port, attackers


@defer.inlineCallbacks
def served(port: int, hooks: MemoryHooks) -> defer.Deferred:
    """A legitimate client from 127.0.0.2 sends a message; returns its reply lines."""
    client = yield connect_from(port, "127.0.0.2")
    yield client.wait_lines(1)
    client.send(
        b"EHLO good.test\r\nMAIL FROM:<a@good.test>\r\nRCPT TO:<u@b.test>\r\nDATA\r\n"
        b"Subject: served\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    )
    lines = yield client.closed
    return lines


@pytest_twisted.inlineCallbacks
def test_a_slow_loris_from_one_address_leaves_room_for_a_legitimate_client(logged):
    clock, hooks, listener, port, attackers = yield attack(per_client=5)
    try:
        greeted = [c for c in attackers if c.lines[0].startswith(b"220 ")]
        refused = [c for c in attackers if c not in greeted]
        assert len(greeted) == 5
        for client in refused:
            lines = yield client.closed
            assert lines == [b"421 4.7.0 b.test Too many connections from your address, try again later"]
        yield trickle(clock, listener, greeted, 30)  # half a minute of one octet a second
        lines = yield served(port, hooks)
        assert lines[0].startswith(b"220 ") and lines[-2].startswith(b"250 2.0.0 Ok: stored #1")
        assert lines[-1].startswith(b"221 ")
        assert [m.body for m in hooks.stored] == [b"Subject: served\r\n\r\nhello\r\n"]
        yield trickle(clock, listener, greeted, 30, sent=30)  # a minute since each line began
        for client in greeted:
            lines = yield client.closed
            assert lines[-1] == b"421 4.4.2 b.test Command line too slow, closing connection"
        for peer in listener.peers:
            yield peer.done
        assert listener.factory.active == 0 and listener.factory.per_client == {}
    finally:
        yield listener.stop()
    assert sum("127.0.0.1 has 5 sessions" in line for line in logged) == 1
    assert sum("took over 60s to send a command line" in line for line in logged) == 5


@pytest_twisted.inlineCallbacks
def test_without_the_per_client_limit_the_same_attack_locks_everyone_out():
    """The issue as it was (per-client limit off): the legitimate client gets 421."""
    clock, hooks, listener, port, attackers = yield attack(per_client=0)
    try:
        assert all(c.lines[0].startswith(b"220 ") for c in attackers)
        lines = yield served(port, hooks)
        assert lines == [b"421 4.7.0 b.test Too many connections, try again later"]
        for client in attackers:
            client.transport.loseConnection()
            yield client.closed
        for peer in listener.peers:
            yield peer.done
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_each_octet_re_arms_the_idle_timer_but_not_the_line_time():
    clock = task.Clock()
    listener = Listener("b.test", MemoryHooks(), clock=clock)  # the defaults: 5 minutes idle, 1 minute a line
    port = yield listener.start()
    try:
        client = yield connect_from(port, "127.0.0.1")
        yield client.wait_lines(1)
        yield trickle(clock, listener, [client], 59)
        assert not client.closed.called
        yield trickle(clock, listener, [client], 1, sent=59)
        lines = yield client.closed
        assert lines[-1] == b"421 4.4.2 b.test Command line too slow, closing connection"
        summary = yield listener.peers[0].done
        assert summary.error == "command line timeout"
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_every_line_gets_the_whole_time_from_its_own_first_octet():
    """A line that begins in the same read as the previous one ends is timed from then,
    and a session of many slow but complete lines is never cut off."""
    clock = task.Clock()
    listener = Listener("b.test", MemoryHooks(), clock=clock, limits=Limits(command_line_time=10))
    port = yield listener.start()
    try:
        client = yield connect_from(port, "127.0.0.1")
        yield client.wait_lines(1)
        peer = listener.peers[0]
        client.send(b"NO")
        yield until(lambda: peer.receiver.line_pending, "the line to begin")
        for n in range(2, 8):  # each line takes 9 of its 10 seconds; 54 seconds in all
            clock.advance(9)
            client.send(b"OP\r\nNO")  # this line's end and the next one's beginning, in one read
            yield client.wait_lines(n)
            assert client.lines[-1].startswith(b"250 ")
        assert not client.closed.called
        clock.advance(10)
        lines = yield client.closed
        assert lines[-1].startswith(b"421 4.4.2 ")
        yield peer.done
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_an_ipv4_client_of_a_dual_stack_listener_is_counted_as_its_ipv4_address():
    """``::ffff:127.0.0.1`` and ``127.0.0.1`` are one client."""
    from smtppeer.peer.clients import client_key

    assert client_key("::ffff:127.0.0.1") == client_key("127.0.0.1") == "127.0.0.1"
    assert client_key("::1") == "::1" and client_key("/run/smtppeer.sock") is None
    # an IPv6 client as its network (client_ipv6_prefix_length); a mapped IPv4 one never
    assert client_key("2001:db8::1:2:3", 84) == client_key("2001:db8::9", 84) == "2001:db8::/84"
    assert client_key("2001:db8:0:0:1000::1", 84) == "2001:db8:0:0:1000::/84"
    assert client_key("::ffff:192.0.2.1", 84) == "192.0.2.1" and client_key("::1", 128) == "::1"
    listener = Listener("b.test", MemoryHooks(), max_connections_per_client=1)
    ep = endpoints.serverFromString(reactor, "tcp6:0:interface=\\:\\:")
    try:
        listener.port = yield ep.listen(listener.factory)
    except Exception as e:  # noqa: BLE001 - no IPv6 on this host
        pytest.skip(f"no dual-stack listener here: {e}")
    port = listener.port.getHost().port
    try:
        first = yield connect_from(port, "127.0.0.1")
        yield first.wait_lines(1)
        assert first.lines[0].startswith(b"220 ")
        assert listener.factory.per_client == {"127.0.0.1": 1}
        second = yield connect_from(port, "127.0.0.1")
        lines = yield second.closed
        assert lines[0].startswith(b"421 4.7.0 ")
        first.send(b"QUIT\r\n")
        yield first.closed
        for peer in listener.peers:
            yield peer.done
    finally:
        yield listener.stop()
