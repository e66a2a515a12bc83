"""The sender's trust features: STARTTLS policies, AUTH, and ``request`` commands (ETRN).

Scripted server replies as in test_engine_sender; AUTH exchanges are answered
by a ``sasl.server_exchange`` run by hand, and one test puts the Sender
against the Receiver.
"""

from __future__ import annotations

import base64

import pytest

from smtppeer.engine import events as ev
from smtppeer.engine import sasl
from smtppeer.engine.auth import Auth
from smtppeer.engine.etrn import Etrn
from smtppeer.engine.extensions import default_extensions
from smtppeer.engine.receiver import Receiver
from smtppeer.engine.replies import Reply, reply
from smtppeer.engine.sasl import Challenge, Success
from smtppeer.engine.sender import (
    TLS_NONE,
    TLS_OPPORTUNISTIC,
    TLS_REQUIRED,
    TLS_VERIFY,
    ClientSecurity,
    CommandResult,
    Envelope,
    LoggedIn,
    MessageResult,
    Ready,
    Sender,
    SessionEnded,
    StartTlsAccepted,
    Turned,
)
from smtppeer.engine.starttls import StartTls

from .enginedriver import pump
from .logins import LOGINS, MECHANISMS, PASSWORDS, lookup

GREETING = b"220 mx.example ESMTP\r\n"
EHLO_LINE = b"EHLO client.example\r\n"
OK = b"250 2.0.0 OK\r\n"
GO = b"354 Go ahead\r\n"
QUIT = b"QUIT\r\n"
BODY = b"Subject: t\r\n\r\nhi\r\n"

SECURITY_POLICIES = [TLS_OPPORTUNISTIC, TLS_REQUIRED, TLS_VERIFY]
STRICT_POLICIES = [TLS_REQUIRED, TLS_VERIFY]


def ehlo(*keywords: str) -> bytes:
    lines = ["mx.example greets client.example", *keywords]
    return reply(250, None, *lines).to_bytes()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Client:
    def __init__(self, **kw) -> None:
        self.tx = Sender("client.example", **kw)
        self.written = b""

    def feed(self, data: bytes) -> bytes:
        """Give the server's bytes; return what the client writes next."""
        self.tx.receive_data(data)
        return self.out()

    def out(self) -> bytes:
        data = self.tx.data_to_send()
        self.written += data
        return data

    def events(self) -> list:
        out = []
        while (e := self.tx.next_event()) is not None:
            out.append(e)
        return out


def client(
    tls: str = TLS_NONE,
    *,
    username: str | None = None,
    password: str | None = None,
    allow_clear: bool = False,
    secure: bool = False,
    **kw,
) -> Client:
    security = ClientSecurity(tls=tls, username=username, password=password, allow_clear=allow_clear, **kw)
    return Client(security=security, secure=secure)


def greeted(c: Client) -> Client:
    assert c.out() == b""
    assert c.feed(GREETING) == EHLO_LINE
    return c


def env(*rcpts: str, body: bytes = BODY, **kw) -> Envelope:
    return Envelope("a@x.example", list(rcpts), body, **kw)


def deferred_for_security(events: list, envelopes: list[Envelope]) -> None:
    """Every envelope deferred with 451 4.7.0, then an unclean Closed."""
    results = [e for e in events if isinstance(e, MessageResult)]
    assert len(results) == len(envelopes)
    assert all(r.envelope is e for r, e in zip(results, envelopes, strict=True))
    for result in results:
        assert set(result.results) == set(result.envelope.recipients)
        for rep in result.results.values():
            assert (rep.code, rep.enhanced) == (451, "4.7.0")
            assert rep.is_transient
    assert events[-1] == SessionEnded(None, clean=False)
    assert len(events) == len(envelopes) + 1


# -- STARTTLS -----------------------------------------------------------------------------


@pytest.mark.parametrize("tls", SECURITY_POLICIES)
def test_starttls_when_offered(tls):
    c = greeted(client(tls))
    assert c.feed(ehlo("PIPELINING", "STARTTLS", "SIZE 1000")) == b"STARTTLS\r\n"
    assert c.events() == [] and not c.tx.ready
    assert c.feed(b"220 2.0.0 Ready to start TLS\r\n") == b""
    assert c.events() == [StartTlsAccepted()]
    assert not c.tx.ready and not c.tx.secure
    c.tx.tls_started()
    assert c.tx.secure
    assert c.out() == EHLO_LINE
    assert c.feed(ehlo("PIPELINING", "SIZE 2000")) == b""
    assert c.events() == [Ready({"PIPELINING": "", "SIZE": "2000"})]
    assert c.tx.ready
    c.tx.send(env("b@y.example"))
    assert c.out().startswith(b"MAIL FROM:<a@x.example> SIZE=")


