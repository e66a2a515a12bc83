"""The durable spool: commit point, recovery after a crash, updates, hold queues."""

from __future__ import annotations

import json
import os

import pytest_twisted

from smtppeer.store.spool import DELIVERED, FAILED, HELD, PENDING, Envelope, Recipient, Spool


def envelope(queue_id: str, *rcpts: Recipient) -> Envelope:
    return Envelope(
        id=queue_id,
        reverse_path="a@x.test",
        recipients=list(rcpts) or [Recipient("u@y.test", route={"relay": "tcp:host=127.0.0.1:port=25"})],
        arrival=1_800_000_000.0,
        params={"BODY": "8BITMIME"},
        client={"helo": "x.test", "address": "127.0.0.1"},
    )


@pytest_twisted.inlineCallbacks
def test_a_committed_message_has_body_and_envelope(spool):
    msg = spool.new_message(envelope("Q1"), b"Received: x\r\n")
    msg.write(b"Subject: hi\r\n\r\nbody\r\n")
    result = yield msg.finish()
    assert result.code == 250 and "Q1" in result.text
    assert spool.ids() == ["Q1"]
    with open(spool.body_path("Q1"), "rb") as f:
        assert f.read() == b"Received: x\r\nSubject: hi\r\n\r\nbody\r\n"
    loaded = spool.load("Q1")
    expected = envelope("Q1")
    expected.size = 34
    expected.eight_bit = False
    assert loaded == expected
    assert os.listdir(spool.incoming) == []
    raw = json.loads(open(spool.envelope_path("Q1")).read())  # readable by an administrator
    assert raw["recipients"][0]["state"] == PENDING


@pytest_twisted.inlineCallbacks
def test_the_envelope_says_whether_the_message_is_8bit(spool):
    """Recorded as the body arrives, so that the relay knows which messages a next hop
    without 8BITMIME needs converted without reading them (issue 14, item 3)."""
    for queue_id, header, chunks, eight_bit in [
        ("E1", b"Received: x\r\n", [b"Subject: a\r\n\r\n", b"ascii\r\n"], False),
        ("E2", b"Received: x\r\n", [b"Subject: a\r\n\r\n", b"caf\xc3\xa9\r\n"], True),
        ("E3", "Received: from h\u00e9\r\n".encode(), [b"\r\nx\r\n"], True),
    ]:
        msg = spool.new_message(envelope(queue_id), header)
        for chunk in chunks:
            msg.write(chunk)
        yield msg.finish()
        assert spool.load(queue_id).eight_bit is eight_bit, queue_id
    # An envelope written before this was recorded says nothing: None, not False.
    path = spool.envelope_path("E1")
    raw = json.loads(open(path).read())
    del raw["eight_bit"]
    with open(path, "w") as f:
        json.dump(raw, f)
    assert spool.load("E1").eight_bit is None


def test_aborted_message_leaves_nothing(spool):
    msg = spool.new_message(envelope("Q2"), b"R: 1\r\n")
    msg.write(b"partial")
    msg.abort()
    assert os.listdir(spool.incoming) == [] and spool.ids() == []


def test_recovery_removes_everything_no_250_covered(spool):
    # a crash during DATA: a body in incoming/
    open(os.path.join(spool.incoming, "Q3.eml"), "wb").write(b"half")
    # a crash between the body's rename and the envelope's: a body without envelope
    open(spool.body_path("Q4"), "wb").write(b"whole, never acknowledged")
    # a crash while rewriting an envelope: a temporary next to the committed one
    open(spool.body_path("Q5"), "wb").write(b"acknowledged")
    open(spool.envelope_path("Q5"), "wb").write(envelope("Q5").to_json())
    open(spool.envelope_path("Q5") + ".tmp", "wb").write(b'{"torn')
    report = spool.recover()
    assert report == {
        "incoming_removed": 1,
        "orphan_bodies_removed": 1,
        "temporaries_removed": 1,
        "queued": 1,
    }
    assert spool.ids() == ["Q5"]
    assert sorted(os.listdir(spool.queue)) == ["Q5.eml", "Q5.json"]


