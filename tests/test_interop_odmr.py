"""fetchmail as a real ODMR (RFC 2645) customer of a provider smtppeer.

fetchmail logs in to the provider's ODMR port (``AUTH CRAM-MD5``, its only
mechanism there), says ``ATRN`` with its ``fetchdomains``, and after the 250
connects to its ``smtphost`` -- here a customer smtppeer -- and pipes the two
connections together: the provider sends the held mail straight into the
customer's listener.  Outcomes are read on disk: the customer's Maildir and
the provider's hold queue.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, require_tool, wait_until
from .trustlab import CUSTOMER_PASSWORD, hold_mail, start_provider

pytestmark = pytest.mark.interop

README = (REPO / "README.rst").read_text()

CUSTOMER = """
hostname = "cust.test"
data_dir = "{data_dir}"

[[listen]]
endpoint = "tcp:%(port)d:interface=127.0.0.1"

[domains."cust.test"]
"""


def start_customer(twistd_config, port: int):
    """The customer's own smtppeer: final delivery for cust.test (catch-all)."""
    return twistd_config(CUSTOMER % {"port": port}, port, name="customer")


def readme_rc() -> str:
    """The fetchmail rc file of the README's trust section."""
    match = re.search(r"\n\n(    poll provider\.example\.org protocol ODMR.*?)\n\n", README, re.S)
    assert match, "the README lost its fetchmail example"
    return "\n".join(line[4:] for line in match.group(1).splitlines()) + "\n"


def fetchmail_odmr(
    tmp_path: Path,
    odmr_port: int,
    smtp_port: int,
    domains: str = "cust.test",
    password: str = CUSTOMER_PASSWORD,
) -> subprocess.CompletedProcess:
    """Run fetchmail once in ODMR mode (bounded); its verbose output in stdout."""
    fetchmail = require_tool("fetchmail")
    home = tmp_path / "fetchmail-home"
    home.mkdir(exist_ok=True)
    rc = home / "fetchmailrc"
    rc.write_text(  # the README's example, pointed at this lab
        readme_rc()
        .replace("provider.example.org", "127.0.0.1")
        .replace("service 366", f"service {odmr_port}")
        .replace('user "dialup" password "change me"', f'user "cust" password "{password}"')
        .replace("fetchdomains dialup.example.org", f"fetchdomains {domains}")
        .replace("smtphost localhost/25", f"smtphost 127.0.0.1/{smtp_port}")
    )
    rc.chmod(0o600)  # fetchmail refuses a readable rc file with a password in it
    env = dict(os.environ, FETCHMAILHOME=str(home), HOME=str(home), LC_ALL="C")
    return subprocess.run(
        [fetchmail, "-f", str(rc), "--nosyslog", "-v"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def maildir_files(customer, user: str) -> list[Path]:
    new = customer.maildir("cust.test", user) / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def all_delivered(customer) -> list[Path]:
    return sorted((customer.data_dir / "mail").glob("*/*/new/*"))


def test_fetchmail_odmr_receives_the_held_mail(tmp_path, twistd_config):
    provider = start_provider(twistd_config, tmp_path)
    customer = start_customer(twistd_config, provider.customer_port)
    hold_mail(provider, "joe@cust.test", "ann@cust.test", "zed@other.test")
    assert provider.held() == {"cust": ["joe@cust.test", "ann@cust.test"], "other": ["zed@other.test"]}

    done = fetchmail_odmr(tmp_path, provider.odmr_port, customer.port)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "AUTH CRAM-MD5" in output and "ATRN cust.test" in output, output

    [joe] = wait_until(lambda: maildir_files(customer, "joe"), what="joe's message at the customer")
    [ann] = wait_until(lambda: maildir_files(customer, "ann"), what="ann's message at the customer")
    assert b"Subject: held 0" in joe.read_bytes() and b"for joe@cust.test" in joe.read_bytes()
    assert b"Subject: held 1" in ann.read_bytes()
    # the hop through the pipe: the provider was the client, the customer the server
    assert b"Received: from provider.test ([127.0.0.1])\r\n\tby cust.test (smtppeer)" in joe.read_bytes()
    wait_until(lambda: "cust" not in provider.held(), what="cust's hold queue to empty")
    assert provider.held() == {"other": ["zed@other.test"]}
    assert [p.parent.parent.name for p in all_delivered(customer)] == ["ann", "joe"]
    # the results are logged just after they are on disk
    wait_until(
        lambda: all(f"{u}@cust.test delivered" in provider.log() for u in ("ann", "joe")),
        what="both deliveries in the provider's log",
    )
    log = provider.log()
    assert "AUTH CRAM-MD5 as cust from 127.0.0.1" in log, log
    assert "ATRN cust.test from cust: peer cust" in log, log


def test_fetchmail_odmr_wrong_password_releases_nothing(tmp_path, twistd_config):
    provider = start_provider(twistd_config, tmp_path)
    customer = start_customer(twistd_config, provider.customer_port)
    hold_mail(provider, "joe@cust.test")

    done = fetchmail_odmr(tmp_path, provider.odmr_port, customer.port, password="wrong")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "535 5.7.8" in output, output  # the refused AUTH, as fetchmail reports it
    assert "ODMR> ATRN" not in output, output
    log = wait_until(lambda: "AUTH CRAM-MD5 failed from 127.0.0.1" in provider.log() and provider.log())
    assert "ATRN cust.test from" not in log
    assert provider.held() == {"cust": ["joe@cust.test"]}
    assert all_delivered(customer) == []


def test_fetchmail_odmr_for_someone_elses_domain_gets_450(tmp_path, twistd_config):
    provider = start_provider(twistd_config, tmp_path)
    customer = start_customer(twistd_config, provider.customer_port)
    hold_mail(provider, "joe@cust.test", "zed@other.test")

    done = fetchmail_odmr(tmp_path, provider.odmr_port, customer.port, domains="other.test")
    output = done.stdout + done.stderr
    assert "ATRN other.test" in output, output
    assert "ODMR< 450 4.7.1 ATRN request refused: other.test is not yours" in output, output
    assert done.returncode != 0, output  # fetchmail 6.4: 4 (PS_PROTOCOL)
    assert "ATRN other.test refused to cust from 127.0.0.1" in provider.log()
    assert provider.held() == {"cust": ["joe@cust.test"], "other": ["zed@other.test"]}
    assert all_delivered(customer) == []