def test_opportunistic_without_starttls_offered_goes_on_in_clear():
    c = greeted(client(TLS_OPPORTUNISTIC))
    c.tx.send(env("b@y.example"))
    assert c.feed(ehlo("PIPELINING")) == b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    assert c.events() == [Ready({"PIPELINING": ""})]
    assert not c.tx.secure


def test_no_tls_policy_ignores_starttls():
    c = greeted(client(TLS_NONE))
    assert c.feed(ehlo("STARTTLS")) == b""
    assert c.events() == [Ready({"STARTTLS": ""})]
    assert b"STARTTLS" not in c.written


@pytest.mark.parametrize("tls", STRICT_POLICIES)
def test_strict_policy_without_starttls_gives_up(tls):
    c = client(tls)
    envelopes = [env("b@y.example", "c@y.example"), env("d@z.example")]
    for e in envelopes:
        c.tx.send(e)
    c.tx.request("ETRN x.example")
    c.tx.finish()
    greeted(c)
    assert c.feed(ehlo("PIPELINING", "AUTH PLAIN")) == QUIT
    deferred_for_security(c.events(), envelopes)
    assert c.tx.closed and not c.tx.ready
    assert b"MAIL" not in c.written and b"ETRN" not in c.written and b"AUTH" not in c.written
    assert c.feed(b"221 2.0.0 bye\r\n") == b""
    assert c.events() == []
    # Too late for this session: reported at once, not lost.
    late = env("e@y.example")
    c.tx.send(late)
    [result] = c.events()
    assert result.envelope is late and result.results["e@y.example"].is_transient


@pytest.mark.parametrize("tls", STRICT_POLICIES)
def test_strict_policy_with_helo_only_server_gives_up(tls):
    c = greeted(client(tls))
    c.tx.send(env("b@y.example"))
    assert c.feed(b"502 5.5.1 EHLO not implemented\r\n") == b"HELO client.example\r\n"
    assert c.feed(b"250 mx.example\r\n") == QUIT
    events = c.events()
    assert events[-1] == SessionEnded(None, clean=False)
    assert events[0].results["b@y.example"].enhanced == "4.7.0"
    assert b"MAIL" not in c.written


@pytest.mark.parametrize("tls", STRICT_POLICIES)
def test_strict_policy_on_implicit_tls_needs_no_starttls(tls):
    c = greeted(client(tls, secure=True))
    assert c.feed(ehlo("STARTTLS")) == b""
    assert c.events() == [Ready({"STARTTLS": ""})]


@pytest.mark.parametrize("together", [True, False], ids=["same-chunk", "later-chunk"])
@pytest.mark.parametrize("tls", SECURITY_POLICIES)
def test_starttls_injected_replies_are_discarded(tls, together):
    c = greeted(client(tls))
    assert c.feed(ehlo("STARTTLS")) == b"STARTTLS\r\n"
    injected = b"250-mx.example evil\r\n250-AUTH PLAIN\r\n250 SIZE 1\r\n250 2.0.0 fake\r\n"
    if together:
        assert c.feed(b"220 2.0.0 Go ahead\r\n" + injected) == b""
    else:
        assert c.feed(b"220 2.0.0 Go ahead\r\n") == b""
        assert c.feed(injected) == b""  # arrives before the handshake starts
    assert c.events() == [StartTlsAccepted()]
    c.tx.tls_started()
    assert c.out() == EHLO_LINE
    # The real answer to the new EHLO is matched to it, not the injected one.
    c.tx.send(env("b@y.example"))
    assert c.feed(ehlo("8BITMIME")) == b"MAIL FROM:<a@x.example>\r\n"
    assert c.events() == [Ready({"8BITMIME": ""})]
    assert c.tx.extensions == {"8BITMIME": ""}


def test_starttls_forgets_clear_extensions():
    c = greeted(client(TLS_OPPORTUNISTIC))
    assert c.feed(ehlo("STARTTLS", "SIZE 10", "8BITMIME", "SMTPUTF8", "PIPELINING")) == b"STARTTLS\r\n"
    assert c.feed(b"220 Go\r\n") == b""
    c.tx.tls_started()
    assert c.tx.extensions == {}
    assert c.out() == EHLO_LINE
    big = env("b@y.example", body=b"x" * 100 + b"\r\n", params={"BODY": "8BITMIME"})
    c.tx.send(big)
    # SIZE 10 was the clear server's (the message is not refused for size), and neither
    # 8BITMIME nor PIPELINING is assumed: no BODY parameter, lockstep.
    assert c.feed(ehlo("ENHANCEDSTATUSCODES")) == b"MAIL FROM:<a@x.example>\r\n"
    assert c.events() == [StartTlsAccepted(), Ready({"ENHANCEDSTATUSCODES": ""})]


