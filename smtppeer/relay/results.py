"""What follows from each recipient's result: written down first, then acted on.

Every per-recipient result is written back to the spool (durably) as soon
as it arrives, before anything else is done with it: a crash afterwards
never sends to a recipient that already has the message.  A 2xx delivers,
a 5xx fails (and bounces), a 4xx or a connection failure defers with
exponential backoff and jitter, and a message older than the queue lifetime
fails what is left of it with ``4.4.7``.  A failed message stays in the
spool until its bounce is itself queued.

``502`` (command not implemented) is the exception among the 5xx: it is no
verdict on the message but says the next hop takes no mail on that port,
an ODMR port (RFC 2645) most likely.  That is this host's configuration
error, so it defers (``451 4.3.5``) with a log line saying so, and the mail
waits for the route to be mended, or for the queue lifetime, like any.

A disk that refuses a write (full, over quota, failing) does not lose a
result: the state stays in memory, where the runner acts on it as usual,
one line is logged, and ``retry_unsaved`` (on every sweep of the runner)
writes it, and makes the bounces it owes, once the disk takes them.  Until
then a restart would send to those recipients again: at least once, never
never.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime

from twisted.internet import defer, interfaces
from twisted.logger import Logger

from smtppeer.activity import Activity, Kind
from smtppeer.engine import Reply, reply
from smtppeer.engine.address import AddressError, parse_path
from smtppeer.peer.tls import endpoint_host
from smtppeer.policy.routing import HOLD, LOCAL, MX, RELAY, Router
from smtppeer.store.ids import new_queue_id
from smtppeer.store.space import out_of_room
from smtppeer.store.spool import DELIVERED, FAILED, HELD, PENDING, Envelope, Recipient, Spool

from . import bounce
from .queue import Item, Marks, Queue, RunnerSettings

log = Logger()

BOUNCE_QUOTE = 256 * 1024  # how much of the original a bounce quotes at most

# Where a bounce for a local sender goes: (recipients, message, queue ID) -> fired when stored
LocalDelivery = Callable[[list[str], bytes, str], defer.Deferred]


class Results:
    def __init__(
        self,
        hostname: str,
        queue: Queue,
        spool: Spool,
        router: Router,
        settings: RunnerSettings,
        clock: interfaces.IReactorTime,
        rng: random.Random,
        *,
        deliver_locally: LocalDelivery | None,
        look_again: Callable[[str], None],
        added: Callable[[Envelope], None],
        activity: Activity,
    ) -> None:
        """``look_again(queue_id)``: a message has recipients left to send; ``added``:
        a new message (a bounce) is in the spool; ``activity`` is told every result."""
        self.activity = activity
        self.hostname = hostname
        self.queue = queue
        self.spool = spool
        self.router = router
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.deliver_locally = deliver_locally
        self.look_again = look_again
        self.added = added
        # Envelopes whose state (or a bounce they owe) the disk refused: written again later.
        self.unsaved: dict[str, Envelope] = {}
        self._retrying: set[str] = set()  # the one retry_unsaved under way, by queue ID
        self._settling: set[str] = set()  # envelopes whose bounces are being made

    async def record_all(self, items: list[Item], response: Reply, marks: Marks) -> None:
        """The same result for everything of a session that never got going; the
        recipients are free for the next attempt afterwards."""
        for envelope, rcpts in items:
            await self.record(envelope, rcpts, {r.address: response for r in rcpts})
            marks.release(envelope, rcpts)

    async def record(self, envelope: Envelope, rcpts: list[Recipient], results: dict[str, Reply]) -> None:
        """Write the results durably first; then bounce what failed."""
        now = self.clock.seconds()
        failed: list[tuple[Recipient, Reply]] = []
        misrouted = None
        for rcpt in rcpts:
            response = results.get(rcpt.address)
            if response is None:
                continue
            if response.code == 502:
                misrouted = response
                response = reply(451, "4.3.5", f"Not a port for mail (configuration error): {response}")
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
                    rcpt.next_attempt = now + self.backoff(rcpt.attempts)
        saved = await self._save(envelope)
        if self.activity.watched:
            self._report(envelope, [r for r in rcpts if r.address in results], now)
        if misrouted is not None:
            where = rcpts[0].relay or rcpts[0].hold or "its route"
            log.warn(
                "{line}",
                line=f"{envelope.id}: {where} answered {misrouted}: it takes no mail there (an ODMR "
                "port? RFC 2645); deferred, not bounced: check the endpoint of that route",
                queue_id=envelope.id,
            )
        for rcpt in rcpts:
            if rcpt.address in results and rcpt.state != FAILED:  # failures are logged below
                outcome = "delivered" if rcpt.state == DELIVERED else f"deferred (attempt {rcpt.attempts})"
                log.info(
                    "{line}",
                    line=f"{envelope.id}: {rcpt.address} {outcome}: {rcpt.last_reply}",
                    queue_id=envelope.id,
                )
        if any(r.state == PENDING for r in envelope.recipients):
            self.look_again(envelope.id)  # the next run files it under its retry time
        for rcpt, response in failed:
            log.info("{line}", line=f"{envelope.id}: {rcpt.address} failed: {response}", queue_id=envelope.id)
        if saved:
            await self.report_failures(envelope)

    def _report(self, envelope: Envelope, rcpts: list[Recipient], now: float) -> None:
        for rcpt in rcpts:
            kind = {DELIVERED: Kind.DELIVERED, FAILED: Kind.FAILED}.get(rcpt.state, Kind.DEFERRED)
            self.activity.report(
                kind, queue_id=envelope.id, recipient=rcpt.address, reply=rcpt.last_reply,
                attempts=rcpt.attempts, relay=rcpt.relay, hold=rcpt.hold, latency=now - envelope.arrival,
            )  # fmt: skip

    async def expire(self, envelope: Envelope, reasons: list[tuple[Recipient, Reply]]) -> None:
        """Fail recipients for good without an attempt (held too long, or never polled
        for), each for its reason, and bounce them in one report."""
        for rcpt, why in reasons:
            rcpt.state = FAILED
            rcpt.last_reply = str(why)
        saved = await self._save(envelope)
        if self.activity.watched:
            self._report(envelope, [rcpt for rcpt, _ in reasons], self.clock.seconds())
        if saved:
            await self.report_failures(envelope)

    async def report_failures(self, envelope: Envelope) -> None:
        """Bounce the failed recipients not reported yet; then the entry may go.

        The bounce is queued durably before the failures are marked reported,
        and the entry is removed only after that: a crash in between makes a
        second bounce at worst, never none.
        """
        try:
            await self._settle(envelope)
        except OSError as e:
            self._keep(envelope, e, "the bounce it owes")

    async def _settle(self, envelope: Envelope) -> None:
        """Bounce what is unreported, one caller per envelope at a time: a second
        caller (a result while a retry is bouncing) leaves it to the first, which
        looks again before it ends, so no recipient is bounced twice."""
        if envelope.id in self._settling:
            return
        self._settling.add(envelope.id)
        try:
            while unreported := envelope.unreported():
                await self._bounce(envelope, unreported)
                for rcpt in unreported:
                    rcpt.notified = True
                await self.spool.update(envelope)
        finally:
            self._settling.discard(envelope.id)
        if envelope.done:
            self.queue.entries.pop(envelope.id, None)

    async def _save(self, envelope: Envelope) -> bool:
        """Write the envelope's state; if the disk refuses, keep it for ``retry_unsaved``."""
        try:
            await self.spool.update(envelope)
        except OSError as e:
            self._keep(envelope, e, "its delivery state")
            return False
        return True

    def _keep(self, envelope: Envelope, error: OSError, what: str) -> None:
        first = envelope.id not in self.unsaved and envelope.id not in self._retrying
        self.unsaved[envelope.id] = envelope
        if first:  # one line per message, not one per retry
            why = "no room on the disk" if out_of_room(error) else f"{error.strerror or error}"
            log.error(
                "{line}",
                line=f"{envelope.id}: cannot write {what} ({why}): kept in memory, "
                f"written when the disk takes it (tried every {self.settings.interval:g}s)",
                queue_id=envelope.id,
            )

    async def retry_unsaved(self) -> None:
        """Write what the disk refused before, then make the bounces it owes.  One
        pass at a time; each envelope leaves ``unsaved`` before it is tried, so a
        result refused meanwhile (or this try failing again) puts it back."""
        if self._retrying:
            return  # the pass under way (a long one, after a long full-disk spell) goes on
        while self.unsaved:
            queue_id, envelope = self.unsaved.popitem()
            if self.queue.entries.get(queue_id) is not envelope:
                continue  # deleted by the administrator meanwhile
            self._retrying.add(queue_id)
            try:
                await self.spool.update(envelope)
                await self._settle(envelope)
            except OSError as e:
                self._keep(envelope, e, "its delivery state")  # quiet: logged the first time
                break  # the disk is still full: the next sweep tries the rest
            finally:
                self._retrying.discard(queue_id)
            log.info("{line}", line=f"{queue_id}: its state is written now", queue_id=queue_id)

    def backoff(self, attempts: int) -> float:
        s = self.settings
        delay = min(s.backoff_max, s.backoff_base * 2 ** (attempts - 1))
        return delay * (1 + self.rng.uniform(-s.jitter, s.jitter))

    async def _bounce(self, envelope: Envelope, failed: list[Recipient]) -> None:
        if not bounce.bounce_allowed(envelope.reverse_path):
            log.info("{line}", line=f"{envelope.id}: no bounce for a message from <>")
            return
        with open(self.spool.body_path(envelope.id), "rb") as f:
            original = f.read(BOUNCE_QUOTE)
        dsn = bounce.build_dsn(
            reporting_mta=self.hostname,
            sender=envelope.reverse_path,
            recipients=[
                bounce.FailedRecipient(
                    address=r.address,
                    status=_status_of(r.last_reply),
                    remote_mta=_remote_host(r.relay),
                    diagnostic=r.last_reply,
                )
                for r in failed
            ],
            original=original,
            queue_id=envelope.id,
            arrival=datetime.fromtimestamp(envelope.arrival, UTC),
        )
        bounce_id = new_queue_id()
        await self.inject(bounce_id, envelope.reverse_path, dsn)
        self.activity.report(
            Kind.BOUNCED, queue_id=envelope.id, bounce_id=bounce_id, to=envelope.reverse_path,
            recipients=[r.address for r in failed],
        )  # fmt: skip

    async def inject(self, queue_id: str, recipient: str, message: bytes) -> None:
        """Queue a locally made message from ``<>`` (a bounce) for ``recipient``."""
        try:
            path, _ = parse_path(f"<{recipient}>", reverse=False, utf8=True)
        except AddressError:
            log.info("{line}", line=f"cannot return mail to malformed address <{recipient}>")
            return
        decision = self.router.decide(path, "127.0.0.1", authenticated="mailer-daemon")
        if decision.kind == LOCAL and self.deliver_locally is not None:
            await self.deliver_locally([recipient], message, queue_id)
            return
        if decision.kind == RELAY:
            route = {"relay": decision.target, "domain": decision.domain or ""}
            rcpt = Recipient(recipient, PENDING, route)
        elif decision.kind == HOLD:
            rcpt = Recipient(recipient, HELD, {"hold": decision.target})
        else:
            log.info("{line}", line=f"{queue_id}: no route to return mail to <{recipient}>")
            return
        envelope = Envelope(queue_id, "", [rcpt], self.clock.seconds())
        sink = self.spool.new_message(envelope, b"")
        try:
            sink.write(message)
            await sink.finish()
        except OSError:
            sink.abort()  # whatever it began on disk is not left to fill it (bounces stay small today)
            raise
        self.added(envelope)


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
