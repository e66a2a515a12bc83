"""Faults: chosen failures at a chosen point of a host's sessions.

Deterministic first: a fault says where (the phase: connect, EHLO, AUTH,
MAIL, RCPT, DATA, the end of data, TURN, ATRN, ETRN), for what (sender and
recipient patterns, message size), what happens (a reply, a delay, a cut
connection, or a message stored and then the connection cut, which the
sender must retry: a duplicate), and when (``times``, ``nth``, ``every``,
beyond a ``rate``, in a time window, or with a probability from a seeded
generator).  Every fault that fires is logged and counted.

``FaultyHooks`` stands between a host's listeners and its receiving policy
(``service.assembly.assemble(wrap_hooks=...)``): the real policy decides
everything the faults leave alone.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, interfaces, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtppeer.engine import Path, Reply
from smtppeer.peer.hooks import DropConnection, MessageSink, ReceiverHooks, Session, Transaction

from .topology import Action, FaultSpec, Phase

log = Logger()

_SCREEN_PHASES = {"EHLO": Phase.EHLO, "HELO": Phase.EHLO, "AUTH": Phase.AUTH, "DATA": Phase.DATA}
# The commands a lab host lets its faults see before they run.
SCREENED = frozenset(_SCREEN_PHASES)
# Connections whose MAIL FROM a host's faults remember for RCPT: a session may end after MAIL
# with neither DATA nor RSET, and nothing says so, so the oldest are forgotten past this.
MAX_SENDERS = 1024

_ids = itertools.count(1)


class Fault:
    """One fault as it runs: its spec, what it has matched and fired."""

    def __init__(self, spec: FaultSpec, started: float) -> None:
        self.spec = spec
        self.id = next(_ids)
        self.name = spec.name or f"fault-{self.id}"
        self.started = started  # the lab's clock at its start: after/until count from here
        self.matched = 0
        self.fired = 0
        self._recent: deque[float] = deque()  # match times within the rate's window
        self._rng = random.Random(spec.seed) if spec.probability is not None else None

    def matches(
        self, *, sender: str | None = None, recipient: str | None = None, size: int | None = None
    ) -> bool:
        spec = self.spec
        if spec.sender is not None and not _glob(spec.sender, sender):
            return False
        if spec.recipient is not None and not _glob(spec.recipient, recipient):
            return False
        if spec.min_size is not None and (size is None or size < spec.min_size):
            return False
        return not (spec.max_size is not None and (size is None or size > spec.max_size))

    def fires(self, now: float) -> bool:
        """A matching occurrence at ``now``: does the fault strike it?"""
        spec = self.spec
        elapsed = now - self.started
        if (spec.after is not None and elapsed < spec.after) or (
            spec.until is not None and elapsed >= spec.until
        ):
            return False
        self.matched += 1
        n = self.matched
        if spec.times is not None and self.fired >= spec.times:
            return False
        if spec.nth is not None and n != spec.nth:
            return False
        if spec.every is not None and n % spec.every:
            return False
        if spec.rate is not None:
            count, window = spec.rate
            self._recent.append(now)
            while self._recent and self._recent[0] <= now - window:
                self._recent.popleft()
            if len(self._recent) <= count:
                return False
        if self._rng is not None and self._rng.random() >= (spec.probability or 0):
            return False
        self.fired += 1
        return True

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": self.id,
            "name": self.name,
            "host": spec.host,
            "phase": str(spec.phase),
            "action": str(spec.action),
            "reply": str(spec.reply) if spec.reply else None,
            "delay": spec.delay,
            "sender": spec.sender,
            "recipient": spec.recipient,
            "min_size": spec.min_size,
            "max_size": spec.max_size,
            "times": spec.times,
            "nth": spec.nth,
            "every": spec.every,
            "rate": f"{spec.rate[0]}/{spec.rate[1]:g}s" if spec.rate else None,
            "after": spec.after,
            "until": spec.until,
            "probability": spec.probability,
            "seed": spec.seed,
            "matched": self.matched,
            "fired": self.fired,
        }


def _glob(pattern: str, value: str | None) -> bool:
    return value is not None and fnmatch.fnmatchcase(value.lower(), pattern)


# (fault, host, phase, context) -> anything: how the lab hears of a fault that fired
FiredWatcher = Callable[[Fault, dict[str, Any]], object]


class FaultBook:
    """The faults of a lab, by host; the lab's clock decides windows and rates."""

    def __init__(self, clock: interfaces.IReactorTime) -> None:
        self.clock = clock
        self.faults: list[Fault] = []
        self.watchers: list[FiredWatcher] = []
        self._delays: set[defer.Deferred] = set()

    def later(self, delay: float, then: Callable[[], Any]) -> defer.Deferred:
        """``then()`` after ``delay`` seconds of the lab's clock (a delay fault).  A lab
        that stops first (``stop``) ends the wait without an answer: the host's own
        stop says 421 to that session as to every other, no timer outlives the lab,
        and no stopped host's policy is called."""
        d = task.deferLater(self.clock, delay, then)
        self._delays.add(d)

        def done(result: object) -> object:
            self._delays.discard(d)
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return defer.Deferred()  # never answered: the session ends with the host
            return result

        return d.addBoth(done)

    def stop(self) -> None:
        for d in list(self._delays):
            d.cancel()

    def add(self, spec: FaultSpec) -> Fault:
        fault = Fault(spec, self.clock.seconds())
        self.faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        if fault in self.faults:
            self.faults.remove(fault)

    def get(self, key: int | str) -> Fault | None:
        for fault in self.faults:
            if fault.id == key or fault.name == key or str(fault.id) == str(key):
                return fault
        return None

    def strike(self, host: str, phase: Phase, **context: Any) -> Fault | None:
        """The first of ``host``'s faults at ``phase`` that matches and fires, if any."""
        now = self.clock.seconds()
        for fault in self.faults:
            spec = fault.spec
            if spec.host != host or spec.phase != phase:
                continue
            if not fault.matches(
                **{k: v for k, v in context.items() if k in ("sender", "recipient", "size")}
            ):
                continue
            if fault.fires(now):
                log.info(
                    "{line}",
                    line=f"fault {fault.name} on {host} at {phase}: {spec.action}"
                    + (f" {spec.reply}" if spec.reply else ""),
                )
                for watcher in list(self.watchers):
                    try:
                        watcher(fault, {"phase": str(phase), **context})
                    except Exception:
                        log.failure("a fault watcher failed")
                return fault
        return None


