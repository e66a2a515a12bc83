"""The receiving policy decided with plain values: no protocol, no sockets.

Hooks are given a ``Session`` and a ``Transaction`` (values), so who may
relay, TURN, ATRN and ETRN is tested here by calling the policy, and the
spool and hold queues it consults are real (a spool on disk, a queue runner
that is not started).
"""

from __future__ import annotations

import pytest
import pytest_twisted

from smtppeer.engine.address import parse_path
from smtppeer.peer.hooks import SenderJob, Session
from smtppeer.policy.accounts import Accounts, Login
from smtppeer.policy.receiving import ReceivingPolicy
from smtppeer.policy.routing import Router
from smtppeer.relay.scheduler import QueueRunner
from smtppeer.store.committer import Committer
from smtppeer.store.maildir import MaildirStore
from smtppeer.store.spool import HELD, Envelope, Recipient

CUSTOMER = Session("192.0.2.10", "[192.0.2.10]", helo_name="cust.test", esmtp=True)


def path(text: str):
    return parse_path(f"<{text}>", reverse=False)[0]


@pytest.fixture
def policy(tmp_path, spool):
    """A provider holding mail for ``cust.test`` (peer ``cust``, login ``cust``)."""
    router = Router(
        "provider.test",
        ["provider.test"],
        routes={"*": "tcp:host=127.0.0.1:port=1"},
        holds={"cust.test": "cust", ".cust.test": "cust"},
        relay_from=["10.0.0.0/8"],
    )
    runner = QueueRunner("provider.test", spool, router)
    committer = Committer()
    accounts = Accounts([Login("cust", "s3cret", peer="cust"), Login("alice", "wonder")])
    policy = ReceivingPolicy(
        "provider.test",
        router,
        MaildirStore(str(tmp_path / "mail"), committer),
        spool,
        runner=runner,
        turn_peers={"cust": ["192.0.2.10"]},
        accounts=accounts,
        owned={"cust": ["cust.test", ".cust.test"]},
        peer_endpoints={"cust": "tcp:host=127.0.0.1:port=1"},
    )
    yield policy
    stopped = committer.stopService()
    if stopped is not None:
        pytest_twisted.blockon(stopped)


@pytest.fixture
def held(policy, spool):
    """One message held for ``cust`` (to u@cust.test), known to the runner."""

    @pytest_twisted.inlineCallbacks
    def hold(queue_id: str = "H1", address: str = "u@cust.test"):
        envelope = Envelope(queue_id, "a@example.net", [Recipient(address, HELD, {"hold": "cust"})], 0.0)
        sink = spool.new_message(envelope, b"")
        sink.write(b"Subject: held\r\n\r\nbody\r\n")
        yield sink.finish()
        policy.runner.entries[queue_id] = envelope
        return envelope

    return hold


@pytest.mark.parametrize(
    ("session", "rcpt", "code"),
    [
        (CUSTOMER, "u@cust.test", 250),  # a held domain: a destination of this host
        (CUSTOMER, "u@sub.cust.test", 250),
        (CUSTOMER, "u@example.net", 550),  # the * route: not for strangers
        (Session("10.1.2.3", helo_name="lan"), "u@example.net", 250),  # a relay_from network
        (Session("192.0.2.99", authenticated="alice", secure=True), "u@example.net", 250),  # a login
    ],
)
def test_who_may_send_where(policy, session, rcpt, code):
    assert policy.rcpt_to(session, path(rcpt), {}).code == code


@pytest_twisted.inlineCallbacks
def test_turn_by_login_releases_that_peers_hold_queue(policy, held):
    yield held()
    job = policy.turn(Session("198.51.100.7", authenticated="cust", secure=True))
    assert isinstance(job, SenderJob)
    assert [e.recipients for e in job.envelopes] == [["u@cust.test"]]
    job.abandon("test over")  # give the recipients back: they are marked as being sent
    yield policy.runner.idle()


@pytest.mark.parametrize(
    ("session", "expected"),
    [
        # a login that is nobody's peer, from the peer's own address
        (Session("192.0.2.10", authenticated="alice", offers_auth=True), None),
        # the peer's address, on a listener that does not trust addresses: log in first
        (Session("192.0.2.10", offers_auth=True), 530),
        # ... and where AUTH is not even offered: plain "not allowed"
        (Session("192.0.2.10"), None),
        # the peer's address on a listener with turn = true (the RFC 821 model)
        (Session("192.0.2.10", turn_by_address=True), "job"),
        # a stranger on the same listener
        (Session("192.0.2.11", turn_by_address=True), None),
        # a listener shared with worker processes never turns
        (Session("192.0.2.10", authenticated="cust", may_turn=False), 502),
    ],
)
@pytest_twisted.inlineCallbacks
def test_who_may_turn(policy, session, expected):
    decided = policy.turn(session)
    if expected == "job":
        assert isinstance(decided, SenderJob)
        decided.abandon("test over")
        yield policy.runner.idle()
    elif expected is None:
        assert decided is None  # the peer says 502 5.5.1
    else:
        assert decided.code == expected


