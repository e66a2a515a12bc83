"""The security table: every way to take someone else's mail, or to act before
trust is established, against a real provider process.  Each row must be
refused with the right reply and must not release a single held message.

The provider holds mail for ``cust.test`` (peer ``cust``) and ``other.test``
(peer ``other``); ``alice`` is a user with no domains (see ``trustlab``).
"""

from __future__ import annotations

import smtplib
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import wait_until
from .trustlab import (
    ALICE_PASSWORD,
    CUSTOMER_PASSWORD,
    OTHER_PASSWORD,
    RawSession,
    hold_mail,
    insecure_context,
    start_provider,
)

HELD = ["a@cust.test", "b@cust.test", "c@other.test"]


@pytest.fixture
def provider(twistd_config, tmp_path):
    provider = start_provider(twistd_config, tmp_path)
    hold_mail(provider, *HELD)
    before = provider.held()
    assert before == {"cust": ["a@cust.test", "b@cust.test"], "other": ["c@other.test"]}
    yield provider
    # the point of every row: nothing was released, and no delivery was even tried
    assert provider.held() == before
    log = provider.log()
    assert "releasing" not in log and "ETRN: sending" not in log


def session(port: int, ehlo: bool = True, source: str | None = None) -> RawSession:
    s = RawSession(port, source=source)
    assert s.reply()[0] == 220
    if ehlo:
        assert s.command("EHLO attacker.test")[0] == 250
    return s


def secured(port: int, user: str | None = None, password: str = "", source: str | None = None) -> RawSession:
    s = session(port, source=source)
    s.starttls()
    assert s.command("EHLO attacker.test")[0] == 250
    if user is not None:
        assert s.auth_plain(user, password) == 235
    return s


def test_turn_without_auth_is_refused(provider):
    s = session(provider.smtp_port)
    code, text = s.command("TURN")
    assert (code, text[0][:5]) == (530, "5.7.0")
    assert s.command("QUIT")[0] == 221


def test_turn_as_one_peer_never_releases_anothers_mail(twistd_config, tmp_path):
    """``other`` may TURN, but only its own (empty) queue comes: cust's mail stays."""
    provider = start_provider(twistd_config, tmp_path)
    hold_mail(provider, "a@cust.test", "b@cust.test")
    s = secured(provider.smtp_port, "other", OTHER_PASSWORD)
    assert s.command("TURN")[0] == 250
    s.send(b"220 attacker.test ESMTP\r\n")  # now we are the receiver
    assert s.line().startswith(b"EHLO provider.test")
    s.send(b"250 attacker.test\r\n")
    assert s.line() == b"QUIT\r\n"  # nothing to send to other: straight to QUIT
    s.send(b"221 bye\r\n")
    s.close()
    assert provider.held() == {"cust": ["a@cust.test", "b@cust.test"]}
    assert "releasing 0 held messages to other" in provider.log()


def test_atrn_for_a_domain_the_identity_does_not_own(provider):
    s = secured(provider.odmr_port, "cust", CUSTOMER_PASSWORD)
    code, text = s.command("ATRN other.test")
    assert code == 450 and "other.test" in text[0]
    code, _ = s.command("ATRN cust.test,other.test")
    assert code == 450
    assert s.command("QUIT")[0] == 221


def test_atrn_before_auth(provider):
    s = secured(provider.odmr_port)
    code, text = s.command("ATRN cust.test")
    assert (code, text[0][:5]) == (530, "5.7.0")


def test_atrn_as_a_user_without_domains(provider):
    s = secured(provider.odmr_port, "alice", ALICE_PASSWORD)
    assert s.command("ATRN")[0] == 450
    assert s.command("ATRN cust.test")[0] == 450


def test_odmr_port_refuses_mail_commands(provider):
    s = secured(provider.odmr_port, "cust", CUSTOMER_PASSWORD)
    for command in ("MAIL FROM:<x@y.test>", "TURN", "ETRN cust.test", "VRFY cust"):
        code, text = s.command(command)
        assert (code, text[0][:5]) == (502, "5.5.1"), command


