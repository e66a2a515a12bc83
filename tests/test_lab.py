"""A lab of real smtppeer hosts in this process: mail moves between dial-up sites
through their provider only when their links are up; faults strike as asked."""

from __future__ import annotations

import smtplib

import pytest
import pytest_twisted
from twisted.internet import threads

from smtppeer.lab.lab import Lab, MessageScan
from smtppeer.lab.topology import loads_topology

TWO_SITES = """
[hosts.provider]
domains = ["provider.test"]

[hosts.alpha]
role = "dialup"
domains = ["alpha.test"]
provider = "provider"
poll = { method = "turn", every = "1h" }

[hosts.beta]
role = "dialup"
domains = ["beta.test"]
provider = "provider"
poll = { method = "turn", every = "1h" }
"""


def send(address: tuple[str, int], sender: str, recipients: list[str], subject: str) -> dict:
    with smtplib.SMTP(*address, timeout=30) as client:
        return client.sendmail(sender, recipients, f"Subject: {subject}\r\n\r\nhello\r\n".encode())


@pytest_twisted.async_yield_fixture
async def two_sites(tmp_path):
    lab = Lab(loads_topology(TWO_SITES, "two-sites.toml"), data_dir=str(tmp_path / "lab"))
    await lab.start()
    try:
        yield lab
    finally:
        await lab.stop()


@pytest_twisted.inlineCallbacks
def test_mail_from_one_dialup_site_reaches_another_through_the_provider(two_sites):
    lab = two_sites
    alpha = lab.hosts["alpha"]
    received = lab.wait_for_event("received", host="provider", timeout=20)
    yield threads.deferToThread(send, alpha.smtp, "a@alpha.test", ["b@beta.test"], "across")
    yield received  # alpha sends through its provider at once; the provider holds it for beta
    assert [e["recipients"] for e in lab.hosts["provider"].held("beta")] == [
        [
            {
                "address": "b@beta.test",
                "state": "held",
                "relay": None,
                "hold": "beta",
                "attempts": 0,
                "last_reply": None,
            }
        ]
    ]
    assert lab.hosts["beta"].messages() == []
    outcome = yield lab.hosts["beta"].poll()
    assert outcome.ok and outcome.received == 1
    [message] = yield lab.wait_for_messages("beta", 1, {"subject": "across"}, timeout=20)
    assert message.mailbox == "b@beta.test"
    yield lab.wait_until(lambda: not lab.hosts["provider"].held("beta"), what="the hold queue emptied")


@pytest_twisted.inlineCallbacks
def test_a_link_down_keeps_mail_queued_and_the_site_polls_when_it_comes_up(two_sites):
    lab = two_sites
    with lab.link_down("alpha-provider"):
        deferred = lab.wait_for_event("deferred", host="alpha", timeout=20)
        yield threads.deferToThread(
            send, lab.hosts["alpha"].smtp, "a@alpha.test", ["p@provider.test"], "later"
        )
        assert (yield deferred).fields["recipient"] == "p@provider.test"
        yield lab.wait_for_no_messages("provider", 0.5)
        polled = lab.wait_for_event("polled", host="alpha", timeout=20)
    # up again: alpha polls at once, which sends what it had queued
    assert (yield polled).fields["sent"] == 1
    messages = yield lab.wait_for_messages("provider", 1, timeout=20)
    assert [m.subject for m in messages] == ["later"], [m.raw for m in messages]


@pytest_twisted.inlineCallbacks
def test_a_452_fault_on_one_recipient_is_retried_and_then_delivered(two_sites):
    lab = two_sites
    lab.add_fault(
        {
            "host": "provider",
            "phase": "rcpt",
            "recipient": "busy@*",
            "reply": "452 4.2.2 Mailbox full",
            "times": 1,
        }
    )
    fired = lab.wait_for_event("fault", host="provider", timeout=20)
    deferred = lab.wait_for_event("deferred", host="alpha", timeout=20)
    yield threads.deferToThread(send, lab.hosts["alpha"].smtp, "a@alpha.test", ["busy@provider.test"], "busy")
    assert (yield fired).fields["fault"].startswith("fault-")
    assert (yield deferred).fields["reply"].startswith("452 4.2.2")
    # the retry (forced now rather than after the back-off) gets through
    lab.hosts["alpha"].assembly.runner.flush()
    [message] = yield lab.wait_for_messages("provider", 1, {"mailbox": "busy@provider.test"}, timeout=20)
    assert message.subject == "busy"


