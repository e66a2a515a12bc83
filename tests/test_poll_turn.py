"""Poll and exchange in one connection: the dial-up side sends, says TURN, receives.

Two complete peers in one process (policy, spool, queue runner, Maildirs),
on real loopback sockets: the provider holds mail for ``dialup.test``; the
dial-up host has mail queued for the provider.
"""

from __future__ import annotations

import mailbox
import os

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor, task

from smtppeer.peer.protocol import SMTPPeerFactory
from smtppeer.policy.receiving import ReceivingPolicy
from smtppeer.policy.routing import Router
from smtppeer.relay.queue import RunnerSettings
from smtppeer.relay.scheduler import QueueRunner
from smtppeer.store.committer import Committer
from smtppeer.store.maildir import MaildirStore
from smtppeer.store.spool import HELD, PENDING, Envelope, Recipient, Spool

from .conftest import free_port, wait_until_async


class Host:
    """One peer: a policy, a spool and a runner under ``root``."""

    def __init__(self, root, hostname: str, domains: list[str], **router_args) -> None:
        self.root = root
        self.committer = Committer()
        self.spool = Spool(str(root / "spool"), self.committer)
        self.maildirs = MaildirStore(str(root / "mail"), self.committer)
        self.router = Router(hostname, domains, **router_args)
        self.runner = QueueRunner(hostname, self.spool, self.router, settings=RunnerSettings(interval=3600))
        self.policy = ReceivingPolicy(hostname, self.router, self.maildirs, self.spool, runner=self.runner)
        self.hostname = hostname
        self.port = None

    @defer.inlineCallbacks
    def listen(self, turn_by_address: bool, turn_peers: dict[str, list[str]]):
        self.policy.turn_peers = turn_peers
        factory = SMTPPeerFactory(self.hostname, self.policy, turn_by_address=turn_by_address)
        ep = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        self.port = yield ep.listen(factory)
        self.factory = factory
        return self.port.getHost().port

    @defer.inlineCallbacks
    def queue(
        self,
        queue_id: str,
        address: str | list[str],
        state: str,
        route: dict[str, str],
        sender: str,
        due: bool = False,
    ):
        # not due for the runner's own rounds (unless ``due``): only the poll sends it
        addresses = [address] if isinstance(address, str) else address
        later = 0.0 if due else reactor.seconds() + 3600
        rcpts = [Recipient(a, state, route, next_attempt=later) for a in addresses]
        env = Envelope(queue_id, sender, rcpts, arrival=reactor.seconds())
        sink = self.spool.new_message(env, b"Received: by " + self.hostname.encode() + b"\r\n")
        sink.write(f"Subject: {queue_id}\r\n\r\nbody of {queue_id}\r\n".encode())
        yield sink.finish()

    def mailbox(self, domain: str, user: str) -> list[bytes]:
        path = os.path.join(self.root, "mail", domain, user)
        if not os.path.isdir(path):
            return []
        box = mailbox.Maildir(path, factory=None, create=False)
        return [box.get_bytes(k) for k in sorted(box.keys())]

    @defer.inlineCallbacks
    def settle(self):
        """Wait (bounded: AssertionError on timeout) until this host's sessions are over
        and its results recorded."""
        yield defer.ensureDeferred(
            wait_until_async(
                lambda: self.port is None or self.factory.active == 0,
                what=f"{self.hostname}'s sessions to end",
                detail=lambda: f"{self.factory.active} still active",
            )
        )
        yield self.runner.idle()

    @defer.inlineCallbacks
    def close(self):
        if self.port is not None:
            yield self.port.stopListening()
        if self.runner.running:
            yield self.runner.stopService()
        yield self.committer.stopService()


@pytest.fixture
def hosts(tmp_path):
    holds = {"dialup.test": "dialup"}
    provider = Host(tmp_path / "provider", "provider.test", ["provider.test"], holds=holds)
    dialup = Host(tmp_path / "dialup", "dialup.test", ["dialup.test"])
    yield provider, dialup
    for host in (provider, dialup):
        pytest_twisted.blockon(host.close())