def test_auth_plain_without_tls(provider):
    s = session(provider.smtp_port)
    code, text = s.command("AUTH PLAIN AGN1c3QAczNjcmV0")  # \0cust\0s3cret
    assert (code, text[0][:6]) == (538, "5.7.11")
    code, _ = s.command("TURN")
    assert code == 530  # and it did not authenticate


def test_starttls_injection(provider):
    """CVE-2011-0411: a command sent in clear behind STARTTLS must not run after it."""
    s = session(provider.smtp_port)
    s.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert s.reply()[0] == 220
    s.file.close()
    s.sock = insecure_context().wrap_socket(s.sock)
    s.file = s.sock.makefile("rb")
    assert s.command("EHLO attacker.test")[0] == 250
    code, _ = s.command("RCPT TO:<postmaster@provider.test>")
    assert code == 503  # no MAIL is in effect: the injected one never ran
    assert "dropped" in provider.log() and "behind STARTTLS" in provider.log()


def test_too_many_failed_auth_attempts(provider):
    s = secured(provider.smtp_port)
    for _ in range(2):
        assert s.auth_plain("cust", "guess") == 535
    s.send(b"AUTH PLAIN " + b"AGN1c3QAZ3Vlc3M=" + b"\r\n")  # the third wrong guess
    assert s.reply()[0] == 535
    code, text = s.reply()
    assert (code, text[0][:5]) == (421, "4.7.0")
    assert s.closed()


def test_etrn_for_a_node_the_client_may_not_ask_for(provider):
    s = session(provider.smtp_port)  # not authenticated, not a configured address of cust
    code, text = s.command("ETRN cust.test")
    assert (code, text[0][:5]) == (459, "4.7.1")  # a 4xx reply carries a 4.x.x code (RFC 3463)
    s = secured(provider.smtp_port, "other", OTHER_PASSWORD)
    for node in ("cust.test", "@cust.test", "#cust"):
        assert s.command(f"ETRN {node}")[0] == 459, node
    s = secured(provider.smtp_port, "alice", ALICE_PASSWORD)
    assert s.command("ETRN cust.test")[0] == 459


def test_require_tls_listener_refuses_everything_before_starttls(twistd_config, tmp_path):
    provider = start_provider(twistd_config, tmp_path, smtp_listener="require_tls = true")
    s = session(provider.smtp_port)
    for command in ("MAIL FROM:<x@y.test>", "AUTH PLAIN AGN1c3QAczNjcmV0", "TURN", "ETRN cust.test"):
        code, text = s.command(command)
        assert (code, text[0][:5]) == (530, "5.7.0"), command
    s.starttls()
    assert s.command("EHLO c.test")[0] == 250
    assert s.auth_plain("alice", ALICE_PASSWORD) == 235
    assert s.command("MAIL FROM:<x@y.test>")[0] == 250
    assert s.command("RCPT TO:<postmaster@provider.test>")[0] == 250
    assert s.command("DATA")[0] == 354
    assert s.command("Subject: secured\r\n\r\nhello\r\n.")[0] == 250
    # RFC 3848: the trace says the message came over TLS from an authenticated client
    new = provider.data_dir / "mail" / "provider.test" / "postmaster" / "new"
    (message,) = list(new.iterdir())
    assert b"(smtppeer) with ESMTPSA id " in message.read_bytes()


