"""One attempt: a connection to a next hop, the job it carries, its outcome.

Where to connect (a route's endpoint, or a domain's MX hosts in order), how
to secure it (a peer's TLS policy and login, or opportunistic TLS for MX
hosts), the ``SenderJob`` that sends the messages, and one log line per
session.  Each message's result goes to ``Results`` the moment it is known.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from twisted.internet import defer, endpoints, interfaces, threads
from twisted.logger import Logger

from smtppeer.engine import Limits, reply
from smtppeer.engine.sender import TLS_OPPORTUNISTIC, ClientSecurity, MessageResult
from smtppeer.engine.sender import Envelope as SendEnvelope
from smtppeer.peer.hooks import ReceiverHooks, SenderJob
from smtppeer.peer.protocol import SessionSummary, SMTPPeerFactory
from smtppeer.policy.routing import MX
from smtppeer.store.spool import Spool

from . import downgrade
from .mx import DNSLookupError, MXResolver, endpoint_description
from .queue import Item, Marks, Queue, RunnerSettings
from .results import Results

log = Logger()

BODY_CHUNK = 64 * 1024

# How to secure a connection: ClientSecurity for the engine, and the TLS
# connection creator (None: any certificate) for the adapter.
Security = tuple[ClientSecurity | None, object | None]
MX_SECURITY: Security = (ClientSecurity(tls=TLS_OPPORTUNISTIC), None)  # what MTAs do on port 25


class Attempts:
    def __init__(
        self,
        hostname: str,
        queue: Queue,
        results: Results,
        spool: Spool,
        settings: RunnerSettings,
        reactor: interfaces.IReactorTCP,
        *,
        resolver: MXResolver | None,
        limits: Limits | None,
        security: Callable[[str], Security],
        track: Callable[[defer.Deferred], None],
    ) -> None:
        """``security(endpoint)`` says how to secure a connection to a configured
        endpoint; ``track(d)`` counts ``d`` as work under way (shutdown waits for it)."""
        self.hostname = hostname
        self.queue = queue
        self.results = results
        self.spool = spool
        self.settings = settings
        self.reactor = reactor
        self.resolver = resolver
        self.limits = limits
        self.security = security
        self.track = track

    async def deliver(self, target: str, domain: str, items: list[Item], marks: Marks) -> None:
        """Send ``items`` to ``target`` (an endpoint, or MX for ``domain``), trying each
        next hop in turn until one takes the connection."""
        try:
            descriptions = await self._endpoints(target, domain)
        except DNSLookupError as e:
            code = 550 if e.status.startswith("5") else 451
            await self.results.record_all(items, reply(code, e.status, str(e)), marks)
            return
        last_error = "no next hop"
        security = MX_SECURITY if target == MX else self.security(target)
        for description, endpoint in descriptions:
            job, pending = self.job(items, marks)
            factory = self.factory(ReceiverHooks(), job, security)
            try:
                await self.session(description, endpoint, factory, pending)
            except Exception as e:  # noqa: BLE001 - any connection failure: try the next host
                last_error = f"{description}: {e.__class__.__name__}: {e}"
                continue
            return
        await self.results.record_all(items, reply(451, "4.4.1", f"Cannot connect: {last_error}"), marks)

    async def _endpoints(self, target: str, domain: str) -> list[tuple[str, object]]:
        """``(description, endpoint)`` to try in order: the route's endpoint, or the MX hosts."""
        if target != MX:
            return [(target, endpoints.clientFromString(self.reactor, target))]
        if self.resolver is None:
            raise DNSLookupError("no DNS resolver configured for MX routes", "4.4.3")
        hops = await self.resolver.next_hops(domain)
        timeout = self.settings.connect_timeout
        # HostnameEndpoint: a "tcp:host=NAME" string would resolve IPv4 only
        connect = endpoints.HostnameEndpoint
        return [
            (endpoint_description(h), connect(self.reactor, h.host, h.port, timeout=timeout)) for h in hops
        ]

    def factory(self, hooks: ReceiverHooks, job: SenderJob, security: Security) -> SMTPPeerFactory:
        client_security, client_tls = security
        return SMTPPeerFactory(
            self.hostname,
            hooks,
            job=job,
            limits=self.limits,
            client_security=client_security,
            client_tls=client_tls,
        )

    def job(self, items: list[Item], marks: Marks) -> tuple[SenderJob, list[defer.Deferred]]:
        """A job sending ``items``; each result is recorded as it comes, and gives its
        recipients back (``marks``) once written.  ``pending``: those recordings."""
        pending: list[defer.Deferred] = []

        def on_result(result: MessageResult) -> None:
            envelope, rcpts = result.envelope.tag
            d = defer.ensureDeferred(self.results.record(envelope, rcpts, result.results))
            d.addErrback(lambda f: log.failure("could not record results for {id}", f, id=envelope.id))
            d.addBoth(lambda _: marks.release(envelope, rcpts))
            pending.append(d)
            self.track(d)

        envelopes = [
            SendEnvelope(
                envelope.reverse_path,
                [r.address for r in rcpts],
                _LazyBody(self.spool.body_path(envelope.id)),
                params=dict(envelope.params),
                size=envelope.size or None,
                tag=(envelope, rcpts),
                eight_bit=_eight_bit(envelope),
            )
            for envelope, rcpts in items
        ]
        return SenderJob(envelopes, on_result=on_result, convert=self.convert), pending

    def convert(self, envelope: SendEnvelope) -> defer.Deferred:
        """A 7-bit copy of a spooled 8-bit message for a server without 8BITMIME
        (RFC 6152 §3), made in a thread: the whole message is read and rewritten
        (``downgrade.to_7bit``).  What cannot be converted is refused with ``554
        5.6.3``, which returns it to its sender with that reason; a spool that
        cannot be read defers it.  The spooled message itself is not changed: a
        next hop with 8BITMIME still gets it as it came."""
        spooled, _ = envelope.tag
        path = self.spool.body_path(spooled.id)

        def work() -> bytes:
            downgrade.check_size(os.path.getsize(path))  # a message too large is not read at all
            with open(path, "rb") as f:
                return downgrade.to_7bit(f.read())

        def converted(data: bytes) -> SendEnvelope:
            params = {k: v for k, v in envelope.params.items() if k != "BODY"}
            return dataclasses.replace(envelope, body=data, size=len(data), params=params, eight_bit=False)

        def refused(failure):
            if failure.check(downgrade.Unconvertible):
                why = f"the next hop does not accept 8-bit mail (no 8BITMIME), and {failure.value}"
                log.info(
                    "{line}",
                    line=f"{spooled.id}: cannot convert to 7 bits: {failure.value}",
                    queue_id=spooled.id,
                )
                return reply(554, "5.6.3", f"Conversion required but not supported: {why}")
            if failure.check(OSError):
                return reply(451, "4.3.0", f"Cannot read the message: {failure.value}")
            return failure

        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work)
        return d.addCallbacks(converted, refused)

    async def send(
        self, description: str, endpoint: str, job: SenderJob, pending, items: list[Item], marks: Marks
    ) -> SessionSummary | None:
        """Send a ready job over a new connection to ``endpoint``; if it cannot be
        opened, every message of it is deferred (and None is returned)."""
        factory = self.factory(ReceiverHooks(), job, self.security(endpoint))
        connect = endpoints.clientFromString(self.reactor, endpoint)
        try:
            return await self.session(description, connect, factory, pending)
        except Exception as e:  # noqa: BLE001 - the node is down: its mail stays where it was
            failed = reply(451, "4.4.1", f"Cannot connect to {description}: {e}")
            await self.results.record_all(items, failed, marks)
            return None

    async def session(self, description: str, endpoint, factory, pending) -> SessionSummary:
        """Connect (a failure raises), wait for the session to end and its results to be
        recorded, and log one line about it."""
        peer = await endpoint.connect(factory)
        summary = await peer.done
        await defer.DeferredList(pending, consumeErrors=True)
        log.info(
            "{line}",
            line=f"session with {description}: {sum(bool(r.delivered) for r in summary.sent)} of "
            f"{len(summary.sent)} messages delivered, {'clean' if summary.clean else summary.error}",
        )
        return summary


def _eight_bit(envelope) -> bool:
    """Whether a spooled message has octets above 127: as recorded when it was
    spooled, or, for an entry from before that was recorded, as its sender declared."""
    if envelope.eight_bit is not None:
        return envelope.eight_bit
    return (envelope.params.get("BODY") or "").upper() == "8BITMIME"


class _LazyBody:
    """Opens the spooled body on first read and closes it at its end (bounded fds)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = None

    def read(self, n: int = BODY_CHUNK) -> bytes:
        if self._f is None:
            self._f = open(self.path, "rb")  # noqa: SIM115
        data = self._f.read(n)
        if not data:
            self.close()
        return data

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
