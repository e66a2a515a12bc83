"""Links: the lab's TCP proxies between hosts, with a schedule and toxics.

Every connection one lab host opens to another goes through a link, so the
path can be down (a new connection is reset as soon as it is accepted, and
open ones are cut when the link goes down), slow (latency, jitter,
bandwidth), broken (reset after N octets), silent (hang: nothing passes,
nothing closes) or slow to close.  A link is up or down by its schedule
(``up every 15m for 2m``) until someone sets it by hand (the API, the
CLI, a test), and says so to whoever watches: a dial-up host polls when
its link comes up.

Toxics run on the reactor's own time (they shape real traffic); schedules
on the lab's clock, which a test may replace.
"""

from __future__ import annotations

import random
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import interfaces, protocol
from twisted.logger import Logger

from .topology import LinkSpec

log = Logger()

BUFFER_HIGH = 1024 * 1024  # queued octets in one direction above which the sending side is paused

# (link, up) -> anything, when a link changes state
StateWatcher = Callable[["Link", bool], object]


@dataclass
class LinkStats:
    connections: int = 0  # accepted while up
    refused: int = 0  # reset at once: the link was down
    cut: int = 0  # open connections cut when the link went down, or reset after N octets
    octets: int = 0  # passed on, both ways


class Link:
    def __init__(
        self,
        spec: LinkSpec,
        clock: interfaces.IReactorTime,
        reactor: interfaces.IReactorTCP | None = None,
        rng: random.Random | None = None,
        timer: interfaces.IReactorTime | None = None,
    ) -> None:
        """``clock`` runs the schedule (the lab's); ``timer`` the toxics (latency,
        bandwidth, slow close: the reactor's own time unless a test gives one)."""
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.spec = spec
        self.clock = clock
        self.reactor = reactor  # the traffic's
        self.timer = timer or reactor
        self.rng = rng or random.Random(0)
        self.forced: bool | None = None  # set by hand: overrides the schedule until cleared
        self.up = spec.schedule.is_up(0.0)
        self.stats = LinkStats()
        self.ports: dict[str, interfaces.IListeningPort] = {}  # listener kind -> the proxy's port
        self.targets: dict[str, Callable[[], tuple[str, int] | None]] = {}
        self.connections: set[_Pipe] = set()
        self.watchers: list[StateWatcher] = []
        self._started_at: float | None = None
        self._timer = None

    @property
    def name(self) -> str:
        return self.spec.name

    def listen(self, kind: str, target: Callable[[], tuple[str, int] | None]) -> int:
        """A proxy for one listener of the target host; returns its port.  ``target``
        says where that listener is when a connection comes (it may start later)."""
        if kind not in self.ports:
            factory = _ProxyFactory(self, kind)
            self.targets[kind] = target
            self.ports[kind] = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        return self.ports[kind].getHost().port

    # -- state ------------------------------------------------------------------

    def start(self) -> None:
        self._started_at = self.clock.seconds()
        self._follow_schedule()

    def stop(self) -> list:
        """Stop the timer, cut every connection; returns the ports' stop Deferreds."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for pipe in list(self.connections):
            pipe.cut()
        ports, self.ports = list(self.ports.values()), {}
        return [port.stopListening() for port in ports]

    def set(self, up: bool | None) -> None:
        """Up or down by hand; None gives the link back to its schedule."""
        self.forced = up
        self._apply(self._scheduled() if up is None else up)

    def set_toxics(self, **changes: object) -> None:
        """Change toxics while the lab runs (``reset_after=None`` ends that one); a
        change applies to what passes from now on."""
        toxics = self.spec.toxics
        for name, value in changes.items():
            if not hasattr(toxics, name):
                raise KeyError(name)
            setattr(toxics, name, value)

    def _elapsed(self) -> float:
        return 0.0 if self._started_at is None else self.clock.seconds() - self._started_at

    def _scheduled(self) -> bool:
        return self.spec.schedule.is_up(self._elapsed())

    def _follow_schedule(self) -> None:
        self._timer = None
        if self.forced is None:
            self._apply(self._scheduled())
        wait = self.spec.schedule.next_change(self._elapsed())
        if wait is not None:
            self._timer = self.clock.callLater(max(wait, 0.001), self._follow_schedule)

    def _apply(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        log.info(
            "{line}",
            line=f"link {self.name} ({self.spec.source} -> {self.spec.target}) {'up' if up else 'down'}",
        )
        if not up:
            for pipe in list(self.connections):
                pipe.cut()
                self.stats.cut += 1
        for watcher in list(self.watchers):
            try:
                watcher(self, up)
            except Exception:
                log.failure("a link watcher failed")

    def describe(self) -> dict:
        toxics = self.spec.toxics
        return {
            "name": self.name,
            "from": self.spec.source,
            "to": self.spec.target,
            "up": self.up,
            "forced": self.forced,
            "schedule": self.spec.schedule.describe(),
            "ports": {kind: port.getHost().port for kind, port in self.ports.items()},
            "toxics": {
                "latency": toxics.latency,
                "jitter": toxics.jitter,
                "bandwidth": toxics.bandwidth,
                "reset_after": toxics.reset_after,
                "hang": toxics.hang,
                "slow_close": toxics.slow_close,
            },
            "open": len(self.connections),
            "stats": vars(self.stats).copy(),
        }


class _ProxyFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, link: Link, kind: str) -> None:
        self.link, self.kind = link, kind

    def buildProtocol(self, addr) -> _Inbound:
        return _Inbound(self.link, self.kind)


class _Side(protocol.Protocol):
    """One end of a proxied connection; what it reads goes to the other end through
    the pipe's toxics."""

    def __init__(self, pipe: _Pipe, name: str) -> None:
        self.pipe, self.name = pipe, name

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # a proxy passes each chunk on as it comes
        pipe = self.pipe
        if pipe._done:  # the host hung up, or the link went down, while we connected
            self.transport.abortConnection()
        elif pipe.client is not None and pipe.client.transport is not None:
            pipe.client.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.pipe.carry(self, data)

    def connectionLost(self, reason=None) -> None:
        self.pipe.closed(self)