def test_no_second_starttls_under_tls():
    c = greeted(client(TLS_REQUIRED))
    assert c.feed(ehlo("STARTTLS")) == b"STARTTLS\r\n"
    c.feed(b"220 Go\r\n")
    c.tx.tls_started()
    assert c.out() == EHLO_LINE
    assert c.feed(ehlo("STARTTLS")) == b""  # a confused server offers it again
    assert c.events() == [StartTlsAccepted(), Ready({"STARTTLS": ""})]
    assert c.written.count(b"STARTTLS") == 1


@pytest.mark.parametrize(
    "refusal", [b"454 4.7.0 TLS not available\r\n", b"502 5.5.1 No\r\n", b"554 5.7.0 No TLS for you\r\n"]
)
def test_starttls_refused_opportunistic_carries_on_in_clear(refusal):
    c = greeted(client(TLS_OPPORTUNISTIC))
    c.tx.send(env("b@y.example"))
    assert c.feed(ehlo("STARTTLS", "PIPELINING")) == b"STARTTLS\r\n"
    assert c.feed(refusal) == b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    assert c.events() == [Ready({"STARTTLS": "", "PIPELINING": ""})]
    assert not c.tx.secure
    assert c.written.count(b"STARTTLS") == 1


@pytest.mark.parametrize(
    "refusal", [b"454 4.7.0 TLS not available\r\n", b"502 5.5.1 No\r\n", b"554 5.7.0 No TLS for you\r\n"]
)
@pytest.mark.parametrize("tls", STRICT_POLICIES)
def test_starttls_refused_strict_gives_up(tls, refusal):
    c = greeted(client(tls))
    envelopes = [env("b@y.example"), env("c@y.example", "d@y.example")]
    for e in envelopes:
        c.tx.send(e)
    c.tx.finish()
    assert c.feed(ehlo("STARTTLS", "PIPELINING")) == b"STARTTLS\r\n"
    assert c.feed(refusal) == QUIT
    deferred_for_security(c.events(), envelopes)
    assert b"MAIL" not in c.written


@pytest.mark.parametrize("tls", SECURITY_POLICIES)
def test_starttls_answered_421(tls):
    c = greeted(client(tls))
    c.tx.send(env("b@y.example"))
    c.feed(ehlo("STARTTLS"))
    assert c.feed(b"421 4.3.2 Shutting down\r\n") == b""
    [result, closed] = c.events()
    assert result.results["b@y.example"] == Reply(421, ("Shutting down",), "4.3.2")
    assert closed == SessionEnded(Reply(421, ("Shutting down",), "4.3.2"), clean=False)


def test_starttls_then_auth_uses_the_tls_ehlo():
    c = greeted(client(TLS_REQUIRED, username="alice", password="alice-pw"))
    # In clear only SCRAM is offered, and nothing is said about AUTH before TLS.
    assert c.feed(ehlo("STARTTLS", "AUTH SCRAM-SHA-256")) == b"STARTTLS\r\n"
    c.feed(b"220 Go\r\n")
    c.tx.tls_started()
    assert c.out() == EHLO_LINE
    out = c.feed(ehlo("AUTH PLAIN LOGIN"))
    assert out == b"AUTH PLAIN " + b64(b"\0alice\0alice-pw") + b"\r\n"
    assert c.feed(b"235 2.7.0 OK\r\n") == b""
    assert c.events() == [StartTlsAccepted(), LoggedIn("PLAIN"), Ready({"AUTH": "PLAIN LOGIN"})]


