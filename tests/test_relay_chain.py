"""Real twistd processes relaying to each other: by route, by source route, held mail."""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import smtplib
from pathlib import Path

import pytest

from .conftest import TwistdProcess, free_port, wait_until

MESSAGE = b"From: <x@src.test>\r\nTo: <u@c.test>\r\nSubject: chain\r\n\r\n.dot line\r\nbody\r\n"


def wait_for_files(directory: Path, count: int, timeout: float = 30.0) -> list[Path]:
    def enough() -> list[Path] | None:
        files = sorted(directory.glob("*")) if directory.is_dir() else []
        return files if len(files) >= count else None

    return wait_until(enough, timeout, f"{count} files in {directory}")


def read_maildir(path: Path) -> list[bytes]:
    box = mailbox.Maildir(str(path), factory=None, create=False)
    return [box.get_bytes(k) for k in sorted(box.keys())]


@pytest.fixture
def chain(twistd_peer):
    """C is the destination; B relays c.test to C; A relays b.test and c.test to B."""
    c = twistd_peer("--domain", "c.test", hostname="c.test")
    b = twistd_peer(
        "--domain", "b.test", "--route", f"c.test=tcp:host=127.0.0.1:port={c.port}", hostname="b.test"
    )
    route_b = f"tcp:host=127.0.0.1:port={b.port}"
    a = twistd_peer(
        "--domain",
        "a.test",
        "--route",
        f"b.test={route_b}",
        "--route",
        f"c.test={route_b}",
        hostname="a.test",
    )
    return a, b, c


