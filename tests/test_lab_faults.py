"""Faults: when they fire (times, nth, every, rate, window, seeded chance) and what
they do at each phase, against real clients on loopback."""

from __future__ import annotations

import smtplib
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from smtppeer.lab.faults import Fault
from smtppeer.lab.lab import Lab
from smtppeer.lab.topology import Action, FaultSpec, Phase, loads_topology
from smtppeer.testing import capture_topology, start_capture


def fires(spec: FaultSpec, at: list[float]) -> list[bool]:
    fault = Fault(spec, started=0.0)
    return [fault.fires(now) for now in at]


def spec(**kw) -> FaultSpec:
    return FaultSpec("h", Phase.RCPT, Action.DISCONNECT, **kw)


@pytest.mark.parametrize(
    ("kw", "at", "expected"),
    [
        ({}, [0, 1, 2], [True, True, True]),
        ({"times": 2}, [0, 1, 2, 3], [True, True, False, False]),
        ({"nth": 3}, [0, 1, 2, 3], [False, False, True, False]),
        ({"every": 2}, [0, 1, 2, 3], [False, True, False, True]),
        ({"every": 2, "times": 1}, [0, 1, 2, 3], [False, True, False, False]),
        ({"rate": (2, 60.0)}, [0, 1, 2, 3, 100, 101, 102], [False, False, True, True, False, False, True]),
        ({"after": 10, "until": 20}, [5, 10, 19, 20], [False, True, True, False]),
    ],
)
def test_when_a_fault_fires(kw, at, expected):
    assert fires(spec(**kw), at) == expected


def test_a_seeded_probability_repeats_itself():
    first = fires(spec(probability=0.5, seed=42), list(range(200)))
    assert first == fires(spec(probability=0.5, seed=42), list(range(200)))
    assert 60 < sum(first) < 140  # about half
    assert first != fires(spec(probability=0.5, seed=7), list(range(200)))


def talk(address, lines: list[bytes]) -> list[bytes]:
    """A raw client: the greeting, then each line and its reply (all reply lines)."""
    out = []
    with socket.create_connection(address, timeout=20) as s:
        f = s.makefile("rb")
        out.append(f.readline())
        for line in lines:
            s.sendall(line + b"\r\n")
            while True:
                try:
                    reply = f.readline()
                except ConnectionResetError:  # a cut connection: reset, not closed
                    reply = b""
                out.append(reply)
                if not reply or reply[3:4] != b"-":
                    break
            if not out[-1]:
                break
    return out


@pytest_twisted.async_yield_fixture
async def peer(tmp_path):
    capture = await start_capture(data_dir=tmp_path / "capture")
    try:
        yield capture
    finally:
        await capture.stop()


@pytest.mark.parametrize(
    ("fault", "lines", "expected"),
    [
        ({"phase": "connect", "reply": "421 4.3.2 Not today"}, [], [b"421 4.3.2 Not today"]),
        ({"phase": "ehlo", "reply": "554 5.7.1 Go away"}, [b"EHLO c.test"], [b"220", b"554 5.7.1 Go away"]),
        (
            {"phase": "mail", "sender": "spam@*", "reply": "550 5.7.1 No"},
            [b"HELO c.test", b"MAIL FROM:<spam@x.test>", b"MAIL FROM:<ok@x.test>"],
            [b"220", b"250", b"550 5.7.1 No", b"250 2.1.0"],
        ),
        (
            {"phase": "data", "reply": "451 4.3.0 Not now"},
            [b"HELO c.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<u@example.test>", b"DATA"],
            [b"220", b"250", b"250", b"250", b"451 4.3.0 Not now"],
        ),
        (
            {"phase": "mail", "disconnect": True},
            [b"HELO c.test", b"MAIL FROM:<a@x.test>"],
            [b"220", b"250", b""],
        ),
    ],
)
@pytest_twisted.inlineCallbacks
def test_what_a_fault_does_at_each_phase(peer, fault, lines, expected):
    with peer.fault(**fault) as active:
        replies = yield threads.deferToThread(talk, peer.address, lines)
    assert [r.rstrip(b"\r\n")[: len(e)] for r, e in zip(replies, expected, strict=True)] == expected
    assert active.fired == 1


@pytest_twisted.inlineCallbacks
def test_auth_can_be_refused_by_a_fault(tmp_path):
    text = '[hosts.mx]\ndomains = ["mx.test"]\nconfig = { users = { alice = { password = "pw" } } }\n'
    lab = Lab(loads_topology(text), data_dir=str(tmp_path / "lab"))
    yield lab.start()
    try:
        with lab.fault(host="mx", phase="auth", reply="454 4.7.0 Temporary authentication failure"):
            replies = yield threads.deferToThread(
                talk, lab.hosts["mx"].smtp, [b"EHLO c.test", b"AUTH PLAIN AGFsaWNlAHB3"]
            )
        assert replies[-1].startswith(b"454 4.7.0")
        replies = yield threads.deferToThread(
            talk, lab.hosts["mx"].smtp, [b"EHLO c.test", b"AUTH PLAIN AGFsaWNlAHB3"]
        )
        assert replies[-1].startswith(b"235 ")  # the fault is gone with its block
    finally:
        yield lab.stop()


