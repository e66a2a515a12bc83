"""The queue runner: delivers spooled mail to its next hops, retries, gives up, bounces.

Due recipients are grouped by next hop (an endpoint, or a domain whose MX
records are looked up), and each group goes over one connection as a
``SenderJob`` with several messages, pipelined where the server offers it.
Connections are bounded in total and per destination.

Every per-recipient result is written back to the spool (durably) as soon
as it arrives, before anything else is done with it: a crash afterwards
never sends to a recipient that already has the message.  A 2xx delivers,
a 5xx fails (and bounces), a 4xx or a connection failure defers with
exponential backoff and jitter, and a message older than the queue lifetime
fails what is left of it with ``4.4.7``.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from twisted.application import service
from twisted.internet import defer, endpoints, interfaces
from twisted.logger import Logger

from smtppeer.engine import Limits, Reply, reply
from smtppeer.engine.address import AddressError, parse_path
from smtppeer.engine.sender import TLS_OPPORTUNISTIC, ClientSecurity, MessageResult
from smtppeer.engine.sender import Envelope as SendEnvelope
from smtppeer.peer.hooks import ReceiverHooks, SenderJob
from smtppeer.peer.protocol import SessionSummary, SMTPPeerFactory
from smtppeer.peer.tls import endpoint_host
from smtppeer.policy.routing import HOLD, LOCAL, MX, RELAY, Router
from smtppeer.store.ids import new_queue_id
from smtppeer.store.spool import DELIVERED, FAILED, HELD, PENDING, Envelope, Recipient, Spool

from . import bounce
from .mx import DNSLookupError, MXResolver, endpoint_description

log = Logger()

BODY_CHUNK = 64 * 1024


@dataclass
class RunnerSettings:
    interval: float = 60.0  # scan at least this often
    lifetime: float = 5 * 86400.0  # RFC 5321 §4.5.4.1: give up after 4-5 days
    backoff_base: float = 60.0
    backoff_max: float = 3600.0
    jitter: float = 0.2  # ± this fraction of each delay
    max_connections: int = 20
    per_destination: int = 4
    messages_per_connection: int = 100
    connect_timeout: float = 30.0


@dataclass
class _Batch:
    """One connection's worth of work: messages for one next hop."""

    key: tuple[str, str]
    items: list[tuple[Envelope, list[Recipient]]] = field(default_factory=list)


@dataclass
class PollOutcome:
    """One poll cycle, for the log line and for ``smtppeer poll``."""

    peer: str
    sent: int = 0
    received: int = 0
    turned: bool = False
    turn_reply: str | None = None
    duration: float = 0.0
    error: str | None = None
    method: str = "turn"
    requests: list[str] = field(default_factory=list)  # "ETRN node: reply" for etrn polls

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        if self.method == "etrn":
            turn = "; ".join(self.requests) or "no ETRN answered"
        else:
            turn = "turned" if self.turned else f"not turned ({self.turn_reply or 'no reply'})"
        outcome = "ok" if self.ok else f"failed: {self.error}"
        return (
            f"poll {self.peer}: sent {self.sent}, received {self.received}, {turn}, "
            f"{self.duration:.2f}s, {outcome}"
        )


# How to secure a connection: ClientSecurity for the engine, and the TLS
# connection creator (None: any certificate) for the adapter.
Security = tuple[ClientSecurity | None, object | None]
MX_SECURITY: Security = (ClientSecurity(tls=TLS_OPPORTUNISTIC), None)  # what MTAs do on port 25


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