class _Inbound(_Side):
    """The side a host connected to: until the target answers, it reads nothing."""

    def __init__(self, link: Link, kind: str) -> None:
        super().__init__(_Pipe(link), "client")
        self.kind = kind

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        link = self.pipe.link
        target = link.targets[self.kind]()
        if not link.up or target is None:
            link.stats.refused += 1
            self.transport.abortConnection()  # a link that is down: reset, like nobody there
            return
        link.stats.connections += 1
        self.pipe.client = self
        link.connections.add(self.pipe)
        self.transport.pauseProducing()  # until the target has answered
        host, port = target
        link.reactor.connectTCP(host, port, _Outbound(self.pipe), timeout=10)

    def connectionLost(self, reason=None) -> None:
        if self.pipe.client is self:
            super().connectionLost(reason)


class _Outbound(protocol.ClientFactory):
    noisy = False

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def buildProtocol(self, addr) -> _Side:
        side = _Side(self.pipe, "server")
        self.pipe.server = side
        return side

    def clientConnectionFailed(self, connector, reason) -> None:
        self.pipe.cut()


class _Pipe:
    """One proxied connection, both ways: the toxics applied, order kept."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.client: _Side | None = None
        self.server: _Side | None = None
        self.passed = 0  # octets both ways (reset_after)
        self._queues: dict[str, deque[bytes]] = {"client": deque(), "server": deque()}
        self._queued = {"client": 0, "server": 0}
        self._ready_at = {"client": 0.0, "server": 0.0}  # when the last queued chunk is delivered
        self._closing: set[str] = set()
        self._done = False
        self._calls: deque[interfaces.IDelayedCall] = deque()  # pending, in about the order they fire

    def _later(self, delay: float, f: Callable[..., object], *args: object) -> None:
        while self._calls and not self._calls[0].active():  # fired: forgotten as we go
            self._calls.popleft()
        self._calls.append(self.link.timer.callLater(delay, f, *args))

    def _other(self, side: _Side) -> _Side | None:
        return self.server if side is self.client else self.client

    def carry(self, source: _Side, data: bytes) -> None:
        link, toxics = self.link, self.link.spec.toxics
        if self._done or toxics.hang:
            return  # hang: swallowed, nothing passes and nothing closes
        if toxics.reset_after is not None and self.passed >= toxics.reset_after:
            return  # the cut is on its way (behind the latency): nothing more passes
        if toxics.reset_after is not None and self.passed + len(data) >= toxics.reset_after:
            allowed = toxics.reset_after - self.passed
            if allowed > 0:
                self._deliver_later(source, data[:allowed])
            self.passed += max(allowed, 0)
            link.stats.cut += 1
            self._deliver_then(source, lambda: self.cut(flush=self._other(source)))
            return
        self.passed += len(data)
        self._deliver_later(source, data)

    def _deliver_later(self, source: _Side, data: bytes) -> None:
        toxics = self.link.spec.toxics
        if not (toxics.latency or toxics.jitter or toxics.bandwidth) and not self._queued[source.name]:
            self._write(source, data)
            return
        timer = self.link.timer
        now = timer.seconds()
        delay = toxics.latency + (
            self.link.rng.uniform(-toxics.jitter, toxics.jitter) if toxics.jitter else 0.0
        )
        when = max(now + max(delay, 0.0), self._ready_at[source.name])
        if toxics.bandwidth:
            when += len(data) / toxics.bandwidth
        self._ready_at[source.name] = when
        self._queues[source.name].append(data)
        self._queued[source.name] += len(data)
        if self._queued[source.name] > BUFFER_HIGH and source.transport is not None:
            source.transport.pauseProducing()
        self._later(when - now, self._release, source)

    def _release(self, source: _Side) -> None:
        queue = self._queues[source.name]
        if not queue or self._done:
            return
        data = queue.popleft()
        self._queued[source.name] -= len(data)
        self._write(source, data)
        if self._queued[source.name] <= BUFFER_HIGH // 2 and source.transport is not None:
            source.transport.resumeProducing()
        if not queue and source.name in self._closing:
            self._finish_close(source)

    def _write(self, source: _Side, data: bytes) -> None:
        other = self._other(source)
        if other is not None and other.transport is not None and data:
            other.transport.write(data)
            self.link.stats.octets += len(data)

    def _deliver_then(self, source: _Side, action: Callable[[], object]) -> None:
        if not self._queued[source.name]:
            action()
            return
        wait = max(self._ready_at[source.name] - self.link.timer.seconds(), 0.0) + 0.001
        self._later(wait, action)

    def closed(self, side: _Side) -> None:
        """One end closed: the other closes once what is queued has gone, after the slow close."""
        if self._done:
            self._forget()
            return
        self._closing.add(side.name)
        if not self._queued[side.name]:
            self._finish_close(side)

    def _finish_close(self, side: _Side) -> None:
        other = self._other(side)
        slow = self.link.spec.toxics.slow_close
        if other is None or other.transport is None:
            self._done = True
            self._forget()
            return
        self._done = True
        if slow:
            # the pipe stays the link's (a cut still resets it) until the other end is closed
            self._later(slow, other.transport.loseConnection)
            return
        other.transport.loseConnection()
        self._forget()

    def cut(self, flush: _Side | None = None) -> None:
        """Reset both ends now (a link going down); ``flush``: that end gets what was
        written to it first, then the reset (reset_after: exactly N octets pass)."""
        self._done = True
        for side in (self.client, self.server):
            if side is None or side.transport is None:
                continue
            sock = getattr(side.transport, "socket", None)
            if side is flush and sock is not None:
                # a close with no linger is a reset, once Twisted has written its buffer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                side.transport.loseConnection()
            else:
                side.transport.abortConnection()
        self._forget()

    def _forget(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()
        self.link.connections.discard(self)