# -- AUTH -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offered, secure, allow_clear, chosen",
    [
        ("SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN", False, False, "SCRAM-SHA-256"),
        ("SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN", True, False, "SCRAM-SHA-256"),
        ("PLAIN LOGIN CRAM-MD5 SCRAM-SHA-256", True, True, "SCRAM-SHA-256"),
        ("LOGIN PLAIN CRAM-MD5", False, False, "CRAM-MD5"),
        ("LOGIN PLAIN CRAM-MD5", True, False, "CRAM-MD5"),
        ("LOGIN PLAIN", True, False, "PLAIN"),
        ("LOGIN PLAIN", False, True, "PLAIN"),
        ("LOGIN", True, False, "LOGIN"),
        ("LOGIN", False, True, "LOGIN"),
        ("plain login", True, False, "PLAIN"),
        ("scram-sha-256", False, False, "SCRAM-SHA-256"),
        ("LOGIN PLAIN", False, False, None),
        ("PLAIN", False, False, None),
        ("GSSAPI XOAUTH2 SCRAM-SHA-1", True, True, None),
        ("", True, True, None),
    ],
)
def test_auth_mechanism_choice(offered, secure, allow_clear, chosen):
    c = client(username="alice", password="alice-pw", secure=secure, allow_clear=allow_clear)
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    out = c.feed(ehlo(f"AUTH {offered}".rstrip(), "PIPELINING"))
    if chosen is None:
        assert out == QUIT
        deferred_for_security(c.events(), [e])
    else:
        verb, mechanism = out.split(b"\r\n")[0].split(b" ")[:2]
        assert (verb, mechanism.decode()) == (b"AUTH", chosen)
        assert out.count(b"\r\n") == 1 and c.events() == []


def serve_auth(c: Client, line: bytes, server: sasl.ServerExchange) -> bytes:
    """Answer the client's AUTH line as ``server`` would; what the client writes after the last reply."""
    assert line.startswith(b"AUTH ") and line.endswith(b"\r\n") and line.count(b"\r\n") == 1
    parts = line[:-2].split(b" ")
    assert len(parts) in (2, 3)
    initial = (
        None if len(parts) == 2 else (b"" if parts[2] == b"=" else base64.b64decode(parts[2], validate=True))
    )
    step = server.start(initial)
    rounds = 0
    while isinstance(step, Challenge):
        rounds += 1
        assert rounds < 5, "exchange does not end"
        answer = c.feed(b"334 " + b64(step.data) + b"\r\n")
        assert answer.endswith(b"\r\n") and answer.count(b"\r\n") == 1
        step = server.respond(base64.b64decode(answer[:-2], validate=True))
    if isinstance(step, Success):
        return c.feed(b"235 2.7.0 Authentication successful\r\n")
    return c.feed(b"535 5.7.8 Authentication credentials invalid\r\n")


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("mechanism, user", LOGINS)
def test_auth_full_exchange(mechanism, user, pipelining):
    c = client(username=user, password=PASSWORDS[user], secure=True)
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    keywords = ["PIPELINING"] if pipelining else []
    line = c.feed(ehlo(f"AUTH {mechanism}", *keywords))
    assert line.startswith(f"AUTH {mechanism}".encode())
    out = serve_auth(c, line, sasl.server_exchange(mechanism, lookup, "mx.example"))
    expected = b"MAIL FROM:<a@x.example>\r\n"
    if pipelining:
        expected += b"RCPT TO:<b@y.example>\r\nDATA\r\n"
    assert out == expected
    assert c.events() == [LoggedIn(mechanism), Ready(c.tx.extensions)]
    assert c.tx.authenticated
    assert b"*" not in c.written


@pytest.mark.parametrize("mechanism, user", LOGINS)
def test_auth_wrong_password_gives_up_and_defers(mechanism, user):
    c = client(username=user, password="wrong", secure=True)
    envelopes = [env("b@y.example"), env("c@y.example")]
    for e in envelopes:
        c.tx.send(e)
    c.tx.request("ETRN x.example")
    c.tx.finish()
    greeted(c)
    line = c.feed(ehlo(f"AUTH {mechanism}"))
    assert serve_auth(c, line, sasl.server_exchange(mechanism, lookup, "mx.example")) == QUIT
    deferred_for_security(c.events(), envelopes)
    assert not c.tx.authenticated
    assert b"MAIL" not in c.written and b"ETRN" not in c.written


@pytest.mark.parametrize(
    "refusal",
    [
        b"535 5.7.8 Authentication credentials invalid\r\n",
        b"534 5.7.9 Authentication mechanism is too weak\r\n",
        b"538 5.7.11 Encryption required\r\n",
        b"454 4.7.0 Temporary authentication failure\r\n",
        b"504 5.5.4 Unrecognized authentication type\r\n",
        b"501 5.5.2 Cannot decode\r\n",
    ],
)
def test_auth_refused_gives_up(refusal):
    c = client(username="alice", password="alice-pw", secure=True)
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    assert c.feed(ehlo("AUTH PLAIN")).startswith(b"AUTH PLAIN ")
    assert c.feed(refusal) == QUIT
    deferred_for_security(c.events(), [e])


def test_auth_required_but_not_offered_gives_up():
    c = client(username="alice", password="alice-pw", secure=True, require_auth=True)
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    assert c.feed(ehlo("PIPELINING", "SIZE 1000")) == QUIT
    deferred_for_security(c.events(), [e])


