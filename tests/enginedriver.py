"""Driving the sans-IO ``Receiver`` in tests: one loop, one default answer policy.

``pump`` runs a receiver until it waits (``NEED_DATA``), stops at a decision
left to the test (``PAUSED``) or has closed (``CLOSED``), answering every
decision with an answer function on the way.  ``Driver`` wraps a receiver,
its events and its reply bytes for the engine tests; ``default_answer`` is
the one policy they share, and a test that depends on an answer other than
the default passes it (``answering``).
"""

from __future__ import annotations

from collections.abc import Callable

from smtppeer.engine import events as ev
from smtppeer.engine.extensions import Extension
from smtppeer.engine.limits import Limits
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import Reply, ReplyParser, reply

HOST = "mx.example"
STOPS = (ev.NEED_DATA, ev.PAUSED, ev.CLOSED)

Answer = Callable[[ev.Event], Reply]


def parse_replies(data: bytes) -> list[Reply]:
    """Every reply in ``data``, which must hold complete replies only."""
    parser = ReplyParser()
    parser.feed(data)
    out = []
    while (r := parser.next_reply()) is not None:
        out.append(r)
    assert parser.take_rest() == b""
    return out


def default_answer(event: ev.Event) -> Reply:
    """Yes to mail and to STARTTLS and ETRN; no to TURN and ATRN (502: a test that
    needs another answer, such as ATRN's 453 "no mail", says so)."""
    if isinstance(event, ev.MailFrom):
        return reply(250, "2.1.0", "Sender OK")
    if isinstance(event, ev.RcptTo):
        return reply(250, "2.1.5", "Recipient OK")
    if isinstance(event, ev.DataEnd):
        return reply(250, "2.0.0", "Queued")
    if isinstance(event, ev.Verify):
        return reply(252, "2.5.0", "Cannot verify, will attempt delivery")
    if isinstance(event, ev.StartTLSRequested):
        return reply(220, "2.0.0", "Ready to start TLS")
    if isinstance(event, ev.TurnRequested):
        return reply(502, "5.5.1", f"{event.verb} not allowed")
    if isinstance(event, ev.QueueStartRequested):
        return reply(250, "2.0.0", "Queuing started")
    return reply(502, "5.5.1", "Not implemented")


def answering(kind: type, response: Reply, otherwise: Answer = default_answer) -> Answer:
    """``response`` to every ``kind`` of decision, ``otherwise`` to the rest."""
    return lambda event: response if isinstance(event, kind) else otherwise(event)


def accept_all(event: ev.Event) -> Reply:
    """250 to every decision (for receivers without STARTTLS)."""
    return reply(250, "2.0.0", "OK")


def pump(
    rx: Receiver, answer: Answer | None = default_answer, events: list | None = None, limit: int = 100_000
) -> object:
    """Run ``rx`` until it needs data, pauses or has closed; return which.

    Every event goes to ``events`` (when given); each decision is answered with
    ``answer(event)`` at once, or (``answer=None``) left pending, so that ``rx``
    pauses on it.  Bounded: more than ``limit`` events in a row fail the test."""
    for _ in range(limit):
        event = rx.next_event()
        if event in STOPS:
            return event
        if events is not None:
            events.append(event)
        if event.needs_answer and answer is not None:
            rx.answer(answer(event))
    raise AssertionError(f"the receiver gave {limit} events without waiting for anything")


def merge_chunks(events: list) -> list:
    """``events`` with consecutive ``DataChunk`` merged: their boundaries follow the input's."""
    merged: list = []
    for e in events:
        if isinstance(e, ev.DataChunk) and merged and isinstance(merged[-1], ev.DataChunk):
            merged[-1] = ev.DataChunk(merged[-1].data + e.data)
        else:
            merged.append(e)
    return merged


class Driver:
    """A ``Receiver`` driven by a test: bytes in, replies and events out.

    ``answer`` decides every decision at once (``None``: the test answers them
    itself, on ``rx``); ``limits``, ``extensions`` and the keywords go to the
    ``Receiver``, ``greeting`` to its ``start``."""

    def __init__(
        self,
        limits: Limits | None = None,
        extensions: list[Extension] | None = None,
        answer: Answer | None = default_answer,
        greeting: Reply | None = None,
        **kw,
    ) -> None:
        self.rx = Receiver(HOST, limits, extensions, **kw)
        self.rx.start(greeting)
        self.answer = answer
        self.events: list[ev.Event] = []
        self.raw = b""  # every reply byte since the greeting
        self.last: object = None  # what the last pump stopped on
        self.greeting = parse_replies(self.rx.data_to_send())

    def pump(self) -> object:
        self.last = pump(self.rx, self.answer, self.events)
        return self.last

    def send(self, data: bytes) -> list[Reply]:
        self.rx.receive_data(data)
        self.pump()
        return self.out()

    def out(self) -> list[Reply]:
        data = self.rx.data_to_send()
        self.raw += data
        return parse_replies(data)

    def codes(self, data: bytes) -> list[int]:
        return [r.code for r in self.send(data)]

    def one(self, data: bytes) -> tuple[int, str | None]:
        [r] = self.send(data)
        return r.code, r.enhanced

    def take_events(self) -> list[ev.Event]:
        events, self.events = self.events, []
        return events

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def ehlo(self, name: str = "client.example") -> tuple[str, ...]:
        """EHLO (answered 250); the keywords offered."""
        [r] = self.send(f"EHLO {name}\r\n".encode())
        assert r.code == 250
        self.take_events()
        return r.lines[1:]

    def tls(self) -> int:
        """The adapter's part after a 220: the handshake starts; returns the octets dropped."""
        assert self.last is ev.PAUSED
        dropped = self.rx.tls_started()
        self.pump()
        return dropped
