"""ETRN (RFC 1985) with real peers, in both directions.

- smtppeer as the ETRN *client*: a private Postfix holds mail for a domain
  (``defer_transports``, the set-up of interop-notes.md) until smtppeer's
  ``method = "etrn"`` poll -- triggered with ``smtppeer poll`` -- asks for it;
  Postfix then delivers over a new connection to smtppeer's listener.
- smtppeer as the ETRN *server*: ``fetchmail -p ETRN`` from an address the
  provider knows, and ``smtplib`` after STARTTLS + AUTH; the provider sends
  the held mail to the customer's own smtppeer over a new connection.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
from pathlib import Path

import pytest

from .conftest import free_port, require_tool, smtppeer, wait_until
from .postfix import PrivatePostfix, require_postfix
from .trustlab import CUSTOMER_PASSWORD, hold_mail, insecure_context, start_provider

pytestmark = pytest.mark.interop

DIALUP = """
hostname = "dial.test"
data_dir = "{data_dir}"

[[listen]]
endpoint = "tcp:%(port)d:interface=127.0.0.1"

[domains."dial.test"]

[peers.postfix]
endpoint = "tcp:host=127.0.0.1:port=%(postfix_port)d"

[[polls]]
peer = "postfix"
interval = "1h"
jitter = 0                  # the first poll at start-up, the next one in an hour: only ours count
method = "etrn"
domains = ["dial.test"]
"""

CUSTOMER = """
hostname = "cust.test"
data_dir = "{data_dir}"

[[listen]]
endpoint = "tcp:%(port)d:interface=127.0.0.1"