@pytest_twisted.inlineCallbacks
def test_waits_see_a_bounce_land_in_a_local_senders_maildir(two_sites):
    lab = two_sites
    lab.add_fault({"host": "provider", "phase": "rcpt", "recipient": "gone@*", "reply": "550 5.1.1 Gone"})
    landed = lab.wait_for_messages("alpha", 1, {"mailbox": "a@alpha.test"}, timeout=600)
    quiet = lab.wait_for_no_messages("alpha", duration=600)
    bounced = lab.wait_for_event("bounced", host="alpha", timeout=20)
    yield threads.deferToThread(send, lab.hosts["alpha"].smtp, "a@alpha.test", ["gone@provider.test"], "gone")
    yield bounced
    # both waits heard it with the bounce itself (no event "received": it was not sent to alpha)
    assert landed.called and quiet.called
    [message] = yield landed
    assert message.header("Return-Path") == "<>" and "gone@provider.test" in message.raw.decode()
    with pytest.raises(AssertionError, match="alpha received 1 message"):
        yield quiet


LINK = (
    '[hosts.a]\ndomains = ["a.test"]\n[hosts.b]\ndomains = ["b.test"]\n[links.x]\nfrom = "a"\nto = "b"\n{}\n'
)


@pytest.mark.parametrize(
    "bad, error",
    [
        (
            '[hosts.a]\ndomains = ["a.test"]\nrole = "dialup"\n',
            'two.toml: hosts.a: a dial-up host needs a "provider"',
        ),
        (
            '[hosts.a]\ndomains = ["a.test"]\n[links.x]\nfrom = "a"\nto = "b"\n',
            'two.toml: links.x.to: no host named "b"',
        ),
        (LINK.format('bandwidth = "fast"'), 'two.toml: links.x.bandwidth: "fast" is not a bandwidth'),
        (LINK.format('bandwidth = "1X/s"'), 'two.toml: links.x.bandwidth: "1X" is not a size'),
        (LINK.format("bandwidth = 0"), "two.toml: links.x.bandwidth: 0 is too small: at least 1 octets per"),
    ],
)
def test_a_wrong_topology_is_one_line_naming_the_key(bad, error):
    from smtppeer.service.configfile import ConfigError

    with pytest.raises(ConfigError) as raised:
        loads_topology(bad, "two.toml")
    assert str(raised.value).startswith(error)


@pytest.mark.parametrize(
    "written, octets", [(2048, 2048), ("64K/s", 65536), ("1 MiB / s", 1024**2), ("100/S", 100)]
)
def test_a_link_bandwidth_is_a_size_per_second(written, octets):
    value = f'"{written}"' if isinstance(written, str) else written
    assert (
        loads_topology(LINK.format(f"bandwidth = {value}"), "two.toml").links["x"].toxics.bandwidth == octets
    )


@pytest_twisted.inlineCallbacks
def test_a_host_keeps_transcripts_of_its_sessions(two_sites):
    lab = two_sites
    yield threads.deferToThread(send, lab.hosts["provider"].smtp, "x@else.test", ["p@provider.test"], "seen")
    yield lab.wait_for_messages("provider", 1, timeout=20)
    text = [t.as_dict()["text"] for t in lab.hosts["provider"].transcripts.sessions]
    [session] = [t for t in text if "FROM:<x@else.test>" in t]  # smtplib says "mail FROM:"
    assert "C: mail FROM:<x@else.test>" in session and "S: 250 2.0.0 Ok: queued as" in session


