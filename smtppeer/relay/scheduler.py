"""The queue runner: which messages go out now, over how many connections.

Due recipients are grouped by next hop (an endpoint, or a domain whose MX
records are looked up), and each group goes over one connection as a
``SenderJob`` with several messages, pipelined where the server offers it.
Connections are bounded in total and per destination.  Only envelopes that
are ready (new, or whose retry time has come: a heap) are looked at on a
run; the whole queue is never rescanned per message.

The work itself is done by the parts this assembles: ``attempt`` (one
connection), ``results`` (what each result means, bounces), ``holds``
(hold queues released to their peers, polls), over one ``Queue``.  The
administrator's commands (flush, hold, release, delete) act here.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import defaultdict
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer, interfaces
from twisted.logger import Logger

from smtppeer.activity import Activity
from smtppeer.engine import Limits
from smtppeer.peer.hooks import ReceiverHooks, SenderJob
from smtppeer.policy.routing import MX, Router
from smtppeer.store.spool import DELIVERED, FAILED, PENDING, Envelope, Recipient, Spool

from .attempt import Attempts, Security
from .holds import Holds, PollMethod, PollOutcome
from .mx import MXResolver
from .queue import Item, Queue, RunnerSettings
from .results import LocalDelivery, Results

log = Logger()


class QueueRunner(service.Service):
    def __init__(
        self,
        hostname: str,
        spool: Spool,
        router: Router,
        *,
        deliver_locally: LocalDelivery | None = None,
        resolver: MXResolver | None = None,
        settings: RunnerSettings | None = None,
        limits: Limits | None = None,
        reactor: interfaces.IReactorTime | None = None,
        clock: interfaces.IReactorTime | None = None,
        rng: random.Random | None = None,
        security: Callable[[str], Security] | None = None,
        activity: Activity | None = None,
    ) -> None:
        """``security(endpoint)`` says how to secure a connection to a configured
        endpoint (a peer's TLS policy and credentials); MX hosts get opportunistic TLS.
        ``clock`` is the one clock of the runner: retry times, expiry and the
        arrival time of the bounces it makes."""
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.hostname = hostname
        self.spool = spool
        self.router = router
        self.settings = settings or RunnerSettings()
        self.clock = clock or reactor
        self.activity = activity or Activity(self.clock)
        self.queue = Queue()
        self.results = Results(
            hostname,
            self.queue,
            spool,
            router,
            self.settings,
            self.clock,
            rng or random.Random(),
            deliver_locally=deliver_locally,
            look_again=self._look_again,
            added=self.add,
            activity=self.activity,
        )
        self.attempts = Attempts(
            hostname,
            self.queue,
            self.results,
            spool,
            self.settings,
            reactor,
            resolver=resolver,
            limits=limits,
            security=security or (lambda endpoint: (None, None)),
            track=self._track,
        )
        self.holds = Holds(
            self.queue, self.attempts, self.results, self.settings, self.clock, self._track, self.activity
        )
        self._connections: dict[str, int] = defaultdict(int)
        self._timer = None
        self._running: set[defer.Deferred] = set()
        self._ready: dict[str, None] = {}  # envelopes to look at on the next run, in order
        self._waiting: list[tuple[float, int, str]] = []  # (retry time, tie-break, id), a heap
        self._sequence = itertools.count()
        self._next_sweep = 0.0
        self._flushed: set[tuple[str, str]] = set()  # on-poll recipients to send now all the same

    @property
    def entries(self) -> dict[str, Envelope]:
        return self.queue.entries

    # -- life ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.spool.recover()
        for envelope in self.spool.envelopes():
            self.entries[envelope.id] = envelope
            self._ready[envelope.id] = None
            if envelope.unreported():  # a crash came between a failure and its bounce
                d = defer.ensureDeferred(self.results.report_failures(envelope))
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
        self._look_again(envelope.id)

    def _look_again(self, queue_id: str) -> None:
        """Look at this message on the next run (it files it under its retry time)."""
        self._ready[queue_id] = None
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
        for expiry, and states the disk refused are written again, once per
        ``interval``.
        """
        self._timer = None
        now = self.clock.seconds()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, queue_id = heapq.heappop(self._waiting)
            self._ready[queue_id] = None
        if now >= self._next_sweep:
            self._next_sweep = now + self.settings.interval
            self.holds.expire(now)
            if self.results.unsaved:
                d = defer.ensureDeferred(self.results.retry_unsaved())
                d.addErrback(lambda f: log.failure("could not write a kept delivery state", f))
                self._track(d)
        batches: dict[tuple[str, str], list[Item]] = {}
        for queue_id in list(self._ready):
            del self._ready[queue_id]
            envelope = self.entries.get(queue_id)
            if envelope is None or envelope.frozen:
                continue
            later = None
            for rcpt in envelope.recipients:
                if (
                    rcpt.state != PENDING
                    or self.queue.is_sending(envelope, rcpt)
                    or self._waits(envelope, rcpt)
                ):
                    continue
                if rcpt.next_attempt > now:
                    later = rcpt.next_attempt if later is None else min(later, rcpt.next_attempt)
                    continue
                target = rcpt.relay or MX
                # one endpoint: one destination, whatever the domains; MX: one per domain
                key = (target, rcpt.route.get("domain", "") if target == MX else "")
                items = batches.setdefault(key, [])
                if items and items[-1][0] is envelope:
                    items[-1][1].append(rcpt)
                else:
                    items.append((envelope, [rcpt]))
            if later is not None:
                heapq.heappush(self._waiting, (later, next(self._sequence), queue_id))
        for key, items in batches.items():
            for envelope, _ in self._start_connections(key, items):
                self._ready[envelope.id] = None  # no connection free: when one finishes
        delay = self.settings.interval
        if self._waiting:
            delay = min(delay, self._waiting[0][0] - now)
        self.kick(max(0.0, delay))

    def _waits(self, envelope: Envelope, rcpt: Recipient) -> bool:
        """Is this recipient left for the next poll of its peer (``send = "on-poll"``)?
        Not once flushed: then it goes now, over a connection of its own."""
        return rcpt.relay in self.settings.on_poll and (envelope.id, rcpt.address) not in self._flushed

    def _start_connections(self, key: tuple[str, str], items: list[Item]) -> list[Item]:
        """Open connections for ``items`` while limits allow; return what must wait.

        The items are spread over as many connections as may be opened, not
        packed into the first: a receiver syncs each message before its ``250``,
        so one connection moves one message per sync, while messages on
        several connections share a sync (group commit)."""
        target, domain = key
        dest = target + "|" + domain
        settings = self.settings
        free = min(
            settings.per_destination - self._connections[dest],
            settings.max_connections - sum(self._connections.values()),
        )
        if free <= 0:
            return items
        per = min(settings.messages_per_connection, -(-len(items) // free))
        chunks = [items[i : i + per] for i in range(0, len(items), per)]
        for chunk in chunks[:free]:
            marks = self.queue.mark(chunk)
            self._flushed.difference_update((e.id, r.address) for e, rcpts in chunk for r in rcpts)
            self._connections[dest] += 1
            d = defer.ensureDeferred(self.attempts.deliver(target, domain, chunk, marks))
            self._track(d)

            def done(result, dest=dest, chunk=chunk, marks=marks):
                self._connections[dest] -= 1
                marks.release_all()
                for envelope, _ in chunk:
                    self._ready[envelope.id] = None  # anything left of it is looked at again
                self.kick()
                return result

            d.addBoth(done)
            d.addErrback(lambda f: log.failure("delivery batch failed", f))
        return [item for rest in chunks[free:] for item in rest]

    # -- turning around (see holds.py) ----------------------------------------------

    def release(self, peer_name: str, domains: list[str] | None = None) -> SenderJob:
        return self.holds.release(peer_name, domains)

    def start_held(
        self, peer_name: str, endpoint: str, domains: list[str] | None = None, exact: bool = False
    ) -> int:
        return self.holds.start_held(peer_name, endpoint, domains, exact)

    async def poll(
        self,
        peer_name: str,
        endpoint: str,
        hooks: ReceiverHooks,
        command: str = "TURN",
        *,
        requests: list[str] | None = None,
        send_queued: bool = True,
        send_to: str | None = None,
        method: PollMethod = PollMethod.TURN,
    ) -> PollOutcome:
        return await self.holds.poll(
            peer_name,
            endpoint,
            hooks,
            command,
            requests=requests,
            send_queued=send_queued,
            send_to=send_to,
            method=method,
        )

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
        """Retry now every deferred recipient (only those routed to ``route`` if given),
        those that wait for a poll (``send = "on-poll"``) too: the administrator says now."""
        count = 0
        self._flushed = {flag for flag in self._flushed if flag[0] in self.entries}  # forget the gone
        for envelope in self.entries.values():
            for rcpt in envelope.recipients:
                if rcpt.state == PENDING and (route is None or rcpt.relay == route):
                    rcpt.next_attempt = 0.0
                    if rcpt.relay in self.settings.on_poll:
                        self._flushed.add((envelope.id, rcpt.address))
                    self._ready[envelope.id] = None
                    count += 1
        self.kick()
        return count

    def busy(self, queue_id: str) -> bool:
        return self.queue.busy(queue_id)

    async def set_frozen(self, queue_id: str, frozen: bool) -> None:
        """Hold a message back from delivery (``queue hold``), or let it go (``queue release``)."""
        envelope = self.entries[queue_id]
        was, envelope.frozen = envelope.frozen, frozen
        try:
            await self.spool.update(envelope)
        except OSError:  # a full disk: the command fails, and memory keeps saying what the disk says
            envelope.frozen = was
            raise
        if not frozen:
            self._look_again(queue_id)

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
