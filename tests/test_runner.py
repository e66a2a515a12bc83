"""The queue runner against real SMTPPeer next hops on loopback; time from task.Clock."""

from __future__ import annotations

import email
import email.policy
import json

import pytest
import pytest_twisted
from twisted.internet import defer, task

from smtppeer.engine import reply
from smtppeer.policy.routing import Router
from smtppeer.relay.queue import RunnerSettings
from smtppeer.relay.results import _remote_host
from smtppeer.relay.scheduler import QueueRunner
from smtppeer.store.spool import DELIVERED, FAILED, PENDING, Envelope, Recipient, Spool

from .conftest import free_port
from .peerutil import Listener, MemoryHooks


class PickyHooks(MemoryHooks):
    """A next hop that refuses some recipients permanently and some for now."""

    def rcpt_to(self, session, path, params):
        local = path.mailbox.local
        if local.startswith("bad"):
            return reply(550, "5.1.1", "No such user")
        if local.startswith("later"):
            return reply(450, "4.2.1", "Mailbox busy")
        return reply(250, "2.1.5", "OK")


@pytest_twisted.async_yield_fixture
async def next_hop():
    """A PickyHooks SMTPPeer listening on loopback; closed (and its sessions awaited) afterwards."""
    hooks = PickyHooks()
    listener = Listener("next.test", hooks)
    port = await listener.start()
    try:
        yield hooks, port
    finally:
        for peer in listener.peers:
            await peer.done
        await listener.stop()


class Harness:
    def __init__(self, spool: Spool, port: int, resolver=None, **settings) -> None:
        self.spool = spool
        self.port = port
        self.clock = task.Clock()
        self.local: list[tuple[list[str], bytes]] = []
        router = Router("peer.test", ["peer.test"], routes={"next.test": f"tcp:host=127.0.0.1:port={port}"})
        self.runner = QueueRunner(
            "peer.test",
            spool,
            router,
            deliver_locally=self._local,
            settings=RunnerSettings(**settings),
            clock=self.clock,
            resolver=resolver,
        )

    def _local(self, rcpts, message, queue_id):
        self.local.append((rcpts, message))
        return defer.succeed(None)

    @defer.inlineCallbacks
    def queue(self, queue_id: str, *addresses: str, sender: str = "a@peer.test", age: float = 0):
        rcpts = [Recipient(a, PENDING, {"relay": f"tcp:host=127.0.0.1:port={self.port}"}) for a in addresses]
        env = Envelope(queue_id, sender, rcpts, arrival=self.clock.seconds() - age)
        sink = self.spool.new_message(env, b"Received: by peer.test\r\n")
        sink.write(b"Subject: test " + queue_id.encode() + b"\r\n\r\nbody\r\n")
        yield sink.finish()
        return env

    @defer.inlineCallbacks
    def run(self, advance: float = 0):
        self.clock.advance(advance)
        yield self.runner.idle()
        yield self.runner.idle()  # a bounce queued by the first round


@pytest_twisted.inlineCallbacks
def test_messages_are_spread_over_the_connections_allowed_and_leave_the_spool(spool, next_hop):
    """Ten messages, two connections allowed to the destination: five on each.  A
    receiver syncs each message before its 250, so messages on parallel
    connections share its syncs where one connection would wait for each."""
    hooks, port = next_hop
    h = Harness(spool, port, per_destination=2)
    try:
        for n in range(3):
            yield h.queue(f"Q{n}", f"u{n}@next.test", "v@next.test")
        for n in range(3, 10):
            yield h.queue(f"Q{n}", f"u{n}@next.test")
        h.runner.startService()
        yield h.run()
        assert len(hooks.stored) == 10 and len(hooks.sessions) == 2  # two connections
        assert sorted(len(s.recipients) for s in hooks.stored) == [1] * 7 + [2] * 3
        assert hooks.stored[0].recipients == ["u0@next.test", "v@next.test"]
        assert hooks.stored[0].body.startswith(b"Received: by peer.test\r\nSubject: test Q0")
        assert spool.ids() == [] and h.runner.entries == {}
    finally:
        h.runner.stopService()


