"""A budget of failed AUTHs per client address, across sessions (issue 13, item 3).

Three failures close a session, but 50 sessions from one address tried 150
passwords in 0.2 s.  Here a listener in the test's reactor (SMTPPeerFactory
with the AUTH extension and an ``AuthBudget`` on an injected ``task.Clock``)
is logged in to with smtplib over real loopback sockets, one session per
attempt, each in a thread so the reactor serves it meanwhile.
"""

from __future__ import annotations

import base64
import smtplib

import pytest_twisted
from twisted.internet import defer, task, threads

from smtppeer.engine.auth import Auth
from smtppeer.engine.extensions import default_extensions
from smtppeer.peer.clients import AuthBudget
from smtppeer.policy.accounts import Accounts, Login

from .peerutil import Listener, MemoryHooks

PASSWORD = "correct horse"
FAILURES = 4  # the budget: failed AUTHs from one address before it is refused


def attempt(port: int, password: str, source: str = "127.0.0.1") -> tuple[int, str, bool]:
    """One session, one ``AUTH PLAIN``: (code, enhanced code, whether the server then closed)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0)) as s:
        s.ehlo("guesser.test")
        token = base64.b64encode(f"\0alice\0{password}".encode()).decode()
        code, text = s.docmd("AUTH", "PLAIN " + token)
        try:
            closed = s.noop()[0] == 421
        except smtplib.SMTPServerDisconnected:
            closed = True
    return code, text.decode()[:5], closed


@defer.inlineCallbacks
def listening(clock: task.Clock, budget: AuthBudget | None):
    accounts = Accounts([Login("alice", PASSWORD)])
    extensions = [*default_extensions(), Auth(accounts.lookup, mechanisms=("PLAIN",), allow_clear=True)]
    listener = Listener("b.test", MemoryHooks(), clock=clock, extensions=extensions, auth_budget=budget)
    port = yield listener.start()
    return listener, port


@pytest_twisted.inlineCallbacks
def test_failures_across_sessions_back_off_then_close_and_a_success_forgets(logged):
    clock = task.Clock()
    budget = AuthBudget(clock, failures=FAILURES, backoff=60, backoff_max=600)
    listener, port = yield listening(clock, budget)

    def guess(password: str = "wrong", source: str = "127.0.0.1"):
        return threads.deferToThread(attempt, port, password, source)

    try:
        for _ in range(FAILURES):  # each in a session of its own: the per-session limit never bites
            assert (yield guess()) == (535, "5.7.8", False)
        # the budget is spent: refused before the password is even looked at, right or wrong
        assert (yield guess(PASSWORD)) == (454, "4.7.0", False)
        assert (yield guess(PASSWORD, source="127.0.0.2")) == (235, "2.7.0", False)  # another address
        for _ in range(FAILURES - 1):
            assert (yield guess()) == (454, "4.7.0", False)
        # it keeps asking while refused: past the hard limit, 421 and the session is closed
        assert (yield guess()) == (421, "4.7.0", True)
        assert (yield guess(PASSWORD)) == (421, "4.7.0", True)
        clock.advance(60)  # the back-off is over: one attempt gets through ...
        assert (yield guess()) == (535, "5.7.8", False)
        assert (yield guess(PASSWORD)) == (454, "4.7.0", False)  # ... and failing doubled it
        clock.advance(60)
        assert (yield guess(PASSWORD)) == (454, "4.7.0", False)
        clock.advance(60)
        assert (yield guess(PASSWORD)) == (235, "2.7.0", False)  # a success forgets the failures
        for _ in range(FAILURES - 1):
            assert (yield guess()) == (535, "5.7.8", False)
        for peer in listener.peers:
            yield peer.done
    finally:
        yield listener.stop()
    backoffs = [line for line in logged if "refusing its AUTH" in line]
    assert backoffs == [
        "AUTH from 127.0.0.1: 4 failures; refusing its AUTH (454) for 60s",
        "AUTH from 127.0.0.1: 5 failures; refusing its AUTH (454) for 120s",
    ]
    assert [line for line in logged if "while refused" in line] == [
        "AUTH from 127.0.0.1: 5 attempts while refused; closing its sessions at AUTH (421) for 60s"
    ]


@pytest_twisted.inlineCallbacks
def test_the_budget_is_quiet_forgetting_after_backoff_max_and_cancelled_exchanges_do_not_count():
    clock = task.Clock()
    budget = AuthBudget(clock, failures=2, backoff=60, backoff_max=600)
    listener, port = yield listening(clock, budget)
    try:
        assert (yield threads.deferToThread(attempt, port, "wrong"))[0] == 535
        clock.advance(600)  # quiet for backoff_max: forgotten
        assert (yield threads.deferToThread(attempt, port, "wrong"))[0] == 535
        assert (yield threads.deferToThread(attempt, port, PASSWORD))[0] == 235  # one short of the budget

        def cancelled() -> int:
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
                s.ehlo("c.test")
                assert s.docmd("AUTH", "PLAIN")[0] == 334
                return s.docmd("*")[0]

        for _ in range(5):  # a cancelled exchange tests no password: not a failure
            assert (yield threads.deferToThread(cancelled)) == 501
        assert (yield threads.deferToThread(attempt, port, PASSWORD))[0] == 235
        for peer in listener.peers:
            yield peer.done
    finally:
        yield listener.stop()


@pytest_twisted.inlineCallbacks
def test_without_a_budget_only_the_session_limit_holds():
    """What issue 13 found: every new session gets three more guesses."""
    listener, port = yield listening(task.Clock(), None)
    try:
        for _ in range(3 * FAILURES):
            assert (yield threads.deferToThread(attempt, port, "wrong"))[0] == 535
        for peer in listener.peers:
            yield peer.done
    finally:
        yield listener.stop()


def test_many_addresses_failing_once_each_do_not_grow_the_table_without_bound():
    clock = task.Clock()
    budget = AuthBudget(clock, failures=3, backoff=60, backoff_max=600)
    for n in range(5000):
        budget.failed(f"10.0.{n // 256}.{n % 256}")
    clock.advance(600)  # quiet for backoff_max: all forgotten, swept out as the next ones come
    for n in range(5000):
        budget.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(budget._clients) == 5000
    assert budget.check("10.0.0.1", "b.test") is None and budget.check(None, "b.test") is None


def test_the_back_off_doubles_up_to_backoff_max():
    clock = task.Clock()
    budget = AuthBudget(clock, failures=1, backoff=60, backoff_max=100)
    budget.failed("192.0.2.1")  # 60 s
    clock.advance(60)
    assert budget.check("192.0.2.1", "b.test") is None
    budget.failed("192.0.2.1")  # 120 s, but at most 100
    clock.advance(99)
    assert budget.check("192.0.2.1", "b.test").code == 454
    clock.advance(1)
    assert budget.check("192.0.2.1", "b.test") is None
