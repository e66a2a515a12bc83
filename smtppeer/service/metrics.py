"""Prometheus metrics: what a service (or each host of a lab) does with mail.

The counters come from the service's ``Activity`` records, the same values
the lab's event stream is made of, so no metric is a second account of
what happened: a message accepted is a ``received`` record, a recipient
delivered a ``delivered`` one with its latency.  Queue sizes are not
counted as they change but read from the queue runner when a scraper asks,
so they cannot drift.  Every series has a ``host`` label: a lab serves all
its hosts from one registry, and one exposition cannot repeat a family.

``prometheus_client`` writes the format (and picks it by the scraper's
``Accept`` header, as its own WSGI app does); ``prometheus_client.twisted``
is not used, because importing it installs the default reactor and it
collects on a thread for no gain here.

``HTTPService`` is the small web server behind ``metrics = ENDPOINT`` and
the lab's HTTP API: it listens before privileges are dropped, and its stop
closes every connection it has (a scraper's keep-alive, a browser's event
stream), so a stopped service leaves nothing open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.application import service
from twisted.internet import defer, interfaces
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web import resource, server

from smtppeer.activity import Activity, Kind, Record
from smtppeer.relay.scheduler import QueueRunner
from smtppeer.store.spool import HELD, PENDING

from .startup import fail

log = Logger()

# Seconds from arrival to delivery: a hop on loopback is milliseconds, a message
# held for a dial-up host or retried waits minutes to days.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
QUEUE_STATES = ("pending", "held", "frozen")
OUTCOMES = {Kind.DELIVERED: "delivered", Kind.DEFERRED: "deferred", Kind.FAILED: "failed"}


class Metrics:
    """One registry for one or more hosts (each watched with ``watch``)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process:  # the usual process_*, python_* series, as the library's default registry has
            for collector in (ProcessCollector, PlatformCollector, GCCollector):
                collector(registry=self.registry)
        r = self.registry
        self.received = Counter(
            "smtppeer_received", "Messages accepted (250 after DATA)", ["host"], registry=r
        )
        self.refused = Counter(
            "smtppeer_refused",
            "Recipients (stage=rcpt) or messages (stage=data) refused",
            ["host", "stage"],
            registry=r,
        )
        self.deliveries = Counter(
            "smtppeer_deliveries",
            "Delivery results per recipient to its next hop: delivered, deferred (to retry) or failed",
            ["host", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "smtppeer_delivery_latency_seconds",
            "From a message's arrival to a recipient's delivery to its next hop",
            ["host"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bounces = Counter(
            "smtppeer_bounces", "Delivery status notifications queued", ["host"], registry=r
        )
        self.polls = Counter(
            "smtppeer_polls",
            "Poll cycles of a peer, by result (ok, failed)",
            ["host", "peer", "result"],
            registry=r,
        )
        self.releases = Counter(
            "smtppeer_releases",
            "Hold queues given to a peer that asked (verb: TURN, ATRN, ETRN)",
            ["host", "peer", "verb"],
            registry=r,
        )
        self.released_messages = Counter(
            "smtppeer_released_messages",
            "Messages in the hold queues given to peers",
            ["host", "peer"],
            registry=r,
        )
        self.runners: dict[str, QueueRunner] = {}
        self.registry.register(_QueueCollector(self.runners))

    def watch(self, host: str, activity: Activity, runner: QueueRunner | None = None) -> Callable[[], None]:
        """Count ``host``'s activity (and read its queue at each scrape); returns the
        way to stop.  The host's series are made at once, at zero, so a scraper sees
        them before the first message rather than a series appearing from nowhere."""
        self.received.labels(host)
        for stage in ("rcpt", "data"):
            self.refused.labels(host, stage)
        for outcome in OUTCOMES.values():
            self.deliveries.labels(host, outcome)
        self.latency.labels(host)
        self.bounces.labels(host)
        if runner is not None:
            self.runners[host] = runner
        stop = activity.watch(lambda record: self.record(host, record))

        def unwatch() -> None:
            stop()
            self.runners.pop(host, None)

        return unwatch

    def record(self, host: str, record: Record) -> None:
        kind, fields = record.kind, record.fields
        if kind == Kind.RECEIVED:
            self.received.labels(host).inc()
        elif kind == Kind.REFUSED:
            self.refused.labels(host, str(fields.get("stage", "rcpt"))).inc()
        elif kind in OUTCOMES:
            self.deliveries.labels(host, OUTCOMES[kind]).inc()
            latency = fields.get("latency")
            if kind == Kind.DELIVERED and isinstance(latency, int | float):
                self.latency.labels(host).observe(max(latency, 0.0))
        elif kind == Kind.BOUNCED:
            self.bounces.labels(host).inc()
        elif kind == Kind.POLLED:
            self.polls.labels(host, str(fields.get("peer")), "ok" if fields.get("ok") else "failed").inc()
        elif kind == Kind.RELEASED:
            peer = str(fields.get("peer"))
            self.releases.labels(host, peer, str(fields.get("verb"))).inc()
            self.released_messages.labels(host, peer).inc(int(fields.get("messages") or 0))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper's ``Accept`` header asks for (text
        0.0.4 without one), as ``prometheus_client``'s own WSGI app chooses it."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _QueueCollector:
    """``smtppeer_queue_messages{host, state}``, read from each runner at scrape time:
    a message counts once under ``frozen`` (an administrator's hold), else under
    ``pending`` if a recipient waits to be sent and ``held`` if one waits for its
    peer (both, when its recipients are in both states)."""

    def __init__(self, runners: dict[str, QueueRunner]) -> None:
        self.runners = runners

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "smtppeer_queue_messages", "Messages in the spool by state", labels=["host", "state"]
        )
        for host, runner in sorted(self.runners.items()):
            counts = dict.fromkeys(QUEUE_STATES, 0)
            for envelope in list(runner.entries.values()):
                if envelope.frozen:
                    counts["frozen"] += 1
                    continue
                states = {r.state for r in envelope.recipients}
                counts["pending"] += PENDING in states
                counts["held"] += HELD in states
            for state, count in counts.items():
                family.add_metric([host, state], count)
        yield family

    def describe(self) -> list[Metric]:
        return []  # collected fresh each time: no fixed description to check against


class MetricsPage(resource.Resource):
    """``/metrics``, in the reactor thread: collecting reads memory only."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 -- Twisted's name
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        body, content_type = self.metrics.exposition(accept)
        request.setHeader(b"content-type", content_type.encode())
        return body


class _Root(resource.Resource):
    """``/metrics`` and nothing else: any other path is a plain 404."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.page = MetricsPage(metrics)

    def render(self, request: server.Request) -> bytes:
        if request.postpath in ([b"metrics"], [b"metrics", b""]) and request.method in (b"GET", b"HEAD"):
            return self.page.render_GET(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found: try /metrics\n"


class QuietSite(server.Site):
    """No access log: a scraper every few seconds, an API polled by scripts."""

    noisy = False

    def log(self, request: server.Request) -> None:
        pass


class HTTPService(service.Service):
    """A Twisted Web site on one server endpoint, that closes its connections at stop.

    ``port`` is the listening port once started (``url`` says where, for a TCP
    endpoint).  ``closing()`` runs at stop before the connections are closed:
    a subclass ends its open responses there.
    """

    GRACE = 2.0  # seconds a connection has to take what it was sent, then it is reset

    def __init__(self, endpoint: str, root: resource.Resource, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415 -- not at import: see the module's doc
        self.endpoint = endpoint
        self.reactor = reactor
        self.site = QuietSite(root)
        self.factory = WrappingFactory(self.site)  # its ``protocols``: every open connection
        self.port: interfaces.IListeningPort | None = None

    def privilegedStartService(self) -> None:  # noqa: N802 -- Twisted's name
        """Listen before twistd drops privileges (a port below 1024 works)."""
        super().privilegedStartService()
        if self.port is not None:
            return
        outcome: list = []
        serverFromString(self.reactor, self.endpoint).listen(self.factory).addBoth(outcome.append)
        result = outcome[0] if outcome else None  # stream endpoints listen at once
        if isinstance(result, Failure):
            cause = result.value.socketError if result.check(CannotListenError) else result.value
            fail(f"cannot listen on {self.endpoint}: {getattr(cause, 'strerror', None) or cause}")
        self.port = result

    def startService(self) -> None:  # noqa: N802 -- Twisted's name
        self.privilegedStartService()  # started without twistd (a lab, a test)
        super().startService()

    @property
    def url(self) -> str | None:
        """``http://HOST:PORT`` for a TCP port (loopback for a wildcard address)."""
        if self.port is None:
            return None
        address = self.port.getHost()
        if isinstance(address, IPv4Address):
            host = "127.0.0.1" if address.host == "0.0.0.0" else address.host
        elif isinstance(address, IPv6Address):
            host = "[::1]" if address.host in ("::", "::0") else f"[{address.host}]"
        else:
            return None
        return f"http://{host}:{address.port}"

    def closing(self) -> None:
        """End open responses (a subclass's streams and waits) before the connections go."""

    @defer.inlineCallbacks
    def stopService(self) -> defer.Deferred:  # noqa: N802 -- Twisted's name
        """Stop listening, end open responses, then close every connection: each is
        given ``GRACE`` seconds to take what was written to it, then reset."""
        yield defer.maybeDeferred(super().stopService)
        port, self.port = self.port, None
        if port is not None:
            yield port.stopListening()  # only stops accepting: open connections stay
        self.closing()
        lost = [_closed(protocol) for protocol in list(self.factory.protocols)]
        for protocol in list(self.factory.protocols):
            protocol.transport.loseConnection()
        if lost:
            reset = self.reactor.callLater(self.GRACE, self._reset_all)
            yield defer.DeferredList(lost)
            if reset.active():
                reset.cancel()

    def _reset_all(self) -> None:
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()


def _closed(protocol: Any) -> defer.Deferred:
    """Fires when the connection of ``protocol`` (a ProtocolWrapper) is gone."""
    d: defer.Deferred = defer.Deferred()
    lost = protocol.connectionLost

    def connection_lost(reason: Failure) -> None:
        try:
            lost(reason)
        finally:
            if not d.called:
                d.callback(None)

    protocol.connectionLost = connection_lost
    return d


class MetricsService(HTTPService):
    """``metrics = ENDPOINT``: the service's metrics at ``/metrics``."""

    def __init__(self, endpoint: str, metrics: Metrics, reactor: Any = None) -> None:
        super().__init__(endpoint, _Root(metrics), reactor)
        self.metrics = metrics

    def startService(self) -> None:  # noqa: N802 -- Twisted's name
        super().startService()
        where = f"{self.url}/metrics" if self.url else f"/metrics on {self.endpoint}"
        log.info("{line}", line=f"metrics at {where}")
