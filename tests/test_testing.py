"""smtppeer.testing and the pytest plugin: a capturing server and labs for other projects' tests."""

from __future__ import annotations

import smtplib
import textwrap

import pytest_twisted
from twisted.internet import threads

from smtppeer.lab.topology import loads_topology
from smtppeer.testing import start_capture, start_lab

from .conftest import REPO


def send(address, sender, recipients, subject):
    with smtplib.SMTP(*address, timeout=30) as client:
        return client.sendmail(sender, recipients, f"Subject: {subject}\r\n\r\nbody\r\n".encode())


@pytest_twisted.inlineCallbacks
def test_a_capturing_peer_keeps_mail_for_any_domain(tmp_path):
    peer = yield start_capture(data_dir=tmp_path / "capture")
    try:
        refused = yield threads.deferToThread(
            send, peer.address, "app@service.test", ["alice@example.test", "bob@elsewhere.example"], "Welcome"
        )
        assert refused == {}
        messages = yield peer.wait_for_messages(2, {"subject": "Welcome"})
        assert sorted(m.mailbox for m in messages) == ["alice@example.test", "bob@elsewhere.example"]
        assert messages[0].header("Return-Path") == "<app@service.test>"
    finally:
        yield peer.stop()


@pytest_twisted.inlineCallbacks
def test_a_capturing_peer_fails_on_purpose_inside_a_fault_block(tmp_path):
    peer = yield start_capture(data_dir=tmp_path / "capture")
    try:
        with peer.fault(phase="rcpt", recipient="full@*", reply="452 4.2.2 Mailbox full") as fault:
            refused = yield threads.deferToThread(
                send, peer.address, "a@b.test", ["full@example.test", "ok@example.test"], "half"
            )
            assert refused == {"full@example.test": (452, b"4.2.2 Mailbox full")}
            assert fault.fired == 1
        refused = yield threads.deferToThread(send, peer.address, "a@b.test", ["full@example.test"], "later")
        assert refused == {}  # the block is over: the fault is gone
        yield peer.wait_for_messages(2)
    finally:
        yield peer.stop()


@pytest_twisted.inlineCallbacks
def test_start_lab_takes_toml_text(tmp_path):
    lab = yield start_lab('[hosts.one]\ndomains = ["one.test"]\n', data_dir=tmp_path / "lab")
    try:
        assert set(lab.hosts) == {"one"} and lab.hosts["one"].smtp[1] > 0
    finally:
        yield lab.stop()


@pytest_twisted.inlineCallbacks
def test_start_lab_leaves_the_callers_topology_as_it_was(tmp_path):
    text = '[lab]\nhttp = "tcp:0:interface=127.0.0.1"\n[hosts.one]\ndomains = ["one.test"]\n'
    topology = loads_topology(text)
    lab = yield start_lab(topology, data_dir=tmp_path / "lab")
    try:
        assert lab.topology.http is None  # a test has the lab itself
        assert topology.http == "tcp:0:interface=127.0.0.1"  # a second start_lab of it is the same
    finally:
        yield lab.stop()


def test_the_pytest_plugin_gives_other_projects_smtp_peer_and_smtp_lab(pytester, monkeypatch):
    """Another project's test suite, run by pytest with the plugin, as its users would."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(
        test_app=textwrap.dedent(
            """
            import smtplib

            import pytest_twisted
            from twisted.internet.threads import deferToThread


            def signup(port, address):
                with smtplib.SMTP("127.0.0.1", port) as s:
                    s.sendmail("app@app.test", [address], b"Subject: Welcome aboard\\r\\n\\r\\nhi\\r\\n")


            @pytest_twisted.ensureDeferred
            async def test_welcome(smtp_peer):
                await deferToThread(signup, smtp_peer.port, "alice@example.test")
                [message] = await smtp_peer.wait_for_messages(1, {"subject": "Welcome*"})
                assert message.mailbox == "alice@example.test"


            @pytest_twisted.ensureDeferred
            async def test_lab(smtp_lab):
                lab = await smtp_lab('[hosts.mx]\\ndomains = ["mx.test"]\\n')
                await deferToThread(signup, lab.hosts["mx"].smtp[1], "u@mx.test")
                await lab.wait_for_messages("mx", 1)
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:smtppeer", "-p", "pytest_smtppeer", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)