def send(address, subject: str) -> None:
    with smtplib.SMTP(*address, timeout=20) as client:
        client.sendmail("a@x.test", ["u@example.test"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


@pytest_twisted.inlineCallbacks
def test_accept_then_drop_stores_the_message_and_the_retry_is_a_duplicate(peer):
    """The message is on disk, the client never hears 250 and sends it again: two
    copies, which is what SMTP allows when the connection goes before the reply
    (RFC 5321 §6.1); docs/topology.rst says so."""
    with peer.fault(phase="end-of-data", accept_then_drop=True, times=1):
        with pytest.raises(smtplib.SMTPServerDisconnected):
            yield threads.deferToThread(send, peer.address, "twice")
        yield threads.deferToThread(send, peer.address, "twice")  # the client's retry
    messages = yield peer.wait_for_messages(2, {"subject": "twice"})
    assert len(messages) == 2


@pytest_twisted.inlineCallbacks
def test_a_delay_holds_the_greeting_on_the_labs_clock(tmp_path):
    clock = task.Clock()
    lab = Lab(capture_topology(), data_dir=str(tmp_path / "lab"), clock=clock)
    yield lab.start()
    try:
        lab.add_fault({"host": "capture", "phase": "connect", "delay": "30s"})
        greeted = threads.deferToThread(talk, lab.hosts["capture"].smtp, [b"QUIT"])
        for _ in range(50):  # the client waits: nothing before the lab's clock moves
            yield task.deferLater(reactor, 0.005, lambda: None)
        assert not greeted.called
        clock.advance(30)
        replies = yield greeted
        assert replies[0].startswith(b"220 ") and replies[1].startswith(b"221 ")
    finally:
        yield lab.stop()


@pytest_twisted.inlineCallbacks
def test_a_lab_that_stops_ends_a_session_a_delay_holds(tmp_path):
    clock = task.Clock()
    lab = Lab(capture_topology(), data_dir=str(tmp_path / "lab"), clock=clock)
    yield lab.start()
    try:
        lab.add_fault({"host": "capture", "phase": "connect", "delay": "30s"})
        fired = lab.wait_for_event("fault", host="capture")
        greeted = threads.deferToThread(talk, lab.hosts["capture"].smtp, [b"QUIT"])
        yield fired
        yield task.deferLater(reactor, 0, lambda: None)  # the fault fires, then the delay starts
    finally:
        yield lab.stop()
    replies = yield greeted  # no greeting: the 421 every session gets when its host stops
    assert replies == [b"421 4.3.2 capture.test Service shutting down\r\n", b""]
    assert not clock.getDelayedCalls()  # and the delay's timer went with the lab


@pytest_twisted.inlineCallbacks
def test_a_turn_refused_by_a_fault_fails_the_poll_and_keeps_the_mail_held(tmp_path):
    text = (
        '[hosts.provider]\ndomains = ["provider.test"]\n'
        '[hosts.site]\nrole = "dialup"\ndomains = ["site.test"]\nprovider = "provider"\n'
        'poll = { method = "turn", every = "1h" }\n'
    )
    lab = Lab(loads_topology(text), data_dir=str(tmp_path / "lab"))
    yield lab.start()
    try:
        yield lab.wait_for_event("polled", host="site", timeout=20)  # the first poll, at start
        yield threads.deferToThread(send_to, lab.hosts["provider"].smtp, "u@site.test")
        with lab.fault(host="provider", phase="turn", reply="450 4.3.0 Try later"):
            outcome = yield lab.hosts["site"].poll()
        assert not outcome.ok and "450 4.3.0" in outcome.line()
        assert lab.hosts["provider"].held("site")
        outcome = yield lab.hosts["site"].poll()
        assert outcome.ok and outcome.received == 1
    finally:
        yield lab.stop()


def send_to(address, recipient: str) -> None:
    with smtplib.SMTP(*address, timeout=20) as client:
        client.sendmail("a@x.test", [recipient], b"Subject: held\r\n\r\nbody\r\n")


def test_a_fault_given_badly_is_one_line():
    from smtppeer.lab.topology import TopologyReader
    from smtppeer.service.configfile import ConfigError

    reader = TopologyReader("request")
    for bad, words in [
        ({"host": "h", "phase": "rcpt"}, 'say what happens: "reply"'),
        ({"host": "h", "phase": "lunch", "disconnect": True}, '"lunch" is not one of'),
        ({"host": "h", "phase": "rcpt", "reply": "250 OK"}, "is not a reply"),
        ({"host": "h", "phase": "rcpt", "reply": "452 5.2.2 Full"}, "class"),
        ({"host": "h", "phase": "mail", "accept_then_drop": True}, 'only at phase = "end-of-data"'),
        ({"host": "h", "phase": "rcpt", "disconnect": True, "rate": "often"}, "is not a rate"),
    ]:
        with pytest.raises(ConfigError) as raised:
            reader.fault(bad, ())
        assert words in str(raised.value) and "\n" not in str(raised.value)