[domains."cust.test"]
"""


def delivered(proc, domain: str) -> list[Path]:
    """Every message in the Maildirs of ``domain`` at ``proc`` (``new/``)."""
    return sorted((proc.data_dir / "mail" / domain).glob("*/new/*"))


def mailbox_of(path: Path) -> str:
    return path.parent.parent.name


# -- smtppeer polls Postfix with ETRN ---------------------------------------------------


def test_smtppeer_etrn_poll_releases_mail_held_by_postfix(tmp_path, twistd_config):
    require_postfix()
    port = free_port()
    pf = PrivatePostfix(
        tmp_path / "pf",
        relay_domains=["dial.test"],
        transport={"dial.test": f"etrnhold:[127.0.0.1]:{port}"},
        main={
            "fast_flush_domains": "$relay_domains",
            "defer_transports": "etrnhold",
            "smtpd_etrn_restrictions": "permit_mynetworks, reject",
        },
        master=["etrnhold unix - - n - - smtp"],
    )
    with pf:
        dialup = twistd_config(DIALUP % {"port": port, "postfix_port": pf.port}, port, name="dialup")
        # the start-up poll (jitter 0) finds nothing; only what we trigger later can release mail
        wait_until(lambda: "poll postfix:" in dialup.log(), what="the start-up poll")

        with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as client:
            refused = client.sendmail(
                "someone@far.test", ["joe@dial.test"], b"Subject: via postfix\r\n\r\nheld by postfix\r\n"
            )
            assert not refused
        (held,) = pf.wait_for(
            lambda: [e for e in pf.queue() if "deferred transport" in str(e["recipients"])],
            what="mail held by defer_transports",
        )
        # ETRN flushes what the fast-flush log lists, which lags the queue a little
        pf.wait_for(lambda: held["queue_id"] in pf.fast_flush_ids("dial.test"), what="the fast-flush log")
        assert delivered(dialup, "dial.test") == []

        done = smtppeer("poll", "--data-dir", str(dialup.data_dir), "postfix", text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ETRN dial.test: 250" in done.stdout and done.stdout.rstrip().endswith("ok"), done.stdout

        [path] = wait_until(lambda: delivered(dialup, "dial.test"), what="Postfix to deliver after ETRN")
        raw = path.read_bytes()
        assert mailbox_of(path) == "joe"
        assert b"Subject: via postfix" in raw and b"held by postfix" in raw
        assert b"by postfix.test (Postfix)" in raw  # it really went through Postfix's queue
        assert raw.startswith(b"Return-Path: <someone@far.test>\r\nReceived: from postfix.test")
        pf.wait_for_empty_queue()
        pf.wait_for_log(r"to=<joe@dial\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent")


# -- clients ask smtppeer for ETRN ------------------------------------------------------


def fetchmail_etrn(tmp_path: Path, port: int, domains: str) -> subprocess.CompletedProcess:
    fetchmail = require_tool("fetchmail")
    home = tmp_path / "fetchmail-home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, FETCHMAILHOME=str(home), HOME=str(home), LC_ALL="C")
    argv = [
        fetchmail,
        "-v",
        "--nosyslog",
        "-p",
        "ETRN",
        "-P",
        str(port),
        "--fetchdomains",
        domains,
        "127.0.0.1",
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_fetchmail_etrn_from_a_known_address(tmp_path, twistd_config):
    provider = start_provider(twistd_config, tmp_path, cust_addresses=("127.0.0.1",))
    customer = twistd_config(
        CUSTOMER % {"port": provider.customer_port}, provider.customer_port, name="customer"
    )
    hold_mail(provider, "joe@cust.test", "ann@cust.test", "zed@other.test")

    done = fetchmail_etrn(tmp_path, provider.smtp_port, "other.test")
    output = done.stdout + done.stderr
    assert "ETRN other.test" in output and "459" in output, output
    assert done.returncode != 0, output
    assert provider.held() == {"cust": ["joe@cust.test", "ann@cust.test"], "other": ["zed@other.test"]}

    done = fetchmail_etrn(tmp_path, provider.smtp_port, "cust.test")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ETRN cust.test" in output and "253" in output, output

    wait_until(lambda: len(delivered(customer, "cust.test")) == 2, what="the held mail at the customer")
    assert sorted(mailbox_of(p) for p in delivered(customer, "cust.test")) == ["ann", "joe"]
    wait_until(lambda: "cust" not in provider.held(), what="cust's hold queue to empty")
    assert provider.held() == {"other": ["zed@other.test"]}
    done_line = "session with cust (ETRN): 2 of 2 messages delivered, clean"
    wait_until(lambda: done_line in provider.log(), what="the ETRN session's log line")  # logged last
    log = provider.log()
    assert "ETRN other.test refused to 127.0.0.1" in log, log
    assert "ETRN: sending 2 held messages to cust at tcp:host=127.0.0.1" in log, log


def test_etrn_after_starttls_and_auth(tmp_path, twistd_config):
    """No known address: ETRN only after AUTH as the owner; the node forms and their replies."""
    provider = start_provider(twistd_config, tmp_path)
    customer = twistd_config(
        CUSTOMER % {"port": provider.customer_port}, provider.customer_port, name="customer"
    )
    hold_mail(provider, "joe@cust.test", "zed@other.test")

    with smtplib.SMTP("127.0.0.1", provider.smtp_port, timeout=30) as s:
        s.ehlo("cust.test")
        assert s.has_extn("etrn")
        code, text = s.docmd("ETRN", "cust.test")  # not logged in, not a known address
        assert code == 459, text
        s.starttls(context=insecure_context())
        s.ehlo("cust.test")
        s.login("cust", CUSTOMER_PASSWORD)

        code, text = s.docmd("ETRN", "other.test")  # someone else's node
        assert code == 459 and b"other.test not allowed" in text, text
        assert provider.held() == {"cust": ["joe@cust.test"], "other": ["zed@other.test"]}

        code, text = s.docmd("ETRN", "cust.test")
        assert code == 253 and b"1 pending messages for node cust.test started" in text, text
        [joe] = wait_until(lambda: delivered(customer, "cust.test"), what="joe's message at the customer")
        assert mailbox_of(joe) == "joe" and b"for joe@cust.test" in joe.read_bytes()
        wait_until(lambda: "cust" not in provider.held(), what="cust's hold queue to empty")

        code, text = s.docmd("ETRN", "cust.test")  # nothing left
        assert code == 251, text

        hold_mail(provider, "ann@cust.test", "bob@cust.test")
        code, text = s.docmd("ETRN", "#cust")  # the queue form: everything held for the peer
        assert code == 253 and b"2 pending messages for node cust started" in text, text
        wait_until(
            lambda: len(delivered(customer, "cust.test")) == 3, what="the queue's mail at the customer"
        )
        code, text = s.docmd("ETRN", "#other")
        assert code == 459, text
    assert sorted(mailbox_of(p) for p in delivered(customer, "cust.test")) == ["ann", "bob", "joe"]
    wait_until(lambda: "cust" not in provider.held(), what="cust's hold queue to empty")
    assert provider.held() == {"other": ["zed@other.test"]}
    assert "AUTH " in provider.log() and " as cust from 127.0.0.1" in provider.log()


CUSTOMER_POLLING = (
    CUSTOMER
    + """
[peers.provider]
endpoint = "tcp:host=127.0.0.1:port=%(provider_port)d"
tls = "required"
username = "cust"
password = "%(password)s"

[[polls]]
peer = "provider"
interval = "1h"
jitter = 0                  # the first poll at start-up
method = "etrn"
domains = ["%(node)s"]
"""
)


@pytest.mark.parametrize("node", ["#cust", "@cust.test"], ids=["queue", "domain-and-subdomains"])
def test_smtppeer_etrn_poll_with_the_other_node_forms(tmp_path, twistd_config, node):
    """smtppeer polls smtppeer: ETRN ``#queue`` and ``@domain`` from the configuration,
    after STARTTLS and AUTH; the provider connects back with the held mail."""
    provider = start_provider(twistd_config, tmp_path)
    hold_mail(provider, "joe@cust.test", "zed@other.test")
    customer = twistd_config(
        CUSTOMER_POLLING
        % {
            "port": provider.customer_port,
            "provider_port": provider.smtp_port,
            "password": CUSTOMER_PASSWORD,
            "node": node,
        },
        provider.customer_port,
        name="customer",
    )
    [joe] = wait_until(lambda: delivered(customer, "cust.test"), what="joe's message at the customer")
    assert mailbox_of(joe) == "joe"
    wait_until(lambda: f"ETRN {node}: 253" in customer.log(), what="the poll's log line")
    wait_until(lambda: "cust" not in provider.held(), what="cust's hold queue to empty")
    assert provider.held() == {"other": ["zed@other.test"]}