@pytest_twisted.inlineCallbacks
def test_updates_are_durable_and_a_finished_entry_is_removed(spool):
    rcpts = [Recipient("u@y.test", route={"relay": "tcp:host=h:port=25"}), Recipient("v@y.test")]
    msg = spool.new_message(envelope("Q6", *rcpts), b"")
    msg.write(b"x\r\n")
    yield msg.finish()
    env = spool.load("Q6")
    env.recipients[0].state = DELIVERED
    env.recipients[1].attempts, env.recipients[1].last_reply = 1, "451 4.4.1 try later"
    yield spool.update(env)
    again = spool.load("Q6")
    assert [r.state for r in again.recipients] == [DELIVERED, PENDING]
    assert again.recipients[1].last_reply == "451 4.4.1 try later"
    again.recipients[1].state = FAILED
    yield spool.update(again)
    assert spool.ids() == ["Q6"]  # kept until the failure is reported (its bounce quotes the body)
    assert [r.address for r in spool.load("Q6").unreported()] == ["v@y.test"]
    again.recipients[1].notified = True
    yield spool.update(again)
    assert spool.ids() == [] and os.listdir(spool.queue) == []


@pytest_twisted.inlineCallbacks
def test_hold_queue_returns_exactly_the_messages_held_for_a_peer(spool):
    for queue_id, peer in (("H1", "dialup"), ("H2", "other"), ("H3", "dialup")):
        msg = spool.new_message(
            envelope(queue_id, Recipient(f"u@{peer}.test", state=HELD, route={"hold": peer})), b""
        )
        msg.write(b"x\r\n")
        yield msg.finish()
    mixed = envelope(
        "H4", Recipient("a@y.test"), Recipient("b@dialup.test", state=HELD, route={"hold": "dialup"})
    )
    msg = spool.new_message(mixed, b"")
    yield msg.finish()
    assert [e.id for e in spool.held_for("dialup")] == ["H1", "H3", "H4"]
    assert [r.address for r in spool.load("H4").held_for("dialup")] == ["b@dialup.test"]
    # the hold queue survives a restart of the spool
    reopened = Spool(spool.root, spool.committer)
    reopened.recover()
    assert [e.id for e in reopened.held_for("dialup")] == ["H1", "H3", "H4"]


def test_an_unreadable_envelope_is_skipped_not_fatal(spool):
    open(spool.envelope_path("BAD"), "wb").write(b"not json")
    open(spool.body_path("BAD"), "wb").write(b"x")
    assert list(spool.envelopes()) == []
    assert spool.ids() == ["BAD"]  # left for an administrator to look at


@pytest_twisted.inlineCallbacks
def test_discard_unfinished_removes_only_a_dead_writers_unpublished_files(spool):
    """A worker killed mid-message: its incoming body, and an entry it had not
    published, go; its published entries and everyone else's files stay."""
    mine = "00000000000000AB0001"  # IDs carry the writer's pid bits at [13:16] (ids.py)
    msg = spool.new_message(envelope(mine[:-1] + "2"), b"")
    msg.write(b"Subject: published\r\n\r\nx\r\n")
    yield msg.finish()
    leftovers = {
        os.path.join(spool.incoming, mine + ".eml"): b"half a body",
        spool.body_path(mine[:-1] + "3"): b"renamed, envelope never written",
        spool.envelope_path(mine[:-1] + "4") + ".tmp": b"{}",
    }
    others = {
        os.path.join(spool.incoming, "0000000000000CD0001.eml"): b"another process, mid-DATA",
        spool.envelope_path("0000000000000CD0002") + ".tmp": b"{}",
    }
    for path, data in {**leftovers, **others}.items():
        with open(path, "wb") as f:
            f.write(data)
    removed = spool.discard_unfinished(lambda queue_id: queue_id[13:16] == "0AB")
    assert removed == len(leftovers)
    assert not any(os.path.exists(p) for p in leftovers)
    assert all(os.path.exists(p) for p in others)
    assert spool.ids() == [mine[:-1] + "2"]  # what was published is untouched
