"""Poll schedules: call each peer on an interval, with jitter, backing off after failures.

A dial-up host runs one ``Poller``; each poll is ``QueueRunner.poll`` (send
what is queued for the peer, ``TURN``, receive, ``QUIT``).  Jitter keeps many
hosts with the same interval from calling at the same second; after a failed
poll the next one waits longer (doubling, up to ``max_backoff``) so a provider
that is down is not hammered, and the first success returns to the interval.

Written with ``callLater`` rather than ``LoopingCall``: a ``LoopingCall``
whose function fails stops for good, and a poller must outlive any error.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, interfaces
from twisted.logger import Logger

log = Logger()


@dataclass
class Schedule:
    peer: str
    interval: float
    jitter: float = 0.1
    max_backoff: float = 3600.0
    failures: int = 0

    def next_delay(self, rng: random.Random) -> float:
        base = self.interval * (2**self.failures if self.failures else 1)
        base = min(base, max(self.max_backoff, self.interval))
        return base * (1 + rng.uniform(-self.jitter, self.jitter))


class Poller(service.Service):
    """Runs ``poll(peer)`` for each schedule, forever, never two at once per peer."""

    def __init__(
        self,
        schedules: list[Schedule],
        poll: Callable[[str], Awaitable],
        clock: interfaces.IReactorTime | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415
        self.schedules = {s.peer: s for s in schedules}
        self.poll = poll
        self.clock = clock
        self.rng = rng or random.Random()
        self._calls: dict[str, object] = {}
        self._running: dict[str, defer.Deferred] = {}

    def startService(self) -> None:
        super().startService()
        for schedule in self.schedules.values():
            # the first poll soon after start, spread by the jitter
            self._schedule(schedule, schedule.interval * self.rng.uniform(0, schedule.jitter))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()
        return defer.DeferredList(list(self._running.values()), consumeErrors=True)

    def poll_now(self, peer: str) -> defer.Deferred:
        """Run one poll now (``smtppeer poll PEER``); the schedule carries on after it."""
        if peer in self._running:
            return self._running[peer]
        return self._run(self.schedules[peer])

    def _schedule(self, schedule: Schedule, delay: float) -> None:
        if self.running:
            self._calls[schedule.peer] = self.clock.callLater(delay, self._run, schedule)

    def _run(self, schedule: Schedule) -> defer.Deferred:
        call = self._calls.pop(schedule.peer, None)
        if call is not None and call.active():
            call.cancel()
        d = defer.ensureDeferred(self._poll(schedule))
        self._running[schedule.peer] = d
        d.addBoth(lambda result: (self._running.pop(schedule.peer, None), result)[1])
        return d

    async def _poll(self, schedule: Schedule):
        outcome = None
        try:
            outcome = await self.poll(schedule.peer)
            ok = getattr(outcome, "ok", True)
        except Exception:  # noqa: BLE001 - a poller must survive anything
            log.failure("poll of {peer} failed", peer=schedule.peer)
            ok = False
        schedule.failures = 0 if ok else schedule.failures + 1
        delay = schedule.next_delay(self.rng)
        if not ok:
            log.info("{line}", line=f"poll {schedule.peer}: next attempt in {delay:.0f}s (backing off)")
        self._schedule(schedule, delay)
        return outcome