def test_auth_required_but_not_offered_after_helo_fallback_gives_up():
    c = client(username="alice", password="alice-pw", secure=True, require_auth=True)
    greeted(c)
    assert c.feed(b"500 5.5.1 What\r\n") == b"HELO client.example\r\n"
    assert c.feed(b"250 mx.example\r\n") == QUIT
    assert c.events() == [SessionEnded(None, clean=False)]


@pytest.mark.parametrize("keywords", [("PIPELINING", "SIZE 1000"), ()])
def test_auth_not_offered_delivers_without_unless_required(keywords):
    c = client(username="alice", password="alice-pw", secure=True)
    c.tx.send(env("b@y.example"))
    greeted(c)
    out = c.feed(ehlo(*keywords))
    assert out.startswith(b"MAIL FROM:<a@x.example>") and b"AUTH" not in c.written
    assert [type(e) for e in c.events()] == [Ready]
    assert not c.tx.authenticated


@pytest.mark.parametrize("require_auth", [False, True])
def test_auth_refused_gives_up_whether_required_or_not(require_auth):
    # Offered and refused: the credentials are wrong, so nothing goes, required or not.
    c = client(username="alice", password="alice-pw", secure=True, require_auth=require_auth)
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    assert c.feed(ehlo("AUTH PLAIN")).startswith(b"AUTH PLAIN ")
    assert c.feed(b"535 5.7.8 No\r\n") == QUIT
    deferred_for_security(c.events(), [e])


@pytest.mark.parametrize(
    "server_final",
    [
        b"v=" + b64(bytes(32)),  # a signature from a server that does not know the password
        b"e=invalid-proof",
        b"garbage",
    ],
)
def test_auth_scram_bad_server_final_cancels(server_final):
    c = client(username="alice", password="alice-pw")
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    line = c.feed(ehlo("AUTH SCRAM-SHA-256"))
    server = sasl.server_exchange("SCRAM-SHA-256", lookup, "mx.example")
    step = server.start(base64.b64decode(line.split()[2]))
    assert isinstance(step, Challenge)
    client_final = c.feed(b"334 " + b64(step.data) + b"\r\n")
    assert isinstance(
        server.respond(base64.b64decode(client_final.strip())), Challenge
    )  # the real server-final
    # RFC 4954 §4: "*" cancels, the server says 501, then QUIT (one command, one reply)
    assert c.feed(b"334 " + b64(server_final) + b"\r\n") == b"*\r\n"
    assert c.feed(b"501 5.7.0 AUTH cancelled\r\n") == QUIT
    deferred_for_security(c.events(), [e])
    assert not c.tx.authenticated


def test_auth_scram_success_without_server_final_gives_up():
    # A server that says 235 without proving it knows the password is not trusted.
    c = client(username="alice", password="alice-pw")
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    line = c.feed(ehlo("AUTH SCRAM-SHA-256"))
    server = sasl.server_exchange("SCRAM-SHA-256", lookup, "mx.example")
    step = server.start(base64.b64decode(line.split()[2]))
    c.feed(b"334 " + b64(step.data) + b"\r\n")
    assert c.feed(b"235 2.7.0 Sure\r\n") == QUIT
    deferred_for_security(c.events(), [e])
    assert not c.tx.authenticated
    # Straight to 235 after the AUTH line, too.
    c = client(username="alice", password="alice-pw")
    greeted(c)
    c.feed(ehlo("AUTH SCRAM-SHA-256"))
    assert c.feed(b"235 2.7.0 Sure\r\n") == QUIT
    assert c.events() == [SessionEnded(None, clean=False)]


@pytest.mark.parametrize(
    "mechanism, challenges",
    [
        ("PLAIN", [b"334 !!!notbase64\r\n"]),
        ("PLAIN", [b"334 \r\n", b"334 \r\n"]),  # the message twice: no
        ("LOGIN", [b"334 " + b64(b"Username:") + b"\r\n"] + [b"334 " + b64(b"Password:") + b"\r\n"] * 2),
        ("CRAM-MD5", [b"334 " + b64(b"<1.2@mx>") + b"\r\n"] * 2),
        ("SCRAM-SHA-256", [b"334 " + b64(b"r=someoneelse,s=" + b64(bytes(16)) + b",i=4096") + b"\r\n"]),
    ],
)
def test_auth_bad_challenges_cancel(mechanism, challenges):
    c = client(username="alice", password="alice-pw", secure=True)
    greeted(c)
    assert c.feed(ehlo(f"AUTH {mechanism}")).startswith(f"AUTH {mechanism}".encode())
    for challenge in challenges[:-1]:
        answer = c.feed(challenge)
        assert answer.endswith(b"\r\n") and answer.count(b"\r\n") == 1 and answer != b"*\r\n"
    assert c.feed(challenges[-1]) == b"*\r\n"
    assert c.events() == []
    assert c.feed(b"501 5.7.0 AUTH cancelled\r\n") == QUIT
    assert c.events() == [SessionEnded(None, clean=False)]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("username", ["", None])
