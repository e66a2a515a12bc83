"""A real Postfix on loopback as smtppeer's next hop, and as a client relaying into smtppeer."""

from __future__ import annotations

import email
import email.policy
import smtplib

import pytest

from .conftest import wait_until
from .postfix import PrivatePostfix, require_postfix

MESSAGE = b"From: <x@src.test>\r\nSubject: through postfix\r\n\r\n.a dotted line\r\nbody\r\n"


@pytest.fixture(autouse=True)
def _postfix_available():
    require_postfix()


def test_postfix_as_next_hop_for_relayed_mail(tmp_path, twistd_peer):
    with PrivatePostfix(tmp_path / "pf", hostname="pf.test", mailboxes=["bob@pf.test"]) as pf:
        peer = twistd_peer("--route", f"pf.test=tcp:host=127.0.0.1:port={pf.port}", hostname="peer.test")
        with smtplib.SMTP("127.0.0.1", peer.port) as s:
            s.sendmail("x@src.test", ["bob@pf.test"], MESSAGE)
        wait_until(lambda: pf.maildir_messages("bob@pf.test"), what="Postfix to deliver")
        [raw] = pf.maildir_messages("bob@pf.test")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Subject"] == "through postfix"
        hops = [" ".join(h.split()) for h in msg.get_all("Received")]
        assert any("by peer.test (smtppeer)" in h for h in hops), hops
        assert raw.endswith(b"\n.a dotted line\nbody\n") or raw.endswith(b"\r\n.a dotted line\r\nbody\r\n")
        wait_until(lambda: not list((peer.data_dir / "spool" / "queue").iterdir()), what="empty spool")


def test_postfix_refusal_becomes_a_bounce_to_the_local_sender(tmp_path, twistd_peer):
    with PrivatePostfix(tmp_path / "pf", hostname="pf.test", mailboxes=["bob@pf.test"]) as pf:
        peer = twistd_peer(
            "--domain",
            "peer.test",
            "--route",
            f"pf.test=tcp:host=127.0.0.1:port={pf.port}",
            hostname="peer.test",
        )
        with smtplib.SMTP("127.0.0.1", peer.port) as s:
            s.sendmail("me@peer.test", ["nobody@pf.test"], MESSAGE)
        new = peer.maildir("peer.test", "me") / "new"
        wait_until(lambda: new.is_dir() and list(new.iterdir()), what="the bounce")
        [path] = list(new.iterdir())
        dsn = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert dsn.get_content_type() == "multipart/report"
        status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"][0].as_string()
        assert "Final-Recipient: rfc822; nobody@pf.test" in status
        assert "Status: 5.1.1" in status and "Action: failed" in status
        assert "Remote-MTA: dns; 127.0.0.1" in status


def test_postfix_as_a_client_relaying_into_smtppeer(tmp_path, twistd_peer):
    peer = twistd_peer("--domain", "peer.test", hostname="peer.test")
    with PrivatePostfix(
        tmp_path / "pf",
        hostname="pf.test",
        transport={"peer.test": f"[127.0.0.1]:{peer.port}"},
        relay_domains=["peer.test"],
    ) as pf:
        with smtplib.SMTP("127.0.0.1", pf.port) as s:
            s.sendmail("x@src.test", ["alice@peer.test"], MESSAGE)
        new = peer.maildir("peer.test", "alice") / "new"
        wait_until(lambda: new.is_dir() and list(new.iterdir()), what="smtppeer to receive from Postfix")
        pf.wait_for_empty_queue()
    [path] = list(new.iterdir())
    raw = path.read_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Return-Path"] == "<x@src.test>"
    hops = [" ".join(h.split()) for h in msg.get_all("Received")]
    assert hops[0].startswith("from pf.test ([127.0.0.1]) by peer.test (smtppeer) with ESMTP")
    assert "by pf.test (Postfix)" in hops[1]
    assert raw.endswith(b"\r\n.a dotted line\r\nbody\r\n")