def test_one_atrn_session_per_domain_and_453_when_nothing_is_held(twistd_config, tmp_path):
    """RFC 2645 §4: while one session receives cust.test's mail a second gets 451;
    afterwards, with the queue empty, ATRN gets 453."""
    provider = start_provider(twistd_config, tmp_path)
    hold_mail(provider, "a@cust.test")
    first = secured(provider.odmr_port, "cust", CUSTOMER_PASSWORD)
    assert first.command("ATRN cust.test")[0] == 250  # and then we keep it waiting for our 220
    second = secured(provider.odmr_port, "cust", CUSTOMER_PASSWORD)
    code, text = second.command("ATRN cust.test")
    assert (code, text[0][:5]) == (451, "4.3.0")
    assert second.command("QUIT")[0] == 221
    first.send(b"220 cust.test ESMTP\r\n")  # now receive the held message
    assert first.line().startswith(b"EHLO ")
    first.send(b"250-cust.test\r\n250 PIPELINING\r\n")
    for expected in (b"MAIL FROM:", b"RCPT TO:<a@cust.test>", b"DATA"):
        assert first.line().startswith(expected)
    first.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
    body = [first.line()]
    while body[-1] not in (b".\r\n", b"") and len(body) < 100:
        body.append(first.line())
    assert body[-1] == b".\r\n" and b"for a@cust.test\r\n" in body, body
    first.send(b"250 2.0.0 got it\r\n")
    assert first.line() == b"QUIT\r\n"
    first.send(b"221 bye\r\n")
    first.close()
    wait_until(lambda: provider.held() == {}, what="the released message recorded as delivered")

    def atrn_after_the_session() -> tuple[int, list[str]] | None:
        """None while the provider is still closing the first session (451)."""
        s = secured(provider.odmr_port, "cust", CUSTOMER_PASSWORD)
        code, text = s.command("ATRN cust.test")
        s.close()
        return None if code == 451 else (code, text)

    code, text = wait_until(atrn_after_the_session, what="the first session to be over")
    assert code == 453 and "no mail" in text[0]


def guesses(port: int) -> list[int]:
    """One session of up to three wrong passwords, as the issue's guesser sent them."""
    s = secured(port)
    codes = []
    for n in range(3):
        try:
            codes.append(s.auth_plain("cust", f"guess{n}"))
        except ConnectionError:
            break  # closed after a 421
        if codes[-1] == 421:
            break
    s.close()
    return codes


def test_auth_guessing_across_sessions_meets_a_budget_per_address(provider):
    """Issue 13: 50 sessions from one address tried 150 passwords.  Now ten fail (535),
    the next ten AUTHs are refused (454 4.7.0) and every one after that ends its
    session (421 4.7.0); another address still logs in."""
    with ThreadPoolExecutor(10) as pool:
        codes = [
            code for session_codes in pool.map(guesses, [provider.smtp_port] * 50) for code in session_codes
        ]
    assert codes.count(535) == 10 and codes.count(454) == 10, codes
    assert set(codes) == {535, 454, 421}
    s = secured(provider.smtp_port, "alice", ALICE_PASSWORD, source="127.0.0.2")
    assert s.command("QUIT")[0] == 221
    log = provider.log()
    assert log.count("AUTH from 127.0.0.1: 10 failures; refusing its AUTH (454) for 60s") == 1, log
    assert log.count("attempts while refused; closing its sessions at AUTH (421)") == 1, log
    assert "Traceback" not in log


def test_a_slow_loris_from_one_address_leaves_room_for_others(twistd_config, tmp_path):
    """Issue 13: sockets trickling from one address held every slot.  Now that
    address (127.0.0.3) gets ten sessions, each command line must end within a
    second here, and a client from another address (127.0.0.2) is served meanwhile."""
    limits = '[limits]\nmax_connections = 30\nmax_connections_per_client = 10\ncommand_line_time = "1s"\n'
    provider = start_provider(twistd_config, tmp_path, extra=limits)
    attackers = [RawSession(provider.smtp_port, source="127.0.0.3") for _ in range(30)]
    greetings = [a.reply() for a in attackers]
    admitted = [a for a, (code, _) in zip(attackers, greetings, strict=True) if code == 220]
    refused = [text for code, text in greetings if code != 220]
    assert len(admitted) == 10
    assert refused == [["4.7.0 provider.test Too many connections from your address, try again later"]] * 20
    for a in admitted:
        a.send(b"E")  # and never the rest of the line
    with smtplib.SMTP("127.0.0.1", provider.smtp_port, timeout=30, source_address=("127.0.0.2", 0)) as s:
        s.sendmail("someone@far.test", ["postmaster@provider.test"], b"Subject: served\r\n\r\nhello\r\n")
    for a in admitted:
        code, text = a.reply()
        assert (code, text) == (421, ["4.4.2 provider.test Command line too slow, closing connection"])
    for a in attackers:
        a.close()
    assert (provider.data_dir / "mail" / "provider.test" / "postmaster" / "new").is_dir()