@pytest_twisted.inlineCallbacks
def test_next_hop_down_then_up_is_retried_after_the_backoff(spool):
    port = free_port()  # nothing listens there yet
    h = Harness(spool, port, backoff_base=60, jitter=0.0)
    yield h.queue("R1", "u@next.test")
    h.runner.startService()
    try:
        yield h.run()
        rcpt = spool.load("R1").recipients[0]
        assert (rcpt.state, rcpt.attempts) == (PENDING, 1)
        assert rcpt.last_reply.startswith("451 4.4.1 Cannot connect")
        assert rcpt.next_attempt == h.clock.seconds() + 60
        hooks = MemoryHooks()
        listener = Listener("next.test", hooks)
        listener.factory_port = port
        from twisted.internet import endpoints, reactor

        listener.port = yield endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(
            listener.factory
        )
        try:
            yield h.run(advance=59)
            assert hooks.stored == []  # not due yet
            yield h.run(advance=1)
            assert len(hooks.stored) == 1
            assert spool.ids() == []
            yield listener.peers[0].done
        finally:
            yield listener.stop()
    finally:
        h.runner.stopService()


@pytest_twisted.inlineCallbacks
def test_permanent_and_transient_refusals_per_recipient_and_a_bounce(spool, next_hop):
    hooks, port = next_hop
    h = Harness(spool, port)
    try:
        yield h.queue("P1", "good@next.test", "bad@next.test", "later@next.test")
        h.runner.startService()
        yield h.run()
        env = spool.load("P1")
        states = {r.address: (r.state, r.last_reply[:9]) for r in env.recipients}
        assert states == {
            "good@next.test": (DELIVERED, "250 2.0.0"),
            "bad@next.test": (FAILED, "550 5.1.1"),
            "later@next.test": (PENDING, "450 4.2.1"),
        }
        assert hooks.stored[0].recipients == ["good@next.test"]
        # the bounce went to the (local) sender
        [(rcpts, dsn)] = h.local
        assert rcpts == ["a@peer.test"]
        msg = email.message_from_bytes(dsn, policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report"
        assert "bad@next.test" in dsn.decode() and "5.1.1" in dsn.decode()
        assert "later@next.test" not in dsn.decode()
        raw = json.loads(open(spool.envelope_path("P1")).read())
        assert [r["state"] for r in raw["recipients"]] == [DELIVERED, FAILED, PENDING]
    finally:
        h.runner.stopService()


@pytest_twisted.inlineCallbacks
def test_no_bounce_for_a_message_from_the_null_path(spool, next_hop):
    hooks, port = next_hop
    h = Harness(spool, port)
    try:
        yield h.queue("N1", "bad@next.test", sender="")
        h.runner.startService()
        yield h.run()
        assert spool.ids() == []  # failed, finished, removed
        assert h.local == []  # and nothing was bounced
    finally:
        h.runner.stopService()


@pytest_twisted.inlineCallbacks
def test_a_message_past_its_lifetime_fails_with_4_4_7(spool, next_hop):
    hooks, port = next_hop
    h = Harness(spool, port, lifetime=5 * 86400)
    try:
        yield h.queue("E1", "later@next.test", age=5 * 86400 + 1)
        h.runner.startService()
        yield h.run()
        assert spool.ids() == []
        [(rcpts, dsn)] = h.local
        assert "4.4.7" in dsn.decode()
    finally:
        h.runner.stopService()


@pytest_twisted.inlineCallbacks
def test_a_failure_not_yet_bounced_when_the_process_died_is_bounced_at_start(spool):
    h = Harness(spool, free_port())
    env = yield h.queue("C1", "gone@next.test")
    env.recipients[0].state = FAILED
    env.recipients[0].last_reply = "550 5.1.1 No such user"
    yield spool.update(env)  # the state a crash leaves: failed, not reported
    h.runner.startService()
    try:
        yield h.run()
        [(rcpts, dsn)] = h.local
        assert rcpts == ["a@peer.test"] and b"5.1.1" in dsn
        assert spool.ids() == []
    finally:
        h.runner.stopService()


@pytest.mark.parametrize(
    ("relay", "host"),
    [
        ("tcp:host=smarthost.example:port=25", "smarthost.example"),
        ("tcp:127.0.0.1:2526", "127.0.0.1"),
        ("mx", None),  # which MX host answered is not kept: no Remote-MTA rather than a wrong one
        ("unix:/run/relay.sock", None),
        (None, None),
    ],
)
def test_a_bounce_names_the_relays_host_as_remote_mta(relay, host):
    assert _remote_host(relay) == host


def test_a_session_that_ends_late_does_not_free_what_a_newer_one_is_sending():
    """Marks belong to the session that took them.  A flush (or a poll) that comes
    while the attempt that deferred a recipient is still ending starts a newer
    attempt; when the old one ends it must not free the recipient the new one is
    sending, or a third attempt sends it again (the lab saw the message twice)."""
    from smtppeer.relay.queue import Queue

    queue = Queue()
    envelope = Envelope("M1", "a@peer.test", [Recipient("later@next.test")], 0.0)
    rcpt = envelope.recipients[0]
    first = queue.mark([(envelope, [rcpt])])
    first.release(envelope, [rcpt])  # its result is written: the recipient is free
    second = queue.mark([(envelope, [rcpt])])  # a retry takes it at once
    first.release_all()  # the old session ends
    assert queue.is_sending(envelope, rcpt)
    second.release_all()
    assert not queue.is_sending(envelope, rcpt) and queue.sending == 0


# -- send = "on-poll" (issue 12, item 3) --------------------------------------------------------


def on_poll(port: int) -> dict:
    """Settings for a next hop whose mail waits for a poll of its peer (``send = "on-poll"``)."""
    return {"on_poll": frozenset({f"tcp:host=127.0.0.1:port={port}", "peer:next"}), "jitter": 0.0}


@pytest_twisted.inlineCallbacks
def test_mail_for_an_on_poll_peer_waits_for_the_poll_and_flush_sends_it_now(spool, next_hop):
    hooks, port = next_hop
    h = Harness(spool, port, **on_poll(port))
    try:
        yield h.queue("W1", "u@next.test")
        yield h.queue("W2", "later@next.test")
        h.runner.startService()
        yield h.run()
        yield h.run(advance=3 * 3600)  # however long: no connection of its own
        assert hooks.stored == [] and hooks.sessions == []
        assert [spool.load(i).recipients[0].attempts for i in ("W1", "W2")] == [0, 0]
        # smtppeer queue flush PEER: now, over a connection of its own
        assert h.runner.flush(f"tcp:host=127.0.0.1:port={port}") == 2
        yield h.run()
        assert [s.recipients for s in hooks.stored] == [["u@next.test"]]
        assert spool.ids() == ["W2"]
        # deferred by the next hop (450): it waits for the poll again, not for its retry time
        rcpt = spool.load("W2").recipients[0]
        assert (rcpt.state, rcpt.attempts, rcpt.last_reply[:9]) == (PENDING, 1, "450 4.2.1")
        sessions = len(hooks.sessions)  # the flush's (spread over the connections allowed)
        yield h.run(advance=2 * 3600)
        assert len(hooks.sessions) == sessions  # none since
    finally:
        h.runner.stopService()


@pytest_twisted.inlineCallbacks
def test_on_poll_mail_no_poll_ever_sent_expires_with_a_bounce(spool, next_hop):
    hooks, port = next_hop
    h = Harness(spool, port, lifetime=5 * 86400, interval=60, **on_poll(port))
    try:
        yield h.queue("X1", "u@next.test", age=5 * 86400 - 30)
        h.runner.startService()
        yield h.run()
        assert spool.ids() == ["X1"] and h.local == []
        yield h.run(advance=61)  # the next sweep: past the queue lifetime
        yield h.runner.idle()
        assert hooks.sessions == [] and spool.ids() == []
        [(rcpts, dsn)] = h.local
        assert rcpts == ["a@peer.test"] and b"4.4.7" in dsn and b"u@next.test" in dsn
    finally:
        h.runner.stopService()


@pytest_twisted.inlineCallbacks
def test_a_502_is_a_misrouted_next_hop_deferred_never_bounced(spool):
    """An ODMR port (RFC 2645) answers MAIL with 502: the route is wrong, not the message."""
    from smtppeer.engine.atrn import ODMR_COMMANDS

    hooks = MemoryHooks()
    listener = Listener("odmr.test", hooks, only_commands=ODMR_COMMANDS)
    port = yield listener.start()
    h = Harness(spool, port, jitter=0.0)
    try:
        yield h.queue("M1", "u@next.test")
        yield h.queue("M2", "u@next.test", sender="")  # a bounce: nothing may drop it either
        h.runner.startService()
        yield h.run()
        for queue_id in ("M1", "M2"):
            rcpt = spool.load(queue_id).recipients[0]
            assert (rcpt.state, rcpt.attempts) == (PENDING, 1)
            assert rcpt.last_reply.startswith(
                "451 4.3.5 Not a port for mail (configuration error): 502 5.5.1"
            )
        assert h.local == [] and hooks.stored == []
    finally:
        h.runner.stopService()
        for peer in listener.peers:
            yield peer.done
        yield listener.stop()