class QueueRunner(service.Service):
    def __init__(
        self,
        hostname: str,
        spool: Spool,
        router: Router,
        *,
        deliver_locally: Callable[[list[str], bytes, str], defer.Deferred] | None = None,
        resolver: MXResolver | None = None,
        settings: RunnerSettings | None = None,
        limits: Limits | None = None,
        reactor: interfaces.IReactorTime | None = None,
        clock: interfaces.IReactorTime | None = None,
        rng: random.Random | None = None,
        security: Callable[[str], Security] | None = None,
    ) -> None:
        """``security(endpoint)`` says how to secure a connection to a configured
        endpoint (a peer's TLS policy and credentials); MX hosts get opportunistic TLS."""
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.hostname = hostname
        self.spool = spool
        self.router = router
        self.deliver_locally = deliver_locally
        self.resolver = resolver
        self.settings = settings or RunnerSettings()
        self.limits = limits
        self.reactor = reactor
        self.clock = clock or reactor
        self.rng = rng or random.Random()
        self.security = security or (lambda endpoint: (None, None))
        self.entries: dict[str, Envelope] = {}
        self._inflight: set[tuple[str, str]] = set()
        self._connections: dict[str, int] = defaultdict(int)
        self._timer = None
        self._running: set[defer.Deferred] = set()
        self._ready: dict[str, None] = {}  # envelopes to look at on the next run, in order
        self._waiting: list[tuple[float, int, str]] = []  # (retry time, tie-break, id), a heap
        self._sequence = itertools.count()
        self._next_sweep = 0.0

    # -- life ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.spool.recover()
        for envelope in self.spool.envelopes():
            self.entries[envelope.id] = envelope
            self._ready[envelope.id] = None
            if envelope.unreported():  # a crash came between a failure and its bounce
                d = defer.ensureDeferred(self._report_failures(envelope))
                d.addErrback(lambda f: log.failure("could not bounce after restart", f))
                self._track(d)
        log.info("queue runner: {n} messages in the spool", n=len(self.entries))
        self.kick()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        # Deliveries under way finish (or fail) on their own; their results are durable.
        return self.idle()

    def _track(self, d: defer.Deferred) -> None:
        """Count ``d`` as work under way until it fires (``idle`` and shutdown wait for it)."""
        self._running.add(d)

        def untrack(result):
            self._running.discard(d)
            return result

        d.addBoth(untrack)

    def idle(self) -> defer.Deferred:
        """Fires when the deliveries under way now have finished (for tests and shutdown)."""
        return defer.DeferredList(list(self._running), consumeErrors=True)

    def add(self, envelope: Envelope) -> None:
        """A new message was spooled: try it now."""
        self.entries[envelope.id] = envelope
        self._ready[envelope.id] = None
        self.kick()

    def kick(self, delay: float = 0.0) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.clock.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, self.run)

    # -- scheduling ----------------------------------------------------------------

    def run(self) -> None:
        """Start deliveries for what is due, within the connection limits.

        Only envelopes that are ready (new, or whose retry time has come) are
        looked at, so a large queue costs nothing per run; held mail is checked
        for expiry once per ``interval``.
        """
        self._timer = None
        now = self.clock.seconds()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, queue_id = heapq.heappop(self._waiting)
            self._ready[queue_id] = None
        if now >= self._next_sweep:
            self._next_sweep = now + self.settings.interval
            self._expire_held(now)
        batches: dict[tuple[str, str], _Batch] = {}
        for queue_id in list(self._ready):
            del self._ready[queue_id]
            envelope = self.entries.get(queue_id)
            if envelope is None or envelope.frozen:
                continue
            later = None
            for rcpt in envelope.recipients:
                if rcpt.state != PENDING or (envelope.id, rcpt.address) in self._inflight:
                    continue
                if rcpt.next_attempt > now:
                    later = rcpt.next_attempt if later is None else min(later, rcpt.next_attempt)
                    continue
                key = (rcpt.route.get("relay", MX), rcpt.route.get("domain", "")) if rcpt.route else (MX, "")
                if key[0] != MX:
                    key = (key[0], "")  # one endpoint: one destination, whatever the domains
                batch = batches.setdefault(key, _Batch(key))
                if batch.items and batch.items[-1][0] is envelope:
                    batch.items[-1][1].append(rcpt)
                else:
                    batch.items.append((envelope, [rcpt]))
            if later is not None:
                self._wake_at(later, queue_id)
        for batch in batches.values():
            for envelope, _ in self._start_batches(batch):
                self._ready[envelope.id] = None  # no connection free: when one finishes
        delay = self.settings.interval
        if self._waiting:
            delay = min(delay, self._waiting[0][0] - now)
        self.kick(max(0.0, delay))

    def _wake_at(self, when: float, queue_id: str) -> None:
        heapq.heappush(self._waiting, (when, next(self._sequence), queue_id))

    def _expire_held(self, now: float) -> None:
        for envelope in list(self.entries.values()):
            if now - envelope.arrival < self.settings.lifetime:
                continue
            expired = [
                r
                for r in envelope.recipients
                if r.state == HELD and (envelope.id, r.address) not in self._inflight
            ]
            if expired:
                self._expire_holds(envelope, expired)

    def _start_batches(self, batch: _Batch) -> list[tuple[Envelope, list[Recipient]]]:
        """Open connections for ``batch`` while limits allow; return what must wait."""
        dest = batch.key[0] + "|" + batch.key[1]
        per = self.settings.messages_per_connection
        chunks = [batch.items[i : i + per] for i in range(0, len(batch.items), per)]
        for n, items in enumerate(chunks):
            if self._connections[dest] >= self.settings.per_destination or (
                sum(self._connections.values()) >= self.settings.max_connections
            ):
                return [item for chunk in chunks[n:] for item in chunk]
            self._mark(items)
            self._connections[dest] += 1
            d = defer.ensureDeferred(self._deliver(batch.key, items))
            self._track(d)

            def done(result, dest=dest, items=items):
                self._connections[dest] -= 1
                for envelope, rcpts in items:
                    self._release_marks(envelope, rcpts)
                    self._ready[envelope.id] = None  # anything left of it is looked at again
                self.kick()
                return result

            d.addBoth(done)
            d.addErrback(lambda f: log.failure("delivery batch failed", f))
        return []

    # -- one connection ------------------------------------------------------------

    async def _deliver(self, key: tuple[str, str], items: list[tuple[Envelope, list[Recipient]]]) -> None:
        target, domain = key
        try:
            descriptions = await self._endpoints(target, domain)
        except DNSLookupError as e:
            code = 550 if e.status.startswith("5") else 451
            await self._record_all(items, reply(code, e.status, str(e)))
            return
        last_error = "no next hop"
        security = MX_SECURITY if target == MX else self.security(target)
        for description, endpoint in descriptions:
            job, pending = self._job(items)
            factory = self._factory(ReceiverHooks(), job, security)
            try:
                await self._session(description, endpoint, factory, pending)
            except Exception as e:  # noqa: BLE001 - any connection failure: try the next host
                last_error = f"{description}: {e.__class__.__name__}: {e}"
                continue
            return
        await self._record_all(items, reply(451, "4.4.1", f"Cannot connect: {last_error}"))

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

    def _factory(self, hooks: ReceiverHooks, job: SenderJob, security: Security) -> SMTPPeerFactory:
        client_security, client_tls = security
        return SMTPPeerFactory(
            self.hostname,
            hooks,
            job=job,
            limits=self.limits,
            client_security=client_security,
            client_tls=client_tls,
        )

    def _mark(self, items: list[tuple[Envelope, list[Recipient]]]) -> None:
        for envelope, rcpts in items:
            for rcpt in rcpts:
                self._inflight.add((envelope.id, rcpt.address))

    def _release_marks(self, envelope: Envelope, rcpts: list[Recipient]) -> None:
        for rcpt in rcpts:
            self._inflight.discard((envelope.id, rcpt.address))

    def _job(self, items: list[tuple[Envelope, list[Recipient]]]) -> tuple[SenderJob, list[defer.Deferred]]:
        pending: list[defer.Deferred] = []

        def on_result(result: MessageResult) -> None:
            envelope, rcpts = result.envelope.tag
            d = defer.ensureDeferred(self._record(envelope, rcpts, result.results))
            d.addErrback(lambda f: log.failure("could not record results for {id}", f, id=envelope.id))
            d.addBoth(lambda _: self._release_marks(envelope, rcpts))
            pending.append(d)
            self._track(d)

        envelopes = [
            SendEnvelope(
                envelope.reverse_path,
                [r.address for r in rcpts],
                _LazyBody(self.spool.body_path(envelope.id)),
                params=dict(envelope.params),
                size=envelope.size or None,
                tag=(envelope, rcpts),
            )
            for envelope, rcpts in items
        ]
        return SenderJob(envelopes, on_result=on_result), pending

    # -- administration (smtppeer queue ...) --------------------------------------

    def rescan(self) -> int:
        """Pick up entries written to the spool by someone else (``smtppeer send``)."""
        added = 0
        for queue_id in self.spool.ids():
            if queue_id not in self.entries:
                try:
                    self.add(self.spool.load(queue_id))
                except (FileNotFoundError, ValueError, TypeError, KeyError):
                    continue
                added += 1
        return added

    def flush(self, route: str | None = None) -> int:
        """Retry now every deferred recipient (only those routed to ``route`` if given)."""
        count = 0
        for envelope in self.entries.values():
            for rcpt in envelope.recipients:
                if rcpt.state == PENDING and (route is None or rcpt.route.get("relay") == route):
                    rcpt.next_attempt = 0.0
                    self._ready[envelope.id] = None
                    count += 1
        self.kick()
        return count

    def busy(self, queue_id: str) -> bool:
        return any(q == queue_id for q, _ in self._inflight)

    async def set_frozen(self, queue_id: str, frozen: bool) -> None:
        """Hold a message back from delivery (``queue hold``), or let it go (``queue release``)."""
        envelope = self.entries[queue_id]
        envelope.frozen = frozen
        await self.spool.update(envelope)
        if not frozen:
            self._ready[queue_id] = None
            self.kick()

    async def delete(self, queue_id: str) -> None:
        """Drop a message for good (``queue delete``); not while it is being sent."""
        if self.busy(queue_id):
            raise ValueError(f"{queue_id} is being sent right now; try again in a moment")
        envelope = self.entries.pop(queue_id)
        for rcpt in envelope.recipients:
            if rcpt.state not in (DELIVERED, FAILED):
                rcpt.state, rcpt.notified, rcpt.last_reply = FAILED, True, "deleted by the administrator"
        await self.spool.update(envelope)
        log.info("{line}", line=f"{queue_id}: deleted by the administrator")

    # -- turning around: releasing a hold queue, polling a peer ---------------------

    def held(
        self, peer_name: str, domains: list[str] | None = None, exact: bool = False
    ) -> list[tuple[Envelope, list[Recipient]]]:
        """What is held for ``peer_name`` (only for ``domains`` and, unless ``exact``,
        their subdomains, if given) and not being sent right now by another session."""
        items = []
        for envelope in self.entries.values():
            if envelope.frozen:
                continue
            held = [
                r
                for r in envelope.held_for(peer_name)
                if (envelope.id, r.address) not in self._inflight
                and (domains is None or _in_domains(r.address, domains, exact))
            ]
            if held:
                items.append((envelope, held))
        return items

    def release(self, peer_name: str, domains: list[str] | None = None) -> SenderJob:
        """The job that sends ``peer_name`` its held mail over a turned connection.

        Recipients already being sent (another session of the same peer) are
        left out, so two sessions never send the same message.  A failure to
        deliver keeps the mail held; a permanent refusal bounces it.
        """
        items = self.held(peer_name, domains)
        self._mark(items)
        job, _ = self._job(items)
        log.info("{line}", line=f"releasing {len(items)} held messages to {peer_name}")
        return job

    def start_held(
        self, peer_name: str, endpoint: str, domains: list[str] | None = None, exact: bool = False
    ) -> int:
        """ETRN: send what is held for the peer over a new connection to ``endpoint``.

        Returns the number of messages started; the delivery runs on its own
        and, like a turned session, leaves undelivered mail held.
        """
        items = self.held(peer_name, domains, exact)
        if not items:
            return 0
        self._mark(items)
        job, pending = self._job(items)
        log.info("{line}", line=f"ETRN: sending {len(items)} held messages to {peer_name} at {endpoint}")
        d = defer.ensureDeferred(self._send_job(peer_name, endpoint, job, pending, items))
        d.addErrback(lambda f: log.failure("ETRN delivery failed", f))
        self._track(d)
        return len(items)

    async def _send_job(self, peer_name, endpoint, job, pending, items) -> None:
        factory = self._factory(ReceiverHooks(), job, self.security(endpoint))
        connect = endpoints.clientFromString(self.reactor, endpoint)
        try:
            await self._session(f"{peer_name} (ETRN)", connect, factory, pending)
        except Exception as e:  # noqa: BLE001 - the node is down: its mail stays held
            await self._record_all(items, reply(451, "4.4.1", f"Cannot connect to {peer_name}: {e}"))

    async def _session(self, description: str, endpoint, factory, pending) -> SessionSummary:
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

    async def poll(
        self,
        peer_name: str,
        endpoint: str,
        hooks: ReceiverHooks,
        command: str = "TURN",
        *,
        requests: list[str] | None = None,
        send_queued: bool = True,
        method: str = "turn",
    ) -> PollOutcome:
        """One poll cycle: connect, send what is queued for the peer, then ``command``
        (``TURN``/``ATRN``: receive what the peer held) after any ``requests``
        (``ETRN node``), and QUIT."""
        started = self.clock.seconds()
        items = []
        for envelope in self.entries.values() if send_queued else ():
            if envelope.frozen:
                continue
            rcpts = [
                r
                for r in envelope.recipients
                if r.state == PENDING
                and r.route.get("relay") in (endpoint, f"peer:{peer_name}")
                and (envelope.id, r.address) not in self._inflight
            ]
            if rcpts:
                items.append((envelope, rcpts))
        self._mark(items)
        job, pending = self._job(items)
        job.finish = command
        job.requests = list(requests or [])
        client_security, client_tls = self.security(endpoint)
        if client_security is not None and client_security.username is not None and method != "etrn":
            # Turning is what the login is for: without AUTH the peer would refuse anyway.
            client_security = dataclasses.replace(client_security, require_auth=True)
        factory = self._factory(hooks, job, (client_security, client_tls))
        outcome = PollOutcome(peer_name, method=method)
        try:
            connect = endpoints.clientFromString(self.reactor, endpoint)
            summary = await self._session(f"{peer_name} (poll)", connect, factory, pending)
        except Exception as e:  # noqa: BLE001 - the peer is down: what we had stays queued
            await self._record_all(items, reply(451, "4.4.1", f"Cannot connect to {peer_name}: {e}"))
            outcome.error = f"cannot connect: {e}"
        else:
            outcome.sent = sum(len(r.delivered) for r in summary.sent)
            outcome.received = summary.received
            outcome.turned = job.turned
            outcome.turn_reply = str(job.turn_reply) if job.turn_reply else None
            outcome.requests = [f"{command}: {response}" for command, response in job.request_results]
            outcome.error = None if summary.clean else summary.error
            if outcome.error is None:
                outcome.error = _refusal(command, job)
        outcome.duration = self.clock.seconds() - started
        log.info("{line}", line=outcome.line(), peer=peer_name)
        return outcome

    def _expire_holds(self, envelope: Envelope, rcpts: list[Recipient]) -> None:
        for rcpt in rcpts:
            rcpt.state = FAILED
            rcpt.last_reply = str(reply(451, "4.4.7", "Held too long: the peer did not call in"))
        d = defer.ensureDeferred(self._after_expiry(envelope))
        d.addErrback(lambda f: log.failure("could not expire held mail", f))
        self._track(d)

    async def _after_expiry(self, envelope: Envelope) -> None:
        await self.spool.update(envelope)
        await self._report_failures(envelope)

    # -- results -------------------------------------------------------------------

    async def _record_all(self, items, response: Reply) -> None:
        """The same result for everything of a session that never got going; the
        recipients are free for the next attempt afterwards."""
        for envelope, rcpts in items:
            await self._record(envelope, rcpts, {r.address: response for r in rcpts})
            self._release_marks(envelope, rcpts)

    async def _record(self, envelope: Envelope, rcpts: list[Recipient], results: dict[str, Reply]) -> None:
        """Write the results durably first; then bounce what failed."""
        now = self.clock.seconds()
        failed: list[tuple[Recipient, Reply]] = []
        for rcpt in rcpts:
            response = results.get(rcpt.address)
            if response is None:
                continue
            rcpt.last_reply = str(response)
            if response.code < 400:
                rcpt.state = DELIVERED
            elif response.code >= 500:
                rcpt.state = FAILED
                failed.append((rcpt, response))
            else:
                rcpt.attempts += 1
                if rcpt.state == HELD:
                    continue  # stays in the hold queue for the peer's next call
                if now - envelope.arrival >= self.settings.lifetime:
                    rcpt.state = FAILED
                    expired = reply(451, "4.4.7", f"Delivery time expired; last error: {response}")
                    rcpt.last_reply = str(expired)
                    failed.append((rcpt, expired))
                else:
                    rcpt.next_attempt = now + self._backoff(rcpt.attempts)
        await self.spool.update(envelope)
        for rcpt in rcpts:
            if rcpt.address in results and rcpt.state != FAILED:  # failures are logged below
                outcome = "delivered" if rcpt.state == DELIVERED else f"deferred (attempt {rcpt.attempts})"
                log.info(
                    "{line}",
                    line=f"{envelope.id}: {rcpt.address} {outcome}: {rcpt.last_reply}",
                    queue_id=envelope.id,
                )
        if any(r.state == PENDING for r in envelope.recipients):
            self._ready[envelope.id] = None  # the next run files it under its retry time
            self.kick()
        for rcpt, response in failed:
            log.info("{line}", line=f"{envelope.id}: {rcpt.address} failed: {response}", queue_id=envelope.id)
        await self._report_failures(envelope)

    async def _report_failures(self, envelope: Envelope) -> None:
        """Bounce the failed recipients not reported yet; then the entry may go.

        The bounce is queued durably before the failures are marked reported,
        and the entry is removed only after that: a crash in between makes a
        second bounce at worst, never none.
        """
        unreported = envelope.unreported()
        if unreported:
            await self._bounce(envelope, unreported)
            for rcpt in unreported:
                rcpt.notified = True
            await self.spool.update(envelope)
        if envelope.done:
            self.entries.pop(envelope.id, None)

    def _backoff(self, attempts: int) -> float:
        s = self.settings
        delay = min(s.backoff_max, s.backoff_base * 2 ** (attempts - 1))
        return delay * (1 + self.rng.uniform(-s.jitter, s.jitter))

    async def _bounce(self, envelope: Envelope, failed: list[Recipient]) -> None:
        if not bounce.bounce_allowed(envelope.reverse_path):
            log.info("{line}", line=f"{envelope.id}: no bounce for a message from <>")
            return
        with open(self.spool.body_path(envelope.id), "rb") as f:
            original = f.read(256 * 1024)
        dsn = bounce.build_dsn(
            reporting_mta=self.hostname,
            sender=envelope.reverse_path,
            recipients=[
                bounce.FailedRecipient(
                    address=r.address,
                    status=_status_of(r.last_reply),
                    remote_mta=_remote_host(r.route.get("relay")),
                    diagnostic=r.last_reply,
                )
                for r in failed
            ],
            original=original,
            queue_id=envelope.id,
            arrival=_datetime(envelope.arrival),
        )
        await self.inject(Envelope(new_queue_id(), "", [], time.time()), envelope.reverse_path, dsn)

    async def inject(self, envelope: Envelope, recipient: str, message: bytes) -> None:
        """Queue a locally made message (a bounce) for ``recipient``."""
        try:
            path, _ = parse_path(f"<{recipient}>", reverse=False, utf8=True)
        except AddressError:
            log.info("{line}", line=f"cannot return mail to malformed address <{recipient}>")
            return
        decision = self.router.decide(path, "127.0.0.1", authenticated="mailer-daemon")
        if decision.kind == LOCAL and self.deliver_locally is not None:
            await self.deliver_locally([recipient], message, envelope.id)
            return
        if decision.kind not in (RELAY, HOLD):
            log.info("{line}", line=f"{envelope.id}: no route to return mail to <{recipient}>")
            return
        if decision.kind == RELAY:
            route = {"relay": decision.target, "domain": decision.domain or ""}
            envelope.recipients = [Recipient(recipient, PENDING, route)]
        else:
            envelope.recipients = [Recipient(recipient, HELD, {"hold": decision.target})]
        sink = self.spool.new_message(envelope, b"")
        sink.write(message)
        await sink.finish()
        self.add(envelope)