def test_mail_is_relayed_along_routes_with_a_received_header_per_hop(chain):
    a, b, c = chain
    with smtplib.SMTP("127.0.0.1", a.port, local_hostname="client.test") as s:
        s.sendmail("x@src.test", ["u@c.test"], MESSAGE)
    [path] = wait_for_files(c.maildir("c.test", "u") / "new", 1)
    [raw] = read_maildir(c.maildir("c.test", "u"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Return-Path"] == "<x@src.test>"
    hops = [" ".join(h.split()) for h in msg.get_all("Received")]
    assert [h.split(" by ")[1].split(" ")[0] for h in hops] == ["c.test", "b.test", "a.test"]
    assert hops[2].startswith("from client.test ([127.0.0.1])")
    assert hops[1].startswith("from a.test ([127.0.0.1])") and hops[0].startswith("from b.test ")
    assert raw.endswith(b"\r\n.dot line\r\nbody\r\n")
    # nothing left behind in the relays' spools (a relay removes its entry after the next hop's 250,
    # which comes after the next hop has the message: soon after, not necessarily yet)
    for relay in (a, b):
        queue = relay.data_dir / "spool" / "queue"
        wait_until(
            lambda q=queue: not list(q.iterdir()),
            timeout=15,
            what=f"{relay.hostname}'s spool to empty",
            detail=lambda q=queue: sorted(p.name for p in q.iterdir()),
        )


def test_source_route_is_followed_and_recorded_in_the_reverse_path(chain):
    a, b, c = chain
    with smtplib.SMTP("127.0.0.1", a.port, local_hostname="client.test") as s:
        s.ehlo()
        assert s.mail("x@src.test")[0] == 250
        code, text = s.docmd("RCPT TO:<@a.test,@b.test:u@c.test>")
        assert code == 250, text
        code, text = s.data(MESSAGE)
        assert code == 250, text
    wait_for_files(c.maildir("c.test", "u") / "new", 1)
    [raw] = read_maildir(c.maildir("c.test", "u"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    # each source-route relay put itself in front of the reverse-path (RFC 821 §3.6)
    assert msg["Return-Path"] == "<@b.test,@a.test:x@src.test>"
    assert len(msg.get_all("Received")) == 3


def test_an_untrusted_client_cannot_relay_to_an_unrouted_domain(chain):
    a, _, _ = chain
    with smtplib.SMTP("127.0.0.1", a.port) as s:
        s.ehlo()
        s.mail("x@src.test")
        code, text = s.rcpt("victim@elsewhere.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, text = s.docmd("RCPT TO:<@a.test,@elsewhere.test:victim@far.test>")
        assert (code, text[:5]) == (550, b"5.7.1")
    assert list((a.data_dir / "spool" / "queue").iterdir()) == []


def test_a_mail_loop_is_refused_with_554_5_4_6(twistd_peer):
    a = twistd_peer("--max-received", "3")
    looped = b"".join(b"Received: from x by y; Sun, 29 Nov 2026 10:00:00 +0000\r\n" for _ in range(4))
    with smtplib.SMTP("127.0.0.1", a.port) as s:
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail("x@src.test", ["u@localhost"], looped + b"Subject: loop\r\n\r\nx\r\n")
    assert err.value.smtp_code == 554 and err.value.smtp_error.startswith(b"5.4.6")
    assert not (a.maildir("localhost", "u") / "new").exists() or not list(
        (a.maildir("localhost", "u") / "new").iterdir()
    )


def test_held_mail_stays_in_the_hold_queue_across_a_restart(twistd_peer):
    p = twistd_peer("--hold", "dialup.test=dialup", hostname="provider.test")
    with smtplib.SMTP("127.0.0.1", p.port) as s:
        for n in range(3):
            s.sendmail("x@src.test", [f"u{n}@dialup.test"], b"Subject: held\r\n\r\nx\r\n")
    queue = p.data_dir / "spool" / "queue"
    envelopes = sorted(queue.glob("*.json"))
    assert len(envelopes) == 3
    p.stop()
    p.start()
    after = sorted(queue.glob("*.json"))
    assert after == envelopes
    states = [json.loads(e.read_text())["recipients"][0] for e in after]
    assert {(r["state"], r["route"]["hold"]) for r in states} == {("held", "dialup")}


def test_next_hop_down_then_up_is_retried_in_a_real_run(twistd_peer):
    b_port = free_port()
    a = twistd_peer("--route", f"b.test=tcp:host=127.0.0.1:port={b_port}", "--retry-interval", "0.5")
    with smtplib.SMTP("127.0.0.1", a.port) as s:
        s.sendmail("x@src.test", ["u@b.test"], b"Subject: retried\r\n\r\nx\r\n")
    [envelope] = wait_for_files_glob(a.data_dir / "spool" / "queue", "*.json")
    wait_until(
        lambda: json.loads(envelope.read_text())["recipients"][0]["attempts"] >= 1,
        timeout=20,
        what="a delivery attempt recorded",
    )
    assert "Cannot connect" in json.loads(envelope.read_text())["recipients"][0]["last_reply"]
    b = TwistdProcess(a.data_dir.parent / "b-data", "--domain", "b.test", hostname="b.test")
    b.data_dir.mkdir()
    b.port = b_port
    b.args[b.args.index("--listen") + 1] = f"tcp:{b_port}:interface=127.0.0.1"
    b.start()
    try:
        wait_for_files(b.maildir("b.test", "u") / "new", 1)
    finally:
        b.stop()
    assert list((a.data_dir / "spool" / "queue").iterdir()) == []


def wait_for_files_glob(directory: Path, pattern: str, timeout: float = 10.0) -> list[Path]:
    return wait_until(lambda: sorted(directory.glob(pattern)), timeout, f"{pattern} in {directory}")


def test_a_refused_recipient_is_bounced_and_a_failed_bounce_is_not(twistd_peer):
    b = twistd_peer("--domain", "b.test", hostname="b.test")  # accepts b.test only
    a = twistd_peer(
        "--domain",
        "a.test",
        "--route",
        f"nowhere.test=tcp:host=127.0.0.1:port={b.port}",
        hostname="a.test",
    )
    with smtplib.SMTP("127.0.0.1", a.port) as s:
        s.sendmail("sender@a.test", ["u@nowhere.test"], b"Subject: will fail\r\n\r\nx\r\n")
        s.sendmail("remote@nowhere.test", ["v@nowhere.test"], b"Subject: bounce fails too\r\n\r\nx\r\n")
    # the local sender gets a delivery status notification
    [path] = wait_for_files(a.maildir("a.test", "sender") / "new", 1)
    dsn = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Return-Path"] == "<>"
    status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"][0]
    text = status.as_string()
    assert "Final-Recipient: rfc822; u@nowhere.test" in text
    assert "Status: 5.7.1" in text and "Action: failed" in text
    assert "Remote-MTA: dns; 127.0.0.1" in text  # the relay's host, not its endpoint description
    # the remote sender's bounce is refused as well: it is dropped, not bounced again
    wait_until(
        lambda: not list((a.data_dir / "spool" / "queue").glob("*.json")),
        timeout=20,
        what="the spool to drain",
    )
    assert "no bounce for a message from <>" in a.log()
    assert len(list((a.maildir("a.test", "sender") / "new").iterdir())) == 1