def test_auth_empty_username(mechanism, username):
    c = client(username=username, password="pw", secure=True)
    e = env("b@y.example")
    c.tx.send(e)
    greeted(c)
    out = c.feed(ehlo(f"AUTH {mechanism}", "PIPELINING"))
    if username is None:  # no AUTH configured: none attempted
        assert out.startswith(b"MAIL FROM:")
        return
    assert out == QUIT  # nothing sent: no password without a name
    deferred_for_security(c.events(), [e])
    assert b"AUTH" not in c.written


def test_auth_plain_username_with_nul_gives_up():
    c = client(username="a\0b", password="pw", secure=True)
    greeted(c)
    assert c.feed(ehlo("AUTH PLAIN")) == QUIT
    assert c.events() == [SessionEnded(None, clean=False)]


def test_auth_answered_421():
    c = client(username="alice", password="alice-pw", secure=True)
    c.tx.send(env("b@y.example"))
    greeted(c)
    c.feed(ehlo("AUTH PLAIN"))
    assert c.feed(b"421 4.7.0 Too many failed authentications\r\n") == b""
    [result, closed] = c.events()
    assert result.results["b@y.example"].code == 421
    assert closed.reply.code == 421 and not closed.clean


def test_auth_happens_once():
    c = client(username="alice", password="alice-pw", secure=True)
    greeted(c)
    c.feed(ehlo("AUTH PLAIN"))
    assert c.feed(b"235 2.7.0 OK\r\n") == b""
    c.tx.send(env("b@y.example"))
    assert c.out() == b"MAIL FROM:<a@x.example>\r\n"
    assert c.written.count(b"AUTH ") == 1


@pytest.mark.parametrize(
    "params, authenticated, mail",
    [
        ({}, True, b"MAIL FROM:<a@x.example>\r\n"),
        ({}, False, b"MAIL FROM:<a@x.example>\r\n"),
        ({"AUTH": "alice+40x.example"}, True, b"MAIL FROM:<a@x.example> AUTH=alice+40x.example\r\n"),
    ],
)
def test_mail_auth_parameter_after_auth(params, authenticated, mail):
    # RFC 4954 §5's AUTH= goes out only when the envelope has one (never added by us).
    if authenticated:
        c = client(username="alice", password="alice-pw", secure=True)
        greeted(c)
        c.feed(ehlo("AUTH PLAIN"))
        assert c.feed(b"235 2.7.0 OK\r\n") == b""
    else:
        c = greeted(client())
        c.feed(ehlo("AUTH PLAIN"))
    c.tx.send(env("b@y.example", params=params))
    assert c.out() == mail


# -- request (ETRN) -----------------------------------------------------------------------------


def test_requests_after_messages_lockstep():
    c = Client()
    e = env("b@y.example")
    c.tx.send(e)
    c.tx.request("ETRN a.example")
    c.tx.request("ETRN #queue")
    c.tx.finish()
    greeted(c)
    assert c.feed(ehlo("ENHANCEDSTATUSCODES")) == b"MAIL FROM:<a@x.example>\r\n"
    assert c.feed(OK) == b"RCPT TO:<b@y.example>\r\n"
    assert c.feed(OK) == b"DATA\r\n"
    assert c.feed(GO) == BODY + b".\r\n"
    assert c.feed(b"250 2.0.0 Queued\r\n") == b"ETRN a.example\r\n"
    assert c.feed(b"250 2.0.0 Queuing started\r\n") == b"ETRN #queue\r\n"
    assert c.feed(b"458 4.0.0 Unable to queue\r\n") == QUIT
    assert c.feed(b"221 2.0.0 Bye\r\n") == b""
    events = c.events()
    assert isinstance(events[0], Ready)
    assert isinstance(events[1], MessageResult) and events[1].delivered == ["b@y.example"]
    assert events[2:] == [
        CommandResult("ETRN a.example", Reply(250, ("Queuing started",), "2.0.0")),
        CommandResult("ETRN #queue", Reply(458, ("Unable to queue",), "4.0.0")),
        SessionEnded(Reply(221, ("Bye",), "2.0.0"), clean=True),
    ]