def _refusal(command: str, job: SenderJob) -> str | None:
    """A poll whose point was refused failed, so it backs off and ``smtppeer poll``
    says so; "453 you have no mail" is a success with nothing in it."""
    response = job.turn_reply
    if command.upper() != "QUIT" and not job.turned and response is not None and response.code != 453:
        return f"{command.split()[0]} refused: {response}"
    for request, response in job.request_results:
        if not 250 <= response.code <= 253:
            return f"{request} refused: {response}"
    return None


def _in_domains(address: str, domains: list[str], exact: bool = False) -> bool:
    """Is the address's domain one of ``domains`` (or, unless ``exact``, a subdomain of one)?"""
    domain = address.rpartition("@")[2].lower()
    return any(domain == d or (not exact and domain.endswith("." + d)) for d in domains)


def _status_of(last_reply: str | None) -> str:
    """The RFC 3463 code in a recorded reply (``"550 5.1.1 text"``), or a generic one."""
    parts = (last_reply or "").split()
    if len(parts) > 1 and parts[1][:1] in "245" and parts[1].count(".") == 2:
        return parts[1]
    return f"{parts[0][:1]}.0.0" if parts and parts[0][:1] in "45" else "5.0.0"


def _remote_host(relay: str | None) -> str | None:
    """The host a DSN names as the Remote-MTA (RFC 3464: a host name): a relay
    endpoint's host.  None for an MX route, whose answering host is not kept."""
    if not relay or relay == MX or relay.startswith("peer:"):
        return None
    return endpoint_host(relay) or None


def _datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