class FaultyHooks(ReceiverHooks):
    """A host's receiving policy, with its faults in front of it."""

    def __init__(self, inner: ReceiverHooks, host: str, book: FaultBook) -> None:
        self.inner, self.host, self.book = inner, host, book
        self._senders: dict[int, str] = {}  # connection -> MAIL FROM of its transaction

    def _apply(
        self, fault: Fault | None, then: Callable[[], Any], refusal: Callable[[Reply], Any] | None = None
    ):
        """What a fault does instead of (or before) ``then``: a reply, a delay, a cut."""
        if fault is None:
            return then()
        spec = fault.spec
        if spec.action == Action.DISCONNECT:
            return defer.fail(DropConnection())
        if spec.action == Action.REPLY:
            response = spec.reply
            result = refusal(response) if refusal is not None else response
            return self.book.later(spec.delay, lambda: result) if spec.delay else result
        return self.book.later(spec.delay, then)  # DELAY

    def greeting(self, session: Session):
        fault = self.book.strike(self.host, Phase.CONNECT, client=session.client_address)
        return self._apply(fault, lambda: self.inner.greeting(session))

    def screen(self, session: Session, verb: str, argument: str):
        phase = _SCREEN_PHASES.get(verb)
        fault = self.book.strike(self.host, phase, client=session.client_address) if phase else None
        return self._apply(fault, lambda: self.inner.screen(session, verb, argument))

    def mail_from(self, session: Session, path: Path, params: dict[str, str | None]):
        sender = str(path)[1:-1]
        self._senders.pop(session.connection, None)  # newest last: the oldest go first
        self._senders[session.connection] = sender
        if len(self._senders) > MAX_SENDERS:
            del self._senders[next(iter(self._senders))]
        fault = self.book.strike(self.host, Phase.MAIL, sender=sender, client=session.client_address)
        return self._apply(fault, lambda: self.inner.mail_from(session, path, params))

    def rcpt_to(self, session: Session, path: Path, params: dict[str, str | None]):
        recipient = str(path)[1:-1]
        sender = self._senders.get(session.connection)
        fault = self.book.strike(self.host, Phase.RCPT, sender=sender, recipient=recipient)
        return self._apply(fault, lambda: self.inner.rcpt_to(session, path, params))

    def begin_message(self, session: Session, transaction: Transaction) -> MessageSink:
        self._senders.pop(session.connection, None)
        sink = self.inner.begin_message(session, transaction)
        return _FaultySink(self, sink, str(transaction.reverse_path)[1:-1])

    def reset(self, session: Session) -> None:
        self._senders.pop(session.connection, None)
        return self.inner.reset(session)

    def verify(self, session: Session, verb: str, argument: str):
        return self.inner.verify(session, verb, argument)

    def turn(self, session: Session, verb: str = "TURN", domains: list[str] | None = None):
        phase = Phase.ATRN if verb == "ATRN" else Phase.TURN
        fault = self.book.strike(self.host, phase, client=session.client_address)
        return self._apply(fault, lambda: self.inner.turn(session, verb, domains))

    def start_queue(self, session: Session, node: str, kind: str):
        fault = self.book.strike(self.host, Phase.ETRN, client=session.client_address)
        return self._apply(fault, lambda: self.inner.start_queue(session, node, kind))

    def extension_command(self, session: Session, verb: str, argument: str):
        return self.inner.extension_command(session, verb, argument)


class _FaultySink(MessageSink):
    """The end of data: the message is all there (its size known) when faults look."""

    def __init__(self, hooks: FaultyHooks, inner: MessageSink, sender: str) -> None:
        self.hooks, self.inner, self.sender = hooks, inner, sender
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.inner.write(data)

    def finish(self):
        hooks = self.hooks
        fault = hooks.book.strike(hooks.host, Phase.END_OF_DATA, sender=self.sender, size=self.size)
        if fault is not None and fault.spec.action == Action.ACCEPT_THEN_DROP:
            # stored for real (durably), and the 250 never sent: the sender will try again
            d = defer.maybeDeferred(self.inner.finish)
            d.addCallback(lambda _: defer.fail(DropConnection()))
            return d

        def refuse(response: Reply) -> Reply:
            self.inner.abort()
            return response

        if fault is not None and fault.spec.action == Action.DISCONNECT:
            self.inner.abort()
        return hooks._apply(fault, self.inner.finish, refuse)

    def abort(self) -> None:
        self.inner.abort()

    def refused(self, why: str, response: Reply | None = None) -> None:
        self.inner.refused(why, response)

    def retract(self):
        return self.inner.retract()
