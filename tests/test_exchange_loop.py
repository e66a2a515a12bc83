"""Issue 12, item 1: the example pair never passes mail round in a loop.

The provider holds a domain for the dial-up host that the dial-up host does
not accept itself (``.dialup.example.org``: every subdomain) while the
dial-up host routes everything that is not its own back to the provider.
Before the fix, such mail went round on every poll, two ``Received:``
headers richer each time, and never bounced.  Now the dial-up host refuses,
over the turned connection, mail it would only send back to the peer it
came from (``550 5.4.6``), and the provider bounces it on that first poll.
The shipped examples agree with each other, so the provider refuses such
mail at once.  Real twistd processes on loopback, as in
``test_exchange_examples``.
"""

from __future__ import annotations

import email
import smtplib

import pytest

from smtppeer.peer.tls import make_self_signed

from .conftest import free_port, wait_until
from .test_exchange_examples import EXAMPLES, Proc, adapt, maildir_count

SUBDOMAIN_HOLD = '".dialup.example.org" = "dialup"\n'


def subdomain_hold() -> dict[str, str]:
    """The replacement that makes the provider hold every subdomain for the dial-up host too."""
    if SUBDOMAIN_HOLD in (EXAMPLES / "provider.toml").read_text():
        return {}
    return {'"dialup.example.org" = "dialup"\n': '"dialup.example.org" = "dialup"\n' + SUBDOMAIN_HOLD}


def start_pair(tmp_path, provider_extra=None, dialup_extra=None):
    make_self_signed(
        "provider.example.org", str(tmp_path / "provider-cert.pem"), str(tmp_path / "provider-key.pem")
    )
    ports = {"2526": free_port(), "2366": free_port(), "2625": free_port(), "2527": free_port()}
    short = {'interval = "5m"': 'interval = "1s"', 'max_backoff = "1h"': 'max_backoff = "3s"'}
    provider = Proc(tmp_path, adapt("provider.toml", tmp_path, ports, provider_extra), ports["2625"])
    dialup_config = adapt("dialup.toml", tmp_path, ports, {**short, **(dialup_extra or {})})
    dialup = Proc(tmp_path, dialup_config, ports["2527"])
    return provider, dialup, ports


def spool_ids(tmp_path, host: str) -> list[str]:
    queue = tmp_path / f"{host}-data" / "spool" / "queue"
    return sorted(p.stem for p in queue.glob("*.json")) if queue.is_dir() else []


def test_a_held_domain_the_dialup_host_would_send_back_bounces_on_the_first_poll(tmp_path):
    """The issue's configuration: the provider also holds every subdomain for the dial-up host."""
    provider, dialup, ports = start_pair(tmp_path, provider_extra=subdomain_hold())
    try:
        provider.start()
        with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:
            s.sendmail(
                "boss@provider.example.org",
                ["dave@sub.dialup.example.org"],
                b"Subject: round and round\r\n\r\nx\r\n",
            )
        assert len(spool_ids(tmp_path, "provider")) == 1  # held for the dial-up host
        dialup.start()
        boss = tmp_path / "provider-data" / "mail" / "provider.example.org" / "boss"
        wait_until(lambda: maildir_count(boss) == 1, what="the bounce to the sender")
        wait_until(lambda: "poll provider: sent" in dialup.log(), what="the first poll's log line")
        [bounce_file] = (boss / "new").iterdir()
        bounce = email.message_from_bytes(bounce_file.read_bytes())
        assert bounce.get_content_type() == "multipart/report"
        text = bounce_file.read_bytes().decode()
        assert "dave@sub.dialup.example.org" in text and "5.4.6" in text
        # nothing kept anywhere: the message did not come back to be held again
        wait_until(lambda: not spool_ids(tmp_path, "provider"), what="the provider's spool to empty")
        assert not spool_ids(tmp_path, "dialup")
        assert "routing loop" in dialup.log().lower()
        polls = dialup.log().count("poll provider: sent")
        wait_until(lambda: dialup.log().count("poll provider: sent") >= polls + 2, what="two more polls")
        assert maildir_count(boss) == 1 and not spool_ids(tmp_path, "provider")
        assert not (tmp_path / "dialup-data" / "mail" / "sub.dialup.example.org").exists()
    finally:
        dialup.stop()
        provider.stop()


def test_the_shipped_examples_agree_the_provider_refuses_what_the_dialup_host_would_not_take(tmp_path):
    provider, dialup, ports = start_pair(tmp_path)
    try:
        provider.start()
        with smtplib.SMTP("127.0.0.1", ports["2625"]) as s:
            s.ehlo()
            s.mail("boss@provider.example.org")
            code, text = s.rcpt("dave@sub.dialup.example.org")
            assert code == 550, text
            assert s.rcpt("dave@dialup.example.org")[0] == 250
    finally:
        provider.stop()


@pytest.mark.parametrize("recipient", ["dave@sub.dialup.example.org", "x@other.dialup.example.org"])
def test_the_dialup_hosts_own_mail_for_a_domain_held_for_it_is_refused_by_the_provider(tmp_path, recipient):
    """The other half of the loop: what the dial-up host sends up that would be held for it again."""
    provider, dialup, ports = start_pair(tmp_path, provider_extra=subdomain_hold())
    try:
        provider.start()
        dialup.start()
        with smtplib.SMTP("127.0.0.1", ports["2527"]) as s:
            s.sendmail("carol@dialup.example.org", [recipient], b"Subject: up and back\r\n\r\nx\r\n")
        carol = tmp_path / "dialup-data" / "mail" / "dialup.example.org" / "carol"
        wait_until(lambda: maildir_count(carol) == 1, what="the bounce to carol on the dial-up host")
        [bounce_file] = (carol / "new").iterdir()
        text = bounce_file.read_bytes().decode()
        assert recipient in text and "5.4.6" in text
        wait_until(lambda: not spool_ids(tmp_path, "dialup"), what="the dial-up host's spool to empty")
        assert not spool_ids(tmp_path, "provider")
    finally:
        dialup.stop()
        provider.stop()


RELAY = """
hostname = "{name}.test"
data_dir = "{{data_dir}}"
listen = ["tcp:{port}:interface=127.0.0.1"]
[domains."{name}.test"]
catch_all = true
[routes]
"x.test" = "tcp:host=127.0.0.1:port={other}"
[limits]
max_received = 6
"""


def test_a_loop_no_peer_relationship_shows_ends_at_the_received_limit_with_a_bounce(twistd_config):
    """Two hosts that each route ``x.test`` to the other, as plain relays (no login, no poll): the
    ``Received:`` count (``max_received``, 100 by default as RFC 5321 §6.3 asks) is the backstop,
    and the refusal (554 5.4.6) comes back to the sender as a bounce, nothing dropped."""
    a_port, b_port = free_port(), free_port()
    b = twistd_config(RELAY.format(name="b", port=b_port, other=a_port), b_port, "b")
    a = twistd_config(RELAY.format(name="a", port=a_port, other=b_port), a_port, "a")
    with smtplib.SMTP("127.0.0.1", a.port) as s:
        s.sendmail("s@a.test", ["u@x.test"], b"Subject: ping-pong\r\n\r\nx\r\n")
    sender = a.maildir("a.test", "s")
    wait_until(lambda: maildir_count(sender) == 1, what="the bounce to the sender")
    text = next((sender / "new").iterdir()).read_bytes().decode()
    assert "u@x.test" in text and "554 5.4.6" in text
    for host in (a, b):
        queue = host.data_dir / "spool" / "queue"
        wait_until(lambda queue=queue: not list(queue.iterdir()), what="both spools to empty")
