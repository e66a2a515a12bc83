"""Mail held for peers that call in, and the calls this host makes.

A peer's hold queue goes to that peer only: over its own connection when
it says TURN or ATRN (``release``), over a new connection to its endpoint
when it says ETRN (``start_held``).  A poll is the other side of the same
exchange: connect, send what is queued for the peer, then TURN, ATRN or
ETRN, receive, QUIT (``poll``).  Held mail that waits longer than the queue
lifetime is returned to its sender (``expire``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from twisted.internet import defer, endpoints, interfaces
from twisted.logger import Logger

from smtppeer.activity import Activity, Kind
from smtppeer.engine import reply
from smtppeer.peer.hooks import ReceiverHooks, SenderJob
from smtppeer.store.spool import HELD

from .attempt import Attempts
from .queue import Queue, RunnerSettings
from .results import Results

log = Logger()


HELD_TOO_LONG = reply(451, "4.4.7", "Held too long: the peer did not call in")
NOT_POLLED = reply(451, "4.4.7", "Delivery time expired: no poll of the peer sent it")


class PollMethod(StrEnum):
    TURN = "turn"  # send, then TURN and receive on the same connection (RFC 821)
    ATRN = "atrn"  # log in, ATRN and receive; send nothing (RFC 2645)
    ETRN = "etrn"  # send, then ask the peer to connect back (RFC 1985)


@dataclass
class PollOutcome:
    """One poll cycle, for the log line and for ``smtppeer poll``."""

    peer: str
    sent: int = 0  # messages that reached at least one recipient
    sent_recipients: int = 0  # the recipients they reached
    received: int = 0  # messages
    turned: bool = False
    turn_reply: str | None = None
    duration: float = 0.0
    error: str | None = None
    method: PollMethod = PollMethod.TURN
    requests: list[str] = field(default_factory=list)  # "ETRN node: reply" for etrn polls

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        if self.method == PollMethod.ETRN:
            turn = "; ".join(self.requests) or "no ETRN answered"
        else:
            turn = "turned" if self.turned else f"not turned ({self.turn_reply or 'no reply'})"
        outcome = "ok" if self.ok else f"failed: {self.error}"
        sent = f"sent {_counted(self.sent, 'message')} to {_counted(self.sent_recipients, 'recipient')}"
        return f"poll {self.peer}: {sent}, received {self.received}, {turn}, {self.duration:.2f}s, {outcome}"


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class Holds:
    def __init__(
        self,
        queue: Queue,
        attempts: Attempts,
        results: Results,
        settings: RunnerSettings,
        clock: interfaces.IReactorTime,
        track: Callable[[defer.Deferred], None],
        activity: Activity,
    ) -> None:
        self.activity = activity
        self.queue = queue
        self.attempts = attempts
        self.results = results
        self.settings = settings
        self.clock = clock
        self.track = track

    def release(self, peer_name: str, domains: list[str] | None = None) -> SenderJob:
        """The job that sends ``peer_name`` its held mail over a turned connection.

        Recipients already being sent (another session of the same peer) are
        left out, so two sessions never send the same message.  A failure to
        deliver keeps the mail held; a permanent refusal bounces it.
        """
        items = self.queue.held(peer_name, domains)
        job, _ = self.attempts.job(items, self.queue.mark(items))
        log.info("{line}", line=f"releasing {len(items)} held messages to {peer_name}")
        return job

    def start_held(
        self, peer_name: str, endpoint: str, domains: list[str] | None = None, exact: bool = False
    ) -> int:
        """ETRN: send what is held for the peer over a new connection to ``endpoint``.

        Returns the number of messages started; the delivery runs on its own
        and, like a turned session, leaves undelivered mail held.
        """
        items = self.queue.held(peer_name, domains, exact)
        if not items:
            return 0
        marks = self.queue.mark(items)
        job, pending = self.attempts.job(items, marks)
        log.info("{line}", line=f"ETRN: sending {len(items)} held messages to {peer_name} at {endpoint}")
        self.activity.report(Kind.RELEASED, peer=peer_name, verb="ETRN", messages=len(items))
        d = defer.ensureDeferred(
            self.attempts.send(f"{peer_name} (ETRN)", endpoint, job, pending, items, marks)
        )
        d.addErrback(lambda f: log.failure("ETRN delivery failed", f))
        self.track(d)
        return len(items)

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
        """One poll cycle: connect, send what is queued for the peer, then ``command``
        (``TURN``/``ATRN``: receive what the peer held) after any ``requests``
        (``ETRN node``), and QUIT.

        ``send_to``: the queued mail goes there first, over a connection of its
        own (an ATRN poll: RFC 2645's port takes no mail, so the peer's SMTP
        port carries it); then the poll's own connection only receives.
        """
        started = self.clock.seconds()
        outcome = PollOutcome(peer_name, method=method)
        if send_to is not None:
            await self._send_first(peer_name, send_to, outcome)
            send_queued = False
        items = self.queue.pending_via({endpoint, f"peer:{peer_name}"}) if send_queued else []
        marks = self.queue.mark(items)
        job, pending = self.attempts.job(items, marks)
        job.finish = command
        job.requests = list(requests or [])
        client_security, client_tls = self.attempts.security(endpoint)
        if client_security is not None and client_security.username is not None and method != PollMethod.ETRN:
            # Turning is what the login is for: without AUTH the peer would refuse anyway.
            client_security = dataclasses.replace(client_security, require_auth=True)
        factory = self.attempts.factory(hooks, job, (client_security, client_tls))
        sending_error = outcome.error
        try:
            connect = endpoints.clientFromString(self.attempts.reactor, endpoint)
            summary = await self.attempts.session(f"{peer_name} (poll)", connect, factory, pending)
        except Exception as e:  # noqa: BLE001 - the peer is down: what we had stays queued
            await self.results.record_all(
                items, reply(451, "4.4.1", f"Cannot connect to {peer_name}: {e}"), marks
            )
            outcome.error = f"cannot connect: {e}"
        else:
            # A message to three recipients is one message sent, not three.
            outcome.sent += sum(1 for r in summary.sent if r.delivered)
            outcome.sent_recipients += sum(len(r.delivered) for r in summary.sent)
            outcome.received = summary.received
            outcome.turned = job.turned
            outcome.turn_reply = str(job.turn_reply) if job.turn_reply else None
            outcome.requests = [f"{command}: {response}" for command, response in job.request_results]
            outcome.error = None if summary.clean else summary.error
            if outcome.error is None:
                outcome.error = _refusal(command, job)
        outcome.error = sending_error or outcome.error  # either part failing fails the poll
        outcome.duration = self.clock.seconds() - started
        log.info("{line}", line=outcome.line(), peer=peer_name)
        self.activity.report(
            Kind.POLLED, peer=peer_name, method=str(method), ok=outcome.ok, sent=outcome.sent,
            received=outcome.received, turned=outcome.turned, line=outcome.line(),
        )  # fmt: skip
        return outcome

    async def _send_first(self, peer_name: str, send_to: str, outcome: PollOutcome) -> None:
        """Send what is queued for the peer to ``send_to`` over a connection of its own,
        before the poll's; a failure is the poll's (it backs off), the mail stays queued."""
        items = self.queue.pending_via({send_to, f"peer:{peer_name}"})
        if not items:
            return
        marks = self.queue.mark(items)
        job, pending = self.attempts.job(items, marks)
        summary = await self.attempts.send(
            f"{peer_name} (poll, sending)", send_to, job, pending, items, marks
        )
        if summary is None:  # not connected: each recipient was deferred with the reason
            _, rcpts = items[0]
            outcome.error = f"cannot send: {rcpts[0].last_reply}"
            return
        outcome.sent = sum(1 for r in summary.sent if r.delivered)
        outcome.sent_recipients = sum(len(r.delivered) for r in summary.sent)
        if not summary.clean:
            outcome.error = f"sending: {summary.error}"

    def expire(self, now: float) -> None:
        """Return held mail older than the queue lifetime: the peer did not call in; and
        mail that waited as long for a poll to send it (``send = "on-poll"``)."""
        for envelope, rcpts in self.queue.expired_holds(now, self.settings.lifetime, self.settings.on_poll):
            reasons = [(r, HELD_TOO_LONG if r.state == HELD else NOT_POLLED) for r in rcpts]
            d = defer.ensureDeferred(self.results.expire(envelope, reasons))
            d.addErrback(lambda f: log.failure("could not expire held mail", f))
            self.track(d)


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
