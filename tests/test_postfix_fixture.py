"""The private Postfix fixture (tests/postfix.py) works, before other tests rely on it.

Each test starts its own Postfix instance on a free loopback port (plus an ``smtp-sink``
as a next hop where needed) and stops everything in ``finally``/``with``; every wait is
bounded.
"""

from __future__ import annotations

import smtplib
import subprocess
from pathlib import Path

import pytest

from .conftest import require_tool
from .postfix import PrivatePostfix, SmtpSink, require_postfix

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def _postfix_installed():
    require_postfix()


def message(subject: str, to: str = "far@remote.test") -> bytes:
    return f"From: <a@client.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


def send(port: int, rcpts: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        refused = client.sendmail("a@client.test", rcpts, message(subject, rcpts[0]))
        assert not refused


def live(pids: list[int]) -> list[int]:
    """The pids that are still running (not gone, not zombies)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def pgrep(*args: str) -> list[int]:
    out = subprocess.run(["pgrep", *args], capture_output=True, text=True, timeout=10).stdout
    return live([int(pid) for pid in out.split()])


def test_start_stop_leaves_no_process(tmp_path):
    pf = PrivatePostfix(tmp_path / "pf")
    try:
        pf.start()
        master = pf.master_pid
        assert master is not None
        running = pf.processes(master)
        assert master in running and len(running) >= 3, running  # master, pickup, qmgr, smtpd...
        assert master in pgrep("-s", str(master))
        assert pf.postconf("inet_interfaces") == "127.0.0.1"
        assert pf.queue_ids() == []
    finally:
        pf.stop()
    assert pf.killed == [], "postfix stop left processes that had to be killed"
    assert pf.processes(master) == []
    assert pgrep("-s", str(master)) == []
    # No daemon carries the config dir on its command line (it travels as MAIL_CONFIG), so
    # this only guards against a stray "postfix -c DIR ..." command.
    assert pgrep("-f", str(pf.config_dir)) == []
    pf.stop()  # idempotent


def test_relays_to_smtp_sink(tmp_path):
    with SmtpSink(tmp_path / "sink") as sink, PrivatePostfix(tmp_path / "pf", relayhost=sink.port) as pf:
        send(pf.port, ["far@remote.test"], "relayed")
        pf.wait_for_log(r"to=<far@remote\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent")
        (dump,) = sink.wait_for_dumps(1)
        assert b"X-Mail-Args: <a@client.test>" in dump
        assert b"X-Rcpt-Args: <far@remote.test>" in dump
        assert b"Subject: relayed" in dump
        assert b"by postfix.test (Postfix)" in dump  # Postfix's Received: header
        pf.wait_for_empty_queue()


def test_transport_map_routes_one_domain(tmp_path):
    """``transport`` sends cust.test to the sink; everything else has no route (DNS is off)."""
    with (
        SmtpSink(tmp_path / "sink") as sink,
        PrivatePostfix(tmp_path / "pf", transport={"cust.test": f"[127.0.0.1]:{sink.port}"}) as pf,
    ):
        send(pf.port, ["joe@cust.test"], "routed")
        pf.wait_for_log(r"to=<joe@cust\.test>, relay=127\.0\.0\.1.*status=sent")
        (dump,) = sink.wait_for_dumps(1)
        assert b"X-Rcpt-Args: <joe@cust.test>" in dump


def test_refuses_to_relay_for_outsiders(tmp_path):
    """Relaying is for ``mynetworks`` only: an empty mynetworks makes loopback an outsider."""
    with PrivatePostfix(tmp_path / "pf", mynetworks="", relay_domains=["cust.test"]) as pf:
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as client:
            client.ehlo("outsider.test")
            client.mail("a@client.test")
            code, reply = client.rcpt("far@remote.test")
            assert code == 554 and b"Relay access denied" in reply
            code, _ = client.rcpt("joe@cust.test")  # a relay_domains domain is accepted
            assert code == 250


def test_delivers_into_maildir(tmp_path):
    with PrivatePostfix(tmp_path / "pf", mailboxes=["bob@local.test", "@other.test"]) as pf:
        send(pf.port, ["bob@local.test"], "for bob")
        send(pf.port, ["anyone@other.test"], "catch-all")
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as client:
            client.ehlo()
            client.mail("a@client.test")
            assert client.rcpt("nobody@local.test")[0] == 550  # not a mailbox here
        (bob,) = pf.wait_for(lambda: pf.maildir_messages("bob@local.test"), what="bob's Maildir")
        assert b"Subject: for bob" in bob and b"Delivered-To: bob@local.test" in bob
        (other,) = pf.wait_for(lambda: pf.maildir_messages("x@other.test"), what="the catch-all")
        assert b"Subject: catch-all" in other
    # stop() leaves the Maildirs under the given directory, and a restart keeps them.
    assert pf.maildir("bob@local.test").is_relative_to(tmp_path)
    assert len(pf.maildir_messages("bob@local.test")) == 1
    with pf:
        assert len(pf.maildir_messages("bob@local.test")) == 1
        send(pf.port, ["Bob@Local.test"], "second")
        pf.wait_for(lambda: len(pf.maildir_messages("bob@local.test")) == 2, what="the second message")
    assert [m.count(b"Subject: second") for m in pf.maildir_messages("bob@local.test")] == [0, 1]


def test_deferred_until_flush(tmp_path):
    """Next hop down: the message waits in the deferred queue; once it is up, flush() sends it.

    The retry timers are long here, so only flush() can explain a delivery within seconds.
    """
    sink = SmtpSink(tmp_path / "sink")  # its port is reserved but nothing listens yet
    slow = {"queue_run_delay": "300s", "minimal_backoff_time": "300s", "maximal_backoff_time": "600s"}
    pf = PrivatePostfix(tmp_path / "pf", relayhost=sink.port, **slow)
    try:
        pf.start()
        send(pf.port, ["far@remote.test"], "deferred")
        (entry,) = pf.wait_for(
            lambda: [e for e in pf.queue() if e["queue_name"] == "deferred"], what="a deferred message"
        )
        assert entry["recipients"][0]["address"] == "far@remote.test"
        assert "Connection refused" in entry["recipients"][0]["delay_reason"]
        mailq = pf.mailq()
        assert entry["queue_id"] in mailq and "Connection refused" in mailq
        assert sink.dumps() == []

        sink.start()
        pf.flush()
        (dump,) = sink.wait_for_dumps(1, timeout=15)
        assert b"Subject: deferred" in dump
        pf.wait_for_empty_queue()
    finally:
        try:
            pf.stop()
        finally:
            sink.stop()


def test_etrn_server_role(tmp_path):
    """The ETRN setup from interop-notes.md: mail for cust.test is held until ETRN cust.test."""
    sink = SmtpSink(tmp_path / "sink")
    pf = PrivatePostfix(
        tmp_path / "pf",
        relay_domains=["cust.test"],
        transport={"cust.test": f"etrnhold:[127.0.0.1]:{sink.port}"},
        main={
            "fast_flush_domains": "$relay_domains",
            "defer_transports": "etrnhold",
            "smtpd_etrn_restrictions": "permit_mynetworks, reject",
        },
        master=["etrnhold unix - - n - - smtp"],
    )
    try:
        sink.start()
        pf.start()
        send(pf.port, ["joe@cust.test"], "held")
        (held,) = pf.wait_for(
            lambda: [e for e in pf.queue() if "deferred transport" in str(e["recipients"])],
            what="mail held by defer_transports",
        )
        # ETRN flushes what the fast-flush log lists, which lags the queue a little.
        pf.wait_for(lambda: held["queue_id"] in pf.fast_flush_ids("cust.test"), what="the fast-flush log")
        assert sink.dumps() == []
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as client:
            client.ehlo("customer.test")
            assert client.has_extn("etrn")
            assert client.docmd("ETRN", "other.test")[0] == 459
            assert client.docmd("ETRN", "cust.test")[0] == 250
        (dump,) = sink.wait_for_dumps(1)
        assert b"X-Rcpt-Args: <joe@cust.test>" in dump
        pf.wait_for_empty_queue()
    finally:
        try:
            pf.stop()
        finally:
            sink.stop()


def test_requires_starttls(tmp_path):
    """A Postfix server that insists on STARTTLS (smtpd_tls_security_level = encrypt)."""
    openssl = require_tool("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=postfix.test"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    tls = {"smtpd_tls_security_level": "encrypt", "smtpd_tls_chain_files": f"{key}, {cert}"}
    with PrivatePostfix(tmp_path / "pf", mailboxes=["bob@local.test"], main=tls) as pf:
        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.has_extn("starttls")
            code, reply = client.mail("a@client.test")
            assert code == 530 and b"STARTTLS" in reply
            client.starttls()
            client.ehlo("client.test")
            assert not client.sendmail(
                "a@client.test", ["bob@local.test"], message("secret", "bob@local.test")
            )
        (got,) = pf.wait_for(lambda: pf.maildir_messages("bob@local.test"), what="the TLS message")
        assert b"Subject: secret" in got and b"with ESMTPS" in got