def test_requests_after_messages_pipelining():
    c = Client()
    c.tx.send(env("b@y.example"))
    c.tx.send(env("c@y.example"))
    c.tx.request("ETRN a.example")
    c.tx.request("ETRN @b.example")
    c.tx.finish()
    greeted(c)
    assert c.feed(ehlo("PIPELINING")) == b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    assert c.feed(OK + OK + GO) == BODY + b".\r\n"
    assert c.feed(OK) == b"MAIL FROM:<a@x.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"
    # With requests to come, QUIT does not ride with the last body.
    assert c.feed(OK + OK + GO) == BODY + b".\r\n"
    assert c.feed(OK) == b"ETRN a.example\r\n"
    assert c.feed(b"251 2.0.0 No messages waiting\r\n") == b"ETRN @b.example\r\n"
    assert c.feed(b"253 2.0.0 OK, 2 pending messages\r\n") == QUIT
    assert c.feed(b"221 2.0.0 Bye\r\n") == b""
    events = c.events()
    assert [type(e) for e in events] == [
        Ready,
        MessageResult,
        MessageResult,
        CommandResult,
        CommandResult,
        SessionEnded,
    ]
    assert [(e.command, e.reply.code) for e in events[3:5]] == [
        ("ETRN a.example", 251),
        ("ETRN @b.example", 253),
    ]
    assert events[-1].clean


@pytest.mark.parametrize("keywords", [(), ("PIPELINING",)])
def test_requests_without_messages(keywords):
    c = Client()
    c.tx.request("ETRN a.example")
    c.tx.finish()
    greeted(c)
    assert c.feed(ehlo(*keywords)) == b"ETRN a.example\r\n"
    assert c.feed(b"502 5.5.1 ETRN not available\r\n") == QUIT
    assert c.feed(b"221 Bye\r\n") == b""
    events = c.events()
    assert events[1:] == [
        CommandResult("ETRN a.example", Reply(502, ("ETRN not available",), "5.5.1")),
        SessionEnded(Reply(221, ("Bye",)), clean=True),
    ]


def test_requests_wait_for_the_session():
    c = Client()
    c.tx.request("ETRN a.example")
    c.tx.finish()
    assert c.out() == b""
    assert c.feed(GREETING) == EHLO_LINE


def test_requests_wait_for_security():
    c = client(TLS_REQUIRED, username="alice", password="alice-pw")
    c.tx.request("ETRN a.example")
    c.tx.finish()
    greeted(c)
    assert c.feed(ehlo("STARTTLS")) == b"STARTTLS\r\n"
    c.feed(b"220 Go\r\n")
    c.tx.tls_started()
    assert c.out() == EHLO_LINE
    assert c.feed(ehlo("AUTH PLAIN")).startswith(b"AUTH PLAIN ")
    assert c.feed(b"235 2.7.0 OK\r\n") == b"ETRN a.example\r\n"


def test_requests_after_a_refused_message():
    c = Client()
    c.tx.send(env("b@y.example"))
    c.tx.request("ETRN a.example")
    c.tx.finish()
    greeted(c)
    assert c.feed(ehlo("PIPELINING")) == b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    assert c.feed(b"550 5.7.1 No\r\n503 5.5.1 No MAIL\r\n503 5.5.1 No MAIL\r\n") == b"ETRN a.example\r\n"
    assert c.feed(OK) == QUIT


def test_requests_before_atrn():
    c = Client()
    c.tx.request("ETRN a.example")
    c.tx.finish("ATRN a.example")
    greeted(c)
    assert c.feed(ehlo("PIPELINING", "ATRN")) == b"ETRN a.example\r\n"
    assert c.feed(OK) == b"ATRN a.example\r\n"
    assert c.feed(b"250 2.0.0 OK, turning around\r\n") == b""
    events = c.events()
    assert [type(e) for e in events] == [Ready, CommandResult, Turned]
    assert c.tx.turned


def test_requests_go_out_one_at_a_time_when_idle():
    c = Client()
    c.tx.request("ETRN one.example")
    greeted(c)
    assert c.feed(ehlo("PIPELINING")) == b"ETRN one.example\r\n"
    c.tx.request("ETRN two.example")
    assert c.out() == b""  # one at a time, even with PIPELINING
    assert c.feed(OK) == b"ETRN two.example\r\n"
    assert c.feed(OK) == b""  # no finish yet: the session stays open
    c.tx.finish()
    assert c.out() == QUIT
    assert [e.command for e in c.events() if isinstance(e, CommandResult)] == [
        "ETRN one.example",
        "ETRN two.example",
    ]