@defer.inlineCallbacks
def prepare(provider: Host, dialup: Host, turn_by_address=True, turn_peers=None, held=2, also_to=()):
    """``also_to``: a fourth message from the dial-up host, to these recipients."""
    peers = {"dialup": ["127.0.0.1"]} if turn_peers is None else turn_peers
    port = yield provider.listen(turn_by_address, peers)
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    for n in range(held):  # mail the provider holds for the dial-up host
        yield provider.queue(f"H{n}", f"user{n}@dialup.test", HELD, {"hold": "dialup"}, "x@provider.test")
    for n in range(3):  # mail the dial-up host has for the provider
        yield dialup.queue(f"D{n}", "boss@provider.test", PENDING, {"relay": endpoint}, "me@dialup.test")
    if also_to:
        yield dialup.queue("D9", list(also_to), PENDING, {"relay": endpoint}, "me@dialup.test")
    provider.runner.startService()
    dialup.runner.startService()
    return endpoint


@pytest_twisted.inlineCallbacks
def test_one_poll_sends_turns_and_receives_on_the_same_connection(hosts):
    provider, dialup = hosts
    endpoint = yield prepare(provider, dialup)
    outcome = yield defer.ensureDeferred(dialup.runner.poll("provider", endpoint, dialup.policy))
    yield provider.settle()
    assert (outcome.sent, outcome.received, outcome.turned, outcome.ok) == (3, 2, True, True)
    assert outcome.line().startswith("poll provider: sent 3 messages to 3 recipients, received 2, turned, ")
    assert len(provider.mailbox("provider.test", "boss")) == 3
    assert [len(dialup.mailbox("dialup.test", f"user{n}")) for n in range(2)] == [1, 1]
    # both queues are empty: what was acknowledged left the spool
    assert provider.spool.ids() == [] and dialup.spool.ids() == []
    assert provider.factory.active == 0


@pytest_twisted.inlineCallbacks
def test_the_poll_line_counts_messages_and_recipients(hosts):
    """Issue 14, item 5: "sent N" counted recipients; it says both now."""
    provider, dialup = hosts
    endpoint = yield prepare(provider, dialup, held=1, also_to=["boss@provider.test", "staff@provider.test"])
    outcome = yield defer.ensureDeferred(dialup.runner.poll("provider", endpoint, dialup.policy))
    yield provider.settle()
    assert (outcome.sent, outcome.sent_recipients, outcome.received) == (4, 5, 1)
    assert outcome.line().startswith("poll provider: sent 4 messages to 5 recipients, received 1, turned, ")
    assert len(provider.mailbox("provider.test", "staff")) == 1


@pytest_twisted.inlineCallbacks
def test_turn_refused_the_mail_is_sent_and_nothing_received(hosts):
    provider, dialup = hosts
    endpoint = yield prepare(provider, dialup, turn_by_address=False)
    outcome = yield defer.ensureDeferred(dialup.runner.poll("provider", endpoint, dialup.policy))
    yield provider.settle()
    assert (outcome.sent, outcome.received, outcome.turned) == (3, 0, False)
    assert outcome.turn_reply.startswith("502 5.5.1")
    assert outcome.error.startswith("TURN refused: 502 5.5.1")  # a failed poll: it backs off
    assert len(provider.mailbox("provider.test", "boss")) == 3
    assert sorted(provider.spool.ids()) == ["H0", "H1"]  # still held


@pytest_twisted.inlineCallbacks
def test_turn_from_an_address_that_is_not_the_peer_is_refused(hosts):
    provider, dialup = hosts
    endpoint = yield prepare(provider, dialup, turn_peers={"dialup": ["192.0.2.99"]})
    outcome = yield defer.ensureDeferred(dialup.runner.poll("provider", endpoint, dialup.policy))
    yield provider.settle()
    assert not outcome.turned and outcome.received == 0
    assert sorted(provider.spool.ids()) == ["H0", "H1"]