@pytest_twisted.inlineCallbacks
def test_a_scan_of_messages_follows_the_maildirs_as_they_change(two_sites):
    """What every wait looks through after each event: files come and go under it."""
    lab = two_sites
    provider = lab.hosts["provider"]
    scan = MessageScan(provider, {"subject": "keep*"})
    for subject in ("keep 1", "drop", "keep 2"):
        yield threads.deferToThread(send, provider.smtp, "x@else.test", ["p@provider.test"], subject)
    yield lab.wait_for_messages("provider", 3, timeout=20)
    assert [m.subject for m in scan.matching()] == ["keep 1", "keep 2"]
    first = scan.matching()[0]
    assert provider.delete_messages(first.key) == 1
    assert [m.subject for m in scan.matching()] == ["keep 2"]
    yield threads.deferToThread(send, provider.smtp, "x@else.test", ["p@provider.test"], "keep 3")
    yield lab.wait_for_messages("provider", 3, timeout=20)
    assert [m.subject for m in scan.matching()] == ["keep 2", "keep 3"]
    assert [m.key for m in scan.matching()] == [m.key for m in provider.messages({"subject": "keep*"})]


SENDING_LIMITS = """
[hosts.a]
domains = ["a.test"]
config = { limits = { outgoing_connections_per_destination = 1, messages_per_connection = 2 } }

[hosts.b]
role = "local"
domains = ["b.test"]
"""


@pytest_twisted.inlineCallbacks
def test_the_sending_limits_of_the_configuration_shape_the_connections(tmp_path):
    """Five messages due at once for one destination, one connection allowed to
    it and two messages per connection: three sessions, one after another."""
    lab = Lab(loads_topology(SENDING_LIMITS, "limits.toml"), data_dir=str(tmp_path / "lab"))
    yield lab.start()
    try:
        a, b = lab.hosts["a"], lab.hosts["b"]
        with lab.link_down("a-b"):
            for n in range(5):
                yield threads.deferToThread(send, a.smtp, "s@a.test", ["r@b.test"], f"m{n}")
            yield lab.wait_until(
                lambda: (
                    len(a.pending()) == 5 and all(r["attempts"] for e in a.pending() for r in e["recipients"])
                ),
                what="five messages deferred",
            )
        assert a.assembly.runner.flush() == 5
        yield lab.wait_for_messages("b", 5, timeout=30)
        yield lab.wait_until(lambda: not a.queue(), what="a's queue emptied")
        sessions = [t.as_dict()["text"] for t in b.transcripts.sessions]
        assert [text.count("C: DATA") for text in sessions] == [2, 2, 1], sessions
    finally:
        yield lab.stop()


def send_big(address, size: int) -> None:
    body = ("Subject: big\r\n\r\n" + ("z" * 76 + "\r\n") * (size // 78)).encode()
    with smtplib.SMTP(*address, timeout=30) as client:
        client.sendmail("a@alpha.test", ["p@provider.test"], body)


@pytest_twisted.inlineCallbacks
def test_a_link_that_resets_mid_message_loses_nothing_and_duplicates_nothing(two_sites):
    """Reset after 3000 octets, in the middle of DATA: the provider keeps nothing of
    the message (no final dot), alpha defers it; once the link is clean, one copy."""
    lab = two_sites
    link = lab.link("alpha-provider")
    link.set_toxics(reset_after=3000)
    deferred = lab.wait_for_event("deferred", host="alpha", timeout=20)
    yield threads.deferToThread(send_big, lab.hosts["alpha"].smtp, 10_000)
    record = yield deferred
    assert record.fields["reply"].startswith("451 ")
    assert lab.hosts["provider"].messages() == [] and link.stats.cut >= 1
    link.set_toxics(reset_after=None)
    lab.hosts["alpha"].assembly.runner.flush()
    [message] = yield lab.wait_for_messages("provider", 1, timeout=20)
    assert message.subject == "big" and len(message.raw) > 10_000
    yield lab.wait_until(lambda: not lab.hosts["alpha"].pending(), what="alpha's queue empty")
    yield lab.wait_for_no_messages("provider", 0.3)
    assert len(lab.hosts["provider"].messages()) == 1