# -- against the Receiver ---------------------------------------------------------------------


def converse(tx: Sender, rx: Receiver) -> tuple[list, list]:
    """Shuttle bytes both ways; the server answers every decision positively."""
    answers = {
        ev.MailFrom: reply(250, "2.1.0", "OK"),
        ev.RcptTo: reply(250, "2.1.5", "OK"),
        ev.DataEnd: reply(250, "2.0.0", "Queued"),
        ev.QueueStartRequested: reply(250, "2.0.0", "Queuing started"),
        ev.StartTLSRequested: reply(220, "2.0.0", "Ready to start TLS"),
    }

    def answer(event: ev.Event) -> Reply:
        return answers[type(event)]

    tx_events: list = []
    rx_events: list = []
    rx.start()
    for _ in range(200):
        to_client = rx.data_to_send()
        if to_client:
            tx.receive_data(to_client)
        while (event := tx.next_event()) is not None:
            tx_events.append(event)
            if isinstance(event, StartTlsAccepted):
                tx.tls_started()
        to_server = tx.data_to_send()
        if to_server:
            rx.receive_data(to_server)
        if pump(rx, answer, rx_events) is ev.PAUSED:  # on the 220 to STARTTLS
            tx.receive_data(rx.data_to_send())  # the 220 goes out in clear, then the handshake
            assert rx.tls_started() == 0
            pump(rx, answer, rx_events)
        if tx.closed and rx.closed:
            return tx_events, rx_events
        if not to_client and not to_server and not tx.has_output:
            break
    raise AssertionError(f"conversation stuck: {tx_events} {rx_events}")


@pytest.mark.parametrize("tls", SECURITY_POLICIES)
def test_sender_against_receiver(tls):
    extensions = default_extensions() + [StartTls(), Auth(lookup), Etrn()]
    rx = Receiver("mx.example", extensions=extensions, require_tls=True)
    tx = Sender("client.example", security=ClientSecurity(tls=tls, username="alice", password="alice-pw"))
    envelopes = [env("b@y.example", "c@y.example"), env("d@z.example")]
    for e in envelopes:
        tx.send(e)
    tx.request("ETRN y.example")
    tx.finish()
    tx_events, rx_events = converse(tx, rx)
    assert [type(e) for e in tx_events] == [
        StartTlsAccepted, LoggedIn, Ready, MessageResult, MessageResult, CommandResult, SessionEnded,
    ]  # fmt: skip
    assert tx_events[1] == LoggedIn("SCRAM-SHA-256")
    assert [r.delivered for r in tx_events[3:5]] == [["b@y.example", "c@y.example"], ["d@z.example"]]
    assert tx_events[5].reply.code == 250 and tx_events[-1].clean
    assert tx.secure and tx.authenticated and rx.secure and rx.authenticated == "alice"
    assert ev.Authenticated("alice", "SCRAM-SHA-256") in rx_events
    assert ev.QueueStartRequested("y.example", "domain") in rx_events
    assert [e.verb for e in rx_events if isinstance(e, ev.Hello)] == ["EHLO", "EHLO"]


def test_sender_against_receiver_wrong_password():
    extensions = default_extensions() + [StartTls(), Auth(lookup)]
    rx = Receiver("mx.example", extensions=extensions)
    tx = Sender("client.example", security=ClientSecurity(TLS_REQUIRED, "alice", "nope"))
    e = env("b@y.example")
    tx.send(e)
    tx.finish()
    tx_events, rx_events = converse(tx, rx)
    assert [type(x) for x in tx_events] == [StartTlsAccepted, MessageResult, SessionEnded]
    assert tx_events[1].results["b@y.example"].enhanced == "4.7.0"
    assert [type(x) for x in rx_events if isinstance(x, ev.AuthFailed | ev.MailFrom)] == [ev.AuthFailed]


@pytest.mark.parametrize(
    "refusal", [b"530 5.7.0 Must issue a STARTTLS command first", b"530 5.7.0 Authentication required"]
)
def test_530_to_mail_defers_instead_of_bouncing(refusal):
    """A server that wants TLS or AUTH we were not configured for: keep the mail queued."""
    c = greeted(client())
    c.tx.send(env("b@y.example"))
    assert c.feed(ehlo()) == b"MAIL FROM:<a@x.example>\r\n"
    assert c.feed(refusal + b"\r\n") == b""
    [result] = [e for e in c.events() if isinstance(e, MessageResult)]
    response = result.results["b@y.example"]
    assert (response.code, response.enhanced) == (451, "4.7.0")
    assert refusal.decode() in response.text
