"""Poll schedules on an injected clock: interval, jitter, back-off, recovery, errors survived."""

from __future__ import annotations

import random

import pytest_twisted
from twisted.internet import defer, task

from smtppeer.relay.poller import Poller, Schedule


class Outcome:
    def __init__(self, ok: bool) -> None:
        self.ok = ok


class Peer:
    """Stands for the other host: answers polls as scripted, records when it was called."""

    def __init__(self, clock, script) -> None:
        self.clock = clock
        self.script = list(script)
        self.calls: list[float] = []

    async def poll(self, name: str):
        self.calls.append(self.clock.seconds())
        result = self.script.pop(0) if self.script else True
        if result == "raise":
            raise RuntimeError("unexpected bug in a poll")
        return Outcome(result)


def gaps(calls: list[float]) -> list[float]:
    return [round(b - a) for a, b in zip(calls, calls[1:], strict=False)]


@pytest_twisted.inlineCallbacks
def test_polls_back_off_after_failures_and_recover():
    clock = task.Clock()
    peer = Peer(clock, [False, False, False, True, True])
    poller = Poller([Schedule("p", interval=100, jitter=0, max_backoff=350)], peer.poll, clock=clock)
    poller.startService()
    for _ in range(2000):  # bounded: step the clock a second at a time
        clock.advance(1)
        if len(peer.calls) >= 6:
            break
    yield poller.stopService()
    # failures: 200, 350 (capped), 350; success returns to the interval
    assert gaps(peer.calls) == [200, 350, 350, 100, 100]
    assert clock.getDelayedCalls() == []


@pytest_twisted.inlineCallbacks
def test_jitter_spreads_polls_around_the_interval():
    clock = task.Clock()
    peer = Peer(clock, [])
    poller = Poller([Schedule("p", interval=100, jitter=0.2)], peer.poll, clock=clock, rng=random.Random(7))
    poller.startService()
    for _ in range(3000):
        clock.advance(1)
        if len(peer.calls) >= 20:
            break
    yield poller.stopService()
    spread = gaps(peer.calls)
    assert all(80 <= g <= 121 for g in spread) and len(set(spread)) > 3


@pytest_twisted.inlineCallbacks
def test_a_poll_that_raises_does_not_stop_the_schedule():
    clock = task.Clock()
    peer = Peer(clock, ["raise", True])
    poller = Poller([Schedule("p", interval=10, jitter=0)], peer.poll, clock=clock)
    poller.startService()
    for _ in range(100):
        clock.advance(1)
        if len(peer.calls) >= 3:
            break
    yield poller.stopService()
    assert gaps(peer.calls) == [20, 10]


@pytest_twisted.inlineCallbacks
def test_poll_now_runs_at_once_and_never_twice_at_the_same_time():
    clock = task.Clock()
    release = defer.Deferred()
    calls = []

    async def slow_poll(name):
        calls.append(name)
        await release
        return Outcome(True)

    poller = Poller([Schedule("p", interval=100, jitter=0)], slow_poll, clock=clock)
    poller.startService()
    first = poller.poll_now("p")
    second = poller.poll_now("p")
    assert first is second and calls == ["p"]
    release.callback(None)
    outcome = yield first
    assert outcome.ok
    yield poller.stopService()
