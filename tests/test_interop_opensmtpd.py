"""smtppeer's sender against OpenSMTPD, a server that enforces "no PIPELINING" (issue 14, item 4).

OpenSMTPD does not offer PIPELINING, and a command that arrives with more
input behind it gets ``500 5.5.1 Invalid command: Pipelining not supported``
and a hang-up.  A sender must then wait for each reply (RFC 2920 §3),
including the one to the RSET after a refused transaction, before the next
MAIL or the QUIT.  Every recipient is refused here (``tests/opensmtpd.py``).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from smtppeer.engine.sender import Envelope
from smtppeer.peer.hooks import ReceiverHooks, SenderJob

from .conftest import wait_until
from .opensmtpd import PrivateOpenSMTPD
from .peerutil import connect_sender

pytestmark = pytest.mark.interop


@pytest.fixture
def opensmtpd(tmp_path):
    with PrivateOpenSMTPD(tmp_path) as server:
        yield server


@pytest_twisted.inlineCallbacks
def test_refused_transactions_are_reset_in_lockstep_and_the_session_ends_with_quit(opensmtpd):
    body = b"Subject: refused\r\n\r\nnobody takes this\r\n"
    rcpts = [[f"u{n}@nowhere.test", f"v{n}@nowhere.test"] for n in range(3)]
    envelopes = [Envelope("a@sender.test", to, body) for to in rcpts]
    job = SenderJob(envelopes)
    peer = yield connect_sender("sender.test", ReceiverHooks(), job, opensmtpd.port)
    summary = yield peer.done.addTimeout(60, reactor)
    log = opensmtpd.log()
    assert "Pipelining not supported" not in log, log
    assert summary.clean and summary.error is None, (summary, log)
    for result in job.results:  # each recipient refused for good, none deferred by a hang-up
        assert {r.code for r in result.results.values()} == {550}, result
    assert len(job.results) == 3
    # smtpd logs the end of the session once it has seen our side close: a moment later
    wait_until(lambda: "smtp disconnected reason=quit" in opensmtpd.log(), what="OpenSMTPD's QUIT line")
