"""Links, on real sockets: down resets, going down cuts, and each toxic does what it
says, timed by injected clocks (the traffic is real, the time is the test's)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task

from smtppeer.lab.links import Link
from smtppeer.lab.topology import LinkSpec, Schedule, Toxics

from .conftest import wait_until_async


class Target(protocol.Protocol):
    """The host behind the link: keeps what it reads, says when the connection ends."""

    def connectionMade(self) -> None:
        self.factory.sides.append(self)
        self.received = b""
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        self.lost.callback(None)


def until(predicate, what):
    return defer.ensureDeferred(wait_until_async(predicate, timeout=10, what=what))


@pytest_twisted.async_yield_fixture
async def rig():
    """A target server, and a factory of links to it whose toxics and schedules run
    on task.Clocks; everything closed afterwards."""
    factory = protocol.Factory.forProtocol(Target)
    factory.sides = []
    port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    links = []

    def make(schedule: Schedule | None = None, **toxics) -> tuple[Link, task.Clock, task.Clock]:
        spec = LinkSpec("a-b", "a", "b", schedule or Schedule(), Toxics(**toxics))
        clock, timer = task.Clock(), task.Clock()
        link = Link(spec, clock, reactor, timer=timer)
        link.listen("smtp", lambda: ("127.0.0.1", port.getHost().port))
        link.start()
        links.append(link)
        return link, clock, timer

    class Rig:
        targets = factory.sides

        @staticmethod
        async def connect(link: Link) -> Client:
            ep = endpoints.clientFromString(
                reactor, f"tcp:host=127.0.0.1:port={link.ports['smtp'].getHost().port}"
            )
            return await endpoints.connectProtocol(ep, Client())

    Rig.make = staticmethod(make)
    try:
        yield Rig
    finally:
        for link in links:
            await defer.DeferredList(link.stop())
        for side in factory.sides:
            if side.transport.connected:
                side.transport.abortConnection()
                await side.lost
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_clean_link_passes_everything_both_ways(rig):
    link, _, _ = rig.make()
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    client.transport.write(b"hello")
    rig.targets[0].transport.write(b"there")
    await until(lambda: rig.targets[0].received == b"hello" and client.received == b"there", "both ways")
    client.transport.loseConnection()
    await rig.targets[0].lost
    assert link.stats.octets == 10 and link.stats.connections == 1


@pytest_twisted.ensureDeferred
async def test_a_link_that_is_down_resets_new_connections_and_cuts_open_ones(rig):
    link, _, _ = rig.make()
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    link.set(False)  # by hand: the open connection is cut at both ends
    await client.lost
    await rig.targets[0].lost
    refused = await rig.connect(link)
    await refused.lost  # accepted, then reset at once: like nobody there
    assert refused.received == b"" and len(rig.targets) == 1
    assert (link.stats.cut, link.stats.refused) == (1, 1)
    link.set(None)  # back to its schedule: up
    assert link.up


@pytest_twisted.ensureDeferred
async def test_latency_holds_each_chunk_and_keeps_the_order(rig):
    link, _, timer = rig.make(latency=5.0)
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    client.transport.write(b"one ")
    await until(lambda: link.connections and any(p.passed for p in link.connections), "the proxy read it")
    timer.advance(1)
    client.transport.write(b"two")
    await until(lambda: sum(p.passed for p in link.connections) == 7, "the proxy read both")
    timer.advance(3.9)
    assert rig.targets[0].received == b""  # 4.9 s in: nothing yet
    timer.advance(0.2)
    await until(lambda: rig.targets[0].received == b"one ", "the first chunk at 5 s")
    timer.advance(1)
    await until(lambda: rig.targets[0].received == b"one two", "the second at 6 s")
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_bandwidth_paces_what_passes(rig):
    link, _, timer = rig.make(bandwidth=1000)
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    client.transport.write(b"x" * 3000)
    await until(lambda: sum(p.passed for p in link.connections) == 3000, "the proxy read it")
    timer.advance(2.9)
    assert rig.targets[0].received == b""
    timer.advance(0.2)
    await until(lambda: len(rig.targets[0].received) == 3000, "3000 octets at 1000 a second")
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_reset_after_passes_exactly_n_octets_then_resets_both_ends(rig):
    link, _, timer = rig.make(reset_after=100)
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    client.transport.write(b"y" * 250)
    await client.lost
    await rig.targets[0].lost
    assert rig.targets[0].received == b"y" * 100
    assert link.stats.cut == 1


@pytest_twisted.ensureDeferred
async def test_a_reset_behind_latency_is_one_cut_however_much_follows(rig):
    link, _, timer = rig.make(reset_after=100, latency=5.0)
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    client.transport.write(b"y" * 150)
    await until(lambda: any(p.passed == 100 for p in link.connections), "the proxy read up to the cut")
    client.transport.write(b"z" * 50)  # after the cut is decided, before it happens
    client.transport.write(b"z" * 50)
    await until(
        lambda: link.stats.octets == 0 and len(timer.getDelayedCalls()) == 2, "100 octets, then the cut"
    )
    for _ in range(10):  # the reactor turns: whatever more it reads is swallowed
        await task.deferLater(reactor, 0.005, lambda: None)
    assert len(timer.getDelayedCalls()) == 2 and link.stats.cut == 1
    timer.advance(5.1)
    await client.lost
    await rig.targets[0].lost
    assert rig.targets[0].received == b"y" * 100
    assert link.stats.cut == 1


@pytest_twisted.ensureDeferred
async def test_hang_passes_nothing_and_closes_nothing(rig):
    link, _, _ = rig.make(hang=True)
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    client.transport.write(b"anyone there?")
    rig.targets[0].transport.write(b"hello?")
    await until(lambda: any(True for _ in link.connections), "an open connection")
    for _ in range(20):  # the reactor turns; nothing passes
        await task.deferLater(reactor, 0.005, lambda: None)
    assert (rig.targets[0].received, client.received) == (b"", b"")
    assert not client.lost.called and not rig.targets[0].lost.called
    client.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_slow_close_closes_the_other_end_later(rig):
    link, _, timer = rig.make(slow_close=30.0)
    client = await rig.connect(link)
    await until(lambda: rig.targets, "the target's side")
    client.transport.loseConnection()
    await client.lost
    for _ in range(20):
        await task.deferLater(reactor, 0.005, lambda: None)
    assert not rig.targets[0].lost.called  # still open on the other side
    timer.advance(30)
    await rig.targets[0].lost


@pytest.mark.parametrize(
    ("schedule", "elapsed", "up", "change"),
    [
        (Schedule(), 1e6, True, None),
        (Schedule(up=False), 0, False, None),
        (Schedule(period=900, duration=120), 0, True, 120),
        (Schedule(period=900, duration=120), 500, False, 400),
        (Schedule(period=900, duration=120, offset=600), 0, False, 600),
        (Schedule(period=900, duration=120, offset=600), 650, True, 70),
        (Schedule(up=False, period=60, duration=10), 5, False, 5),
    ],
)
def test_schedules(schedule, elapsed, up, change):
    assert schedule.is_up(elapsed) == up
    assert schedule.next_change(elapsed) == change


@pytest_twisted.ensureDeferred
async def test_a_scheduled_link_changes_on_the_labs_clock_and_says_so(rig):
    link, clock, _ = rig.make(Schedule(period=60, duration=10))
    seen = []
    link.watchers.append(lambda each, up: seen.append((clock.seconds(), up)))
    assert link.up
    clock.advance(10)
    clock.advance(50)
    clock.advance(10)
    link.set(False)  # by hand: the schedule no longer moves it
    clock.advance(60)
    assert seen == [(10, False), (60, True), (70, False)]
    assert not link.up
