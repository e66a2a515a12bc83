"""The shipped example lab runs: TURN, ATRN and ETRN sites exchange mail through
their provider, a site whose line is mostly down gets its mail when the line
comes up, and the far host's full mailbox is retried until it takes the mail."""

from __future__ import annotations

import smtplib

import pytest_twisted
from twisted.internet import threads

from smtppeer.lab.lab import Lab
from smtppeer.lab.topology import load_topology

from .conftest import REPO

EXAMPLE = REPO / "examples" / "lab" / "dialup-network.toml"


def send(address, sender, recipients, subject):
    with smtplib.SMTP(*address, timeout=30) as client:
        return client.sendmail(sender, recipients, f"Subject: {subject}\r\n\r\nbody\r\n".encode())


@pytest_twisted.async_yield_fixture
async def example(tmp_path):
    topology = load_topology(EXAMPLE)
    topology.http = None  # the API has tests of its own
    lab = Lab(topology, data_dir=str(tmp_path / "lab"))
    await lab.start()
    try:
        yield lab
    finally:
        await lab.stop()


@pytest_twisted.inlineCallbacks
def test_an_atrn_site_sends_to_an_etrn_site_through_the_provider(example):
    lab = example
    held = lab.wait_until(lambda: lab.hosts["provider"].held("gamma"), what="gamma's mail held")
    yield threads.deferToThread(send, lab.hosts["beta"].smtp, "b@beta.test", ["g@gamma.test"], "to gamma")
    yield held
    outcome = yield lab.hosts["gamma"].poll()  # ETRN: the provider connects back
    assert outcome.ok, outcome.line()
    [message] = yield lab.wait_for_messages("gamma", 1, {"subject": "to gamma"}, timeout=30)
    assert message.mailbox == "g@gamma.test"
    beta = yield lab.hosts["beta"].poll()  # and beta's ATRN poll works, with nothing for it
    assert beta.ok, beta.line()


@pytest_twisted.inlineCallbacks
def test_a_site_whose_line_is_down_gets_its_mail_when_the_line_comes_up(example):
    lab = example
    assert not lab.link("alpha-line").up  # "up every 15m for 2m": down at the start
    held = lab.wait_until(lambda: lab.hosts["provider"].held("alpha"), what="alpha's mail held")
    yield threads.deferToThread(send, lab.hosts["gamma"].smtp, "g@gamma.test", ["a@alpha.test"], "to alpha")
    yield held
    yield lab.wait_for_no_messages("alpha", 0.5)
    with lab.link_up("alpha-line"):  # alpha calls in as soon as its line is up
        [message] = yield lab.wait_for_messages("alpha", 1, {"subject": "to alpha"}, timeout=30)
    assert message.mailbox == "a@alpha.test"


@pytest_twisted.inlineCallbacks
def test_the_far_hosts_full_mailbox_is_retried_until_it_takes_the_mail(example):
    lab = example
    provider = lab.hosts["provider"]
    deferred = lab.wait_for_event("deferred", host="provider", timeout=30)
    yield threads.deferToThread(send, provider.smtp, "x@provider.test", ["busy@far.test"], "busy")
    for attempt in (1, 2):  # the fault fires twice; each retry is asked for at once
        record = yield deferred
        assert record.fields["reply"].startswith("452 4.2.2"), attempt
        deferred = lab.wait_for_event("deferred", host="provider", timeout=30)
        provider.assembly.runner.flush()
    deferred.addErrback(lambda f: None).cancel()  # no third
    [message] = yield lab.wait_for_messages("far", 1, {"mailbox": "busy@far.test"}, timeout=30)
    assert message.subject == "busy"
    fault = lab.faults.get("busy-mailbox")
    assert (fault.fired, fault.matched) == (2, 3)