@pytest_twisted.inlineCallbacks
def test_nothing_held_is_a_turn_then_an_immediate_quit(hosts):
    provider, dialup = hosts
    endpoint = yield prepare(provider, dialup, held=0)
    outcome = yield defer.ensureDeferred(dialup.runner.poll("provider", endpoint, dialup.policy))
    yield provider.settle()
    assert (outcome.sent, outcome.received, outcome.turned, outcome.ok) == (3, 0, True, True)


@pytest_twisted.inlineCallbacks
def test_provider_down_keeps_everything_queued(hosts):
    provider, dialup = hosts
    endpoint = yield prepare(provider, dialup)
    yield provider.port.stopListening()
    provider.port = None
    outcome = yield defer.ensureDeferred(dialup.runner.poll("provider", endpoint, dialup.policy))
    yield provider.settle()
    assert not outcome.ok and outcome.error.startswith("cannot connect")
    assert sorted(dialup.spool.ids()) == ["D0", "D1", "D2"]
    attempts = [r.attempts for e in dialup.spool.envelopes() for r in e.recipients]
    assert attempts == [1, 1, 1], attempts


@pytest_twisted.inlineCallbacks
def test_on_poll_mail_is_due_but_waits_for_the_poll_and_goes_with_it(hosts):
    """``send = "on-poll"`` (issue 12, item 3): the runner opens no connection for it."""
    provider, dialup = hosts
    port = yield provider.listen(True, {"dialup": ["127.0.0.1"]})
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    dialup.runner.settings.on_poll = frozenset({endpoint, "peer:provider"})
    for n in range(2):
        route = {"relay": endpoint}
        yield dialup.queue(f"D{n}", "boss@provider.test", PENDING, route, "me@dialup.test", due=True)
    dialup.runner.startService()
    yield task.deferLater(reactor, 0.2, lambda: None)  # the runner's first rounds
    yield dialup.runner.idle()
    assert provider.factory.active == 0 and provider.mailbox("provider.test", "boss") == []
    assert [r.attempts for e in dialup.spool.envelopes() for r in e.recipients] == [0, 0]
    outcome = yield defer.ensureDeferred(dialup.runner.poll("provider", endpoint, dialup.policy))
    yield provider.settle()
    assert (outcome.sent, outcome.turned, outcome.ok) == (2, True, True)
    assert len(provider.mailbox("provider.test", "boss")) == 2 and dialup.spool.ids() == []


@pytest_twisted.inlineCallbacks
def test_a_poll_that_sends_elsewhere_first_still_receives_when_that_fails(hosts):
    """``send_to`` (an ATRN poll's SMTP port): sending goes over its own connection first;
    when that fails the mail stays queued, the poll still receives, and it counts as failed."""
    provider, dialup = hosts
    endpoint = yield prepare(provider, dialup)
    down = f"tcp:host=127.0.0.1:port={free_port()}"
    for envelope in dialup.spool.envelopes():  # queued for the SMTP port, which is down
        envelope.recipients[0].route = {"relay": down}
        yield dialup.spool.update(envelope)
        dialup.runner.entries[envelope.id] = envelope
    outcome = yield defer.ensureDeferred(
        dialup.runner.poll("provider", endpoint, dialup.policy, send_queued=False, send_to=down)
    )
    yield provider.settle()
    assert (outcome.sent, outcome.received, outcome.turned) == (0, 2, True)
    assert outcome.error.startswith("cannot send: 451 4.4.1 Cannot connect to provider (poll, sending): ")
    assert sorted(dialup.spool.ids()) == ["D0", "D1", "D2"]
    assert [r.attempts for e in dialup.spool.envelopes() for r in e.recipients] == [1, 1, 1]
    assert provider.mailbox("provider.test", "boss") == []
