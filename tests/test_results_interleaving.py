"""Results, their writes and their bounces interleaved, step by step.

A real disk decides when a write finishes and whether it fails; these tests
decide instead, one step at a time, to reach the orders a busy service meets
only by chance: a result refused while a retry of the same message is under
way, two sweeps' retries at once, a result written while a retry is bouncing.
The spool here is a stand-in that holds each write until the test settles it
(the real one, on a real full disk, is in ``test_disk_full.py``); the bounce
is held the same way.  Each case failed before ``_settle`` and
``retry_unsaved`` took turns.
"""

from __future__ import annotations

import errno
import json
import random

import pytest
from twisted.internet import defer, task

from smtppeer.activity import Activity
from smtppeer.engine import reply
from smtppeer.relay.queue import Queue, RunnerSettings
from smtppeer.relay.results import Results
from smtppeer.store.spool import FAILED, PENDING, Envelope, Recipient

REFUSED = reply(550, "5.1.1", "No such user")


class HeldSpool:
    """Each ``update`` waits until the test says it was written, or refused (ENOSPC)."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred] = []
        self.written: list[bytes] = []  # the envelopes written, as JSON

    def update(self, envelope: Envelope) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        d.snapshot = envelope.to_json()
        self.waiting.append(d)
        return d

    def write(self) -> None:
        d = self.waiting.pop(0)
        self.written.append(d.snapshot)
        d.callback(None)

    def refuse(self) -> None:
        self.waiting.pop(0).errback(OSError(errno.ENOSPC, "No space left on device"))


class HeldBounces(Results):
    """Bounces are recorded, and each is queued when the test says so."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bounces: list[tuple[list[str], defer.Deferred]] = []

    async def _bounce(self, envelope, failed) -> None:
        d: defer.Deferred = defer.Deferred()
        self.bounces.append(([r.address for r in failed], d))
        await d

    def made(self) -> list[list[str]]:
        return [addresses for addresses, _ in self.bounces]


@pytest.fixture
def results():
    clock, queue, spool = task.Clock(), Queue(), HeldSpool()
    results = HeldBounces(
        "h.test", queue, spool, None, RunnerSettings(), clock, random.Random(1),
        deliver_locally=None, look_again=lambda queue_id: None, added=lambda envelope: None,
        activity=Activity(clock),
    )  # fmt: skip
    envelope = Envelope(
        "Q1", "s@x.test", [Recipient(a, PENDING, {"relay": "r"}) for a in ("a@y.test", "b@y.test")], 0.0
    )
    queue.entries[envelope.id] = envelope
    return results, spool, envelope


def fail(results: Results, envelope: Envelope, index: int) -> defer.Deferred:
    rcpt = envelope.recipients[index]
    return defer.ensureDeferred(results.record(envelope, [rcpt], {rcpt.address: REFUSED}))


def test_a_result_refused_while_its_message_is_retried_is_kept_and_bounced_later(results):
    results, spool, envelope = results
    fail(results, envelope, 0)
    spool.refuse()  # a's state: kept
    retry = defer.ensureDeferred(results.retry_unsaved())
    spool.write()  # the retry writes a's state, and bounces a ...
    fail(results, envelope, 1)
    spool.refuse()  # ... while b's state is refused: kept again, not lost when the retry ends
    results.bounces[0][1].callback(None)
    spool.write()  # a notified
    assert results.made() == [["a@y.test"], ["b@y.test"]]  # the retry's bounce looks again
    results.bounces[1][1].callback(None)
    spool.write()  # b notified
    while spool.waiting:  # the pass takes up what was kept meanwhile
        spool.write()
    assert retry.called and results.unsaved == {}
    assert results.made() == [["a@y.test"], ["b@y.test"]]
    last = json.loads(spool.written[-1])["recipients"][1]
    assert (last["state"], last["notified"]) == (FAILED, True)  # on disk: failed, and bounced
    assert "Q1" not in results.queue.entries  # every recipient final and reported: it may go


def test_two_sweeps_retry_one_at_a_time_and_bounce_once(results):
    results, spool, envelope = results
    for rcpt in envelope.recipients:
        rcpt.state = FAILED
    results.unsaved[envelope.id] = envelope
    first = defer.ensureDeferred(results.retry_unsaved())
    spool.write()
    second = defer.ensureDeferred(results.retry_unsaved())  # the next sweep, the first still bouncing
    assert second.called and not spool.waiting
    results.bounces[0][1].callback(None)
    spool.write()
    assert first.called and first.result is None
    assert results.made() == [["a@y.test", "b@y.test"]] and results.unsaved == {}


def test_a_result_written_while_a_retry_bounces_leaves_the_bounce_to_it(results):
    results, spool, envelope = results
    fail(results, envelope, 0)
    spool.refuse()
    defer.ensureDeferred(results.retry_unsaved())
    spool.write()  # bouncing a
    second = fail(results, envelope, 1)
    spool.write()  # b's state written: its bounce is left to the one under way
    assert second.called and results.made() == [["a@y.test"]]
    results.bounces[0][1].callback(None)
    spool.write()  # a notified; then it looks again
    assert results.made() == [["a@y.test"], ["b@y.test"]]
    results.bounces[1][1].callback(None)
    spool.write()
    assert all(r.notified for r in envelope.recipients) and results.unsaved == {}