@pytest_twisted.inlineCallbacks
def test_atrn_serves_a_domain_to_one_session_at_a_time_until_its_job_ends(policy, held):
    yield held("H1")
    session = Session("198.51.100.7", authenticated="cust", secure=True)
    first = policy.turn(session, "ATRN", ["cust.test"])
    assert isinstance(first, SenderJob)
    assert policy.turn(session, "ATRN", ["cust.test"]).code == 451  # served by the first
    first.abandon("connection lost")  # the session went before it could send anything
    yield policy.runner.idle()  # its "deferred" results are written, its recipients freed
    # the domain is free again, and the message is still held for the next session
    again = policy.turn(session, "ATRN", ["cust.test"])
    assert isinstance(again, SenderJob) and [e.recipients for e in again.envelopes] == [["u@cust.test"]]
    again.abandon("test over")
    yield policy.runner.idle()


@pytest.mark.parametrize(
    ("domains", "code"),
    [(["other.test"], 450), (["cust.test", "x.test"], 450), (["cust.test"], 453)],
)
def test_atrn_refusals(policy, domains, code):
    session = Session("198.51.100.7", authenticated="cust", secure=True)
    assert policy.turn(session, "ATRN", domains).code == code


def test_atrn_needs_a_login_that_is_a_peer(policy):
    assert policy.turn(Session("198.51.100.7", authenticated="alice"), "ATRN", []).code == 450


@pytest.mark.parametrize(
    ("session", "node", "kind", "code"),
    [
        (Session("192.0.2.10"), "cust.test", "domain", 251),  # its address, nothing held
        (Session("192.0.2.99"), "cust.test", "domain", 459),  # a stranger
        (Session("192.0.2.99", authenticated="cust"), "cust", "queue", 251),  # its login, #queue
        (Session("192.0.2.99", authenticated="alice"), "cust.test", "domain", 459),
        (Session("192.0.2.10"), "nobody.test", "domain", 459),
    ],
)
def test_who_may_etrn(policy, session, node, kind, code):
    assert policy.start_queue(session, node, kind).code == code


# -- routing loops (issue 12, item 1) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "rcpt", "code"),
    [
        # the peer itself (its login) sends mail that would be held for it again
        (Session("198.51.100.7", authenticated="cust", secure=True), "u@sub.cust.test", 550),
        (Session("198.51.100.7", authenticated="cust", secure=True), "u@cust.test", 550),
        # anyone else's mail for it is held, as ever
        (Session("198.51.100.7", authenticated="alice", secure=True), "u@sub.cust.test", 250),
        # its address identifies it on a listener that trusts addresses (turn = true) ...
        (Session("192.0.2.10", turn_by_address=True), "u@cust.test", 550),
        # ... and nowhere else: a local submitter may share an address with a peer
        (CUSTOMER, "u@cust.test", 250),
    ],
)
def test_mail_from_a_peer_that_would_be_held_for_it_again_is_a_loop(policy, session, rcpt, code):
    answer = policy.rcpt_to(session, path(rcpt), {})
    assert answer.code == code, answer
    if code == 550:
        assert str(answer).startswith("550 5.4.6 Routing loop: ")
        assert "held here for cust" in str(answer)


@pytest.fixture
def dialup_policy(tmp_path, spool):
    """A dial-up host (``dialup.test``) that routes everything else to its provider."""
    provider = "tcp:host=127.0.0.1:port=2"
    router = Router("dialup.test", ["dialup.test"], routes={"*": provider}, relay_from=["127.0.0.0/8"])
    committer = Committer()
    policy = ReceivingPolicy(
        "dialup.test",
        router,
        MaildirStore(str(tmp_path / "mail"), committer),
        spool,
        runner=QueueRunner("dialup.test", spool, router),
        peer_endpoints={"provider": provider},
    )
    yield policy
    stopped = committer.stopService()
    if stopped is not None:
        pytest_twisted.blockon(stopped)


def test_what_the_polled_peer_sends_over_the_turned_connection_may_not_go_back_to_it(dialup_policy):
    turned = Session("127.0.0.1", turned=True, esmtp=True)
    poll = dialup_policy.polling("provider")
    answer = poll.rcpt_to(turned, path("dave@sub.dialup.test"), {})
    assert str(answer) == (
        "550 5.4.6 Routing loop: sub.dialup.test is routed back to provider, where this mail came from"
    )
    assert poll.rcpt_to(turned, path("x@example.net"), {}).code == 550  # whatever the domain
    assert poll.rcpt_to(turned, path("dave@dialup.test"), {}).code == 250  # its own mail: delivered
    # the same address before any turn is a local client of the dial-up host: it relays
    assert poll.rcpt_to(Session("127.0.0.1"), path("x@example.net"), {}).code == 250
    # the policy itself does not know who is on the other end of a turned connection
    assert dialup_policy.polled is None
    assert dialup_policy.rcpt_to(turned, path("x@example.net"), {}).code == 250
    # the view shares the service's state
    assert poll.runner is dialup_policy.runner and poll._atrn_sessions is dialup_policy._atrn_sessions
