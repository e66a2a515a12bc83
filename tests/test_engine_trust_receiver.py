"""The receiver's trust features: STARTTLS, require_tls, AUTH, ODMR/ATRN and ETRN.

Bytes in, events and reply bytes out, as in test_engine_receiver; the SASL
client side is ``sasl.client_exchange`` speaking through the SMTP framing.
"""

from __future__ import annotations

import base64

import pytest

from smtppeer.engine import events as ev
from smtppeer.engine import sasl
from smtppeer.engine.atrn import ODMR_COMMANDS, Atrn
from smtppeer.engine.auth import Auth
from smtppeer.engine.etrn import Etrn
from smtppeer.engine.extensions import Extension, default_extensions
from smtppeer.engine.limits import Limits
from smtppeer.engine.receiver import AUTH_LINE
from smtppeer.engine.replies import Reply, reply
from smtppeer.engine.sasl import Credentials
from smtppeer.engine.starttls import StartTls

from .enginedriver import Driver, answering, parse_replies
from .logins import LOGINS, MECHANISMS, PASSWORDS, USERS, lookup


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def plain(user: str = "alice", password: str = "alice-pw") -> bytes:
    return b64(b"\0" + user.encode() + b"\0" + password.encode())


AUTH_ALICE = b"AUTH PLAIN " + plain() + b"\r\n"

# What these tests answer to TURN and ATRN where they say so (the shared default refuses with 502).
NO_MAIL = answering(ev.TurnRequested, reply(453, "4.3.0", "No mail for you"))


def trust_extensions(
    *,
    starttls: bool = True,
    auth: Auth | None = None,
    atrn: bool = True,
    etrn: bool = True,
) -> list[Extension]:
    extensions = default_extensions()
    if starttls:
        extensions.append(StartTls())
    extensions.append(auth or Auth(lookup))
    if atrn:
        extensions.append(Atrn())
    if etrn:
        extensions.append(Etrn())
    return extensions


def peer(extensions: list[Extension] | None = None, **kw) -> Driver:
    """The shared driver, with every trust extension unless ``extensions`` says otherwise."""
    return Driver(extensions=trust_extensions() if extensions is None else extensions, **kw)


def ready(**kw) -> Driver:
    p = peer(**kw)
    p.ehlo()
    return p


def in_tx(**kw) -> Driver:
    p = ready(**kw)
    assert p.codes(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n") == [250, 250]
    p.take_events()
    return p


def authed(**kw) -> Driver:
    kw.setdefault("secure", True)  # PLAIN
    p = ready(**kw)
    assert p.one(AUTH_ALICE) == (235, "2.7.0")
    p.take_events()
    return p


def auth_line(p: Driver) -> str | None:
    lines = [line for line in p.ehlo() if line.split()[0] == "AUTH"]
    return lines[0] if lines else None


# -- STARTTLS ---------------------------------------------------------------------------


@pytest.mark.parametrize("secure, offered", [(False, True), (True, False)])
def test_starttls_offered_only_in_clear(secure, offered):
    p = peer(secure=secure)
    assert ("STARTTLS" in p.ehlo()) is offered


def test_starttls_not_offered_without_the_extension():
    p = peer(extensions=trust_extensions(starttls=False))
    assert "STARTTLS" not in p.ehlo()
    assert p.one(b"STARTTLS\r\n") == (500, "5.5.1")
    assert p.events == []


@pytest.mark.parametrize("line", [b"STARTTLS now\r\n", b"STARTTLS x y\r\n", b"starttls 1\r\n"])
def test_starttls_with_arguments_501(line):
    p = ready()
    assert p.one(line) == (501, "5.5.4")
    assert p.events == [] and not p.rx.secure


def test_starttls_before_ehlo_503():
    p = peer()
    assert p.one(b"STARTTLS\r\n") == (503, "5.5.1")
    assert p.events == []


def test_starttls_inside_transaction_503():
    p = in_tx()
    assert p.one(b"STARTTLS\r\n") == (503, "5.5.1")
    assert p.events == [] and p.rx.transaction is not None


def test_starttls_emits_decision_and_pauses_on_220():
    p = ready()
    replies = p.send(b"STARTTLS\r\n")
    assert replies == [Reply(220, ("Ready to start TLS",), "2.0.0")]
    assert p.events == [ev.StartTLSRequested()]
    assert p.last is ev.PAUSED
    # Nothing more is parsed until the handshake starts, however much arrives.
    p.rx.receive_data(b"NOOP\r\nQUIT\r\n")
    assert p.rx.next_event() is ev.PAUSED
    assert p.rx.data_to_send() == b""
    assert not p.rx.closed and not p.rx.secure


def test_starttls_case_insensitive():
    p = ready()
    assert p.codes(b"starttls\r\n") == [220]
    assert p.events == [ev.StartTLSRequested()]


def test_starttls_decision_can_be_left_pending():
    p = ready(answer=None)
    p.rx.receive_data(b"STARTTLS\r\nNOOP\r\n")
    assert p.rx.next_event() == ev.StartTLSRequested()
    assert p.rx.next_event() is ev.PAUSED
    assert p.rx.data_to_send() == b""
    p.rx.answer(reply(220, "2.0.0", "Go ahead"))
    assert p.rx.next_event() is ev.PAUSED
    assert p.rx.data_to_send() == b"220 2.0.0 Go ahead\r\n"
    assert p.rx.tls_started() == len(b"NOOP\r\n")


def test_starttls_injection_is_dropped():
    # CVE-2011-0411: commands pipelined behind STARTTLS in clear must never act in the TLS session.
    p = peer()
    replies = p.send(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<x@y>\r\n")
    assert [r.code for r in replies] == [250, 220]
    assert p.events == [ev.Hello("EHLO", "c"), ev.StartTLSRequested()]
    assert p.last is ev.PAUSED
    assert p.tls() == len(b"MAIL FROM:<x@y>\r\n")
    assert p.last is ev.NEED_DATA
    assert not any(isinstance(e, ev.MailFrom) for e in p.events)
    assert p.rx.data_to_send() == b""
    # The session starts over: no HELO name, no transaction, TLS on.
    assert p.rx.secure
    assert p.rx.helo_name is None and not p.rx.esmtp and p.rx.transaction is None
    assert p.one(b"MAIL FROM:<x@y>\r\n") == (503, "5.5.1")
    lines = p.ehlo()
    assert "STARTTLS" not in lines
    assert p.one(b"STARTTLS\r\n") == (503, "5.5.1")
    assert not any(isinstance(e, ev.StartTLSRequested) for e in p.take_events())
    assert p.codes(b"MAIL FROM:<x@y.example>\r\nRCPT TO:<b@y.example>\r\n") == [250, 250]


def test_starttls_injection_in_later_packets_and_partial_lines():
    p = ready()
    assert p.codes(b"STARTTLS\r\nRCPT TO:<a@b.example>\r\n") == [220]
    assert p.codes(b"DATA\r\nMAIL FROM:<x@y") == []  # arrives before the handshake: dropped too
    assert p.tls() == len(b"RCPT TO:<a@b.example>\r\nDATA\r\nMAIL FROM:<x@y")
    # The partial line does not glue onto the first line said under TLS.
    assert p.ehlo("tls.example") and p.rx.helo_name == "tls.example"


def test_starttls_over_long_line_behind_it_is_dropped_whole():
    p = ready(limits=Limits(command_line=64))
    assert p.codes(b"STARTTLS\r\n" + b"X" * 100) == [220]
    assert p.tls() == 100
    assert p.codes(b"EHLO c\r\n") == [250]  # not skipped as the tail of the long line


def test_tls_started_with_nothing_pending_drops_nothing():
    p = ready()
    assert p.codes(b"STARTTLS\r\n") == [220]
    assert p.tls() == 0
    assert p.rx.secure and p.rx.helo_name is None


def test_starttls_454_continues_in_clear():
    p = ready(answer=answering(ev.StartTLSRequested, reply(454, "4.7.0", "TLS not available")))
    replies = p.send(b"STARTTLS\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n")
    assert [(r.code, r.enhanced) for r in replies] == [(454, "4.7.0"), (250, "2.1.0"), (250, "2.1.5")]
    assert [type(e) for e in p.events] == [ev.StartTLSRequested, ev.MailFrom, ev.RcptTo]
    assert p.last is ev.NEED_DATA
    assert not p.rx.secure and p.rx.helo_name == "client.example"
    assert "STARTTLS" in p.ehlo()


def test_starttls_refusal_does_not_pause():
    p = ready(answer=answering(ev.StartTLSRequested, reply(501, "5.5.4", "no")))
    assert p.codes(b"STARTTLS\r\nNOOP\r\n") == [501, 250]


def test_tls_started_forgets_authentication():
    # RFC 3207 §4.2: nothing learnt in clear survives, an AUTH identity included.
    p = authed(extensions=trust_extensions(auth=Auth(lookup, allow_clear=True)), secure=False)
    assert p.rx.authenticated == "alice"
    assert p.codes(b"STARTTLS\r\n") == [220]
    p.tls()
    assert p.rx.authenticated is None
    p.ehlo()
    assert p.one(b"ATRN\r\n") == (530, "5.7.0")
    assert p.one(AUTH_ALICE) == (235, "2.7.0")  # not "already authenticated"


def test_tls_started_ends_an_auth_exchange():
    p = ready()
    assert p.codes(b"STARTTLS\r\n") == [220]
    p.rx.continuation = lambda line: pytest.fail("continuation survived STARTTLS")
    p.tls()
    assert p.rx.continuation is None
    assert p.codes(b"EHLO c\r\n") == [250]


# -- require_tls ------------------------------------------------------------------------

REFUSED_BEFORE_TLS = [
    b"MAIL FROM:<a@x.example>",
    b"RCPT TO:<b@y.example>",
    b"DATA",
    b"AUTH PLAIN " + plain(),
    b"AUTH SCRAM-SHA-256",
    b"TURN",
    b"ETRN x.example",
    b"ATRN",
    b"VRFY someone",
    b"EXPN list",
    b"HELP",
    b"SOML FROM:<a@x.example>",
]


@pytest.mark.parametrize("line", REFUSED_BEFORE_TLS)
def test_require_tls_refuses_before_tls(line):
    p = ready(require_tls=True)
    assert p.one(line + b"\r\n") == (530, "5.7.0")
    assert p.events == [] and p.rx.authenticated is None and p.rx.transaction is None


@pytest.mark.parametrize(
    "line, code",
    [
        (b"EHLO c", 250),
        (b"HELO c", 250),
        (b"NOOP", 250),
        (b"RSET", 250),
        (b"STARTTLS", 220),
        (b"QUIT", 221),
    ],
)
def test_require_tls_allows_before_tls(line, code):
    p = ready(require_tls=True)
    assert p.codes(line + b"\r\n") == [code]


def test_require_tls_ehlo_still_offers_starttls():
    p = peer(require_tls=True)
    assert "STARTTLS" in p.ehlo()


@pytest.mark.parametrize("line", REFUSED_BEFORE_TLS)
def test_require_tls_refusals_count_as_bad_commands(line):
    p = ready(require_tls=True, limits=Limits(bad_commands=3))
    assert p.codes((line + b"\r\n") * 3) == [530, 530, 530, 421]
    assert p.events == [ev.Close("too many bad commands")]
    assert p.rx.closed


def test_require_tls_everything_allowed_after_tls():
    p = ready(require_tls=True, answer=NO_MAIL)
    assert p.codes(b"STARTTLS\r\n") == [220]
    p.tls()
    p.ehlo()
    assert p.codes(b"VRFY someone\r\nEXPN list\r\nHELP\r\nETRN x.example\r\n") == [252, 252, 214, 250]
    assert p.one(AUTH_ALICE) == (235, "2.7.0")
    assert p.codes(b"ATRN\r\nTURN\r\n") == [453, 453]
    replies = p.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nhi\r\n.\r\n")
    assert [r.code for r in replies] == [250, 250, 354, 250]
    assert [type(e) for e in p.events] == [
        ev.Verify, ev.Verify, ev.QueueStartRequested, ev.Authenticated, ev.TurnRequested, ev.TurnRequested,
        ev.MailFrom, ev.RcptTo, ev.DataStarted, ev.DataChunk, ev.DataEnd,
    ]  # fmt: skip


def test_require_tls_on_an_implicit_tls_session():
    p = ready(require_tls=True, secure=True)
    assert p.codes(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n") == [250, 250]


# -- AUTH: advertising and sequencing ------------------------------------------------------------


@pytest.mark.parametrize(
    "secure, allow_clear, mechanisms, line",
    [
        (False, False, None, "AUTH SCRAM-SHA-256 CRAM-MD5"),
        (True, False, None, "AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"),
        (False, True, None, "AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"),
        (True, True, None, "AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"),
        (False, False, ("plain", "login"), None),
        (True, False, ("plain", "login"), "AUTH PLAIN LOGIN"),
        (False, False, ("PLAIN", "SCRAM-SHA-256"), "AUTH SCRAM-SHA-256"),
        (True, False, ("PLAIN", "SCRAM-SHA-256"), "AUTH PLAIN SCRAM-SHA-256"),
    ],
)
def test_auth_ehlo_line(secure, allow_clear, mechanisms, line):
    kw = {} if mechanisms is None else {"mechanisms": mechanisms}
    auth = Auth(lookup, allow_clear=allow_clear, **kw)
    p = peer(extensions=trust_extensions(auth=auth), secure=secure)
    assert auth_line(p) == line


def test_auth_line_changes_after_tls():
    p = peer()
    assert auth_line(p) == "AUTH SCRAM-SHA-256 CRAM-MD5"
    assert p.codes(b"STARTTLS\r\n") == [220]
    p.tls()
    assert auth_line(p) == "AUTH SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "plain", "Login"])
@pytest.mark.parametrize("initial", [b"", b" " + plain()])
def test_auth_clear_only_mechanisms_in_clear_538(mechanism, initial):
    p = ready()
    assert p.one(b"AUTH " + mechanism.encode() + initial + b"\r\n") == (538, "5.7.11")
    assert p.events == [] and p.rx.authenticated is None and p.rx.auth_failures == 0
    assert p.rx.continuation is None
    assert p.codes(b"NOOP\r\n") == [250]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_clear_only_mechanisms_allowed_in_clear_when_configured(mechanism):
    p = ready(extensions=trust_extensions(auth=Auth(lookup, allow_clear=True)))
    assert p.codes(b"AUTH " + mechanism.encode() + b"\r\n") == [334]


@pytest.mark.parametrize(
    "line",
    [b"AUTH FOO", b"AUTH GSSAPI", b"AUTH XOAUTH2 " + b64(b"token"), b"AUTH DIGEST-MD5", b"AUTH SCRAM-SHA-1"],
)
def test_auth_unknown_mechanism_504(line):
    p = ready(secure=True)
    assert p.one(line + b"\r\n") == (504, "5.5.4")
    assert p.events == [] and p.rx.continuation is None


def test_auth_mechanism_not_configured_504():
    p = ready(extensions=trust_extensions(auth=Auth(lookup, mechanisms=["SCRAM-SHA-256"])), secure=True)
    assert p.one(b"AUTH PLAIN " + plain() + b"\r\n") == (504, "5.5.4")


@pytest.mark.parametrize("line", [b"AUTH", b"AUTH ", b"AUTH PLAIN a b", b"AUTH PLAIN " + plain() + b" extra"])
def test_auth_syntax_501(line):
    p = ready(secure=True)
    assert p.one(line + b"\r\n") == (501, "5.5.4")
    assert p.events == [] and p.rx.continuation is None


def test_auth_before_ehlo_503():
    p = peer(secure=True)
    assert p.one(AUTH_ALICE) == (503, "5.5.1")
    assert p.rx.authenticated is None and p.events == []


def test_auth_after_helo_503():
    p = peer(secure=True)
    assert p.codes(b"HELO c\r\n") == [250]
    assert p.one(AUTH_ALICE) == (503, "5.5.1")
    assert p.rx.authenticated is None


def test_auth_twice_503():
    p = authed(secure=True)
    assert p.one(b"AUTH PLAIN " + plain("grüße", "pässwörd") + b"\r\n") == (503, "5.5.1")
    assert p.one(b"AUTH SCRAM-SHA-256\r\n") == (503, "5.5.1")
    assert p.rx.authenticated == "alice" and p.events == []


def test_auth_inside_transaction_503():
    p = in_tx(secure=True)
    assert p.one(AUTH_ALICE) == (503, "5.5.1")
    assert p.rx.authenticated is None and p.rx.transaction is not None


def test_auth_survives_ehlo_and_rset():
    p = authed(secure=True)
    p.ehlo()
    assert p.codes(b"RSET\r\n") == [250]
    assert p.rx.authenticated == "alice"


def test_auth_not_available_without_the_extension():
    p = ready(extensions=default_extensions())
    assert p.one(AUTH_ALICE) == (500, "5.5.1")


# -- AUTH: exchanges ---------------------------------------------------------------------------


def run_auth(
    p: Driver,
    mechanism: str,
    user: str,
    password: str,
    *,
    use_initial: bool = True,
) -> tuple[list[Reply], sasl.ClientExchange]:
    """Drive one AUTH exchange with the matching sasl client; all the replies."""
    client = sasl.client_exchange(mechanism, user, password)
    line = b"AUTH " + mechanism.encode()
    if use_initial and client.initial is not None:
        line += b" " + (b64(client.initial) or b"=")
    replies = p.send(line + b"\r\n")
    seen = list(replies)
    while replies and replies[-1].code == 334:
        assert len(seen) < 6, "exchange does not end"
        challenge = base64.b64decode(replies[-1].text, validate=True)
        replies = p.send(b64(client.respond(challenge)) + b"\r\n")
        seen += replies
    return seen, client


@pytest.mark.parametrize("use_initial", [True, False], ids=["initial", "no-initial"])
@pytest.mark.parametrize("mechanism, user", LOGINS)
def test_auth_every_mechanism_end_to_end(mechanism, user, use_initial):
    p = ready(secure=True)
    replies, client = run_auth(p, mechanism, user, PASSWORDS[user], use_initial=use_initial)
    assert [r.code for r in replies[:-1]] == [334] * (len(replies) - 1)
    assert (replies[-1].code, replies[-1].enhanced) == (235, "2.7.0")
    client.verify_success()
    assert p.events == [ev.Authenticated(user, mechanism)]
    assert p.rx.authenticated == user and p.rx.auth_failures == 0
    assert p.rx.continuation is None
    assert p.codes(b"MAIL FROM:<a@x.example>\r\n") == [250]


@pytest.mark.parametrize(
    "mechanism, use_initial, challenges",
    [
        ("PLAIN", True, 0),
        ("PLAIN", False, 1),  # an empty 334, then the message
        ("LOGIN", False, 2),  # Username:, Password:
        ("CRAM-MD5", False, 1),
        ("SCRAM-SHA-256", True, 2),  # server-first, server-final
        ("SCRAM-SHA-256", False, 3),  # empty, server-first, server-final
    ],
)
def test_auth_exchange_shapes(mechanism, use_initial, challenges):
    p = ready(secure=True)
    replies, _ = run_auth(p, mechanism, "alice", "alice-pw", use_initial=use_initial)
    assert [r.code for r in replies] == [334] * challenges + [235]


def test_auth_login_prompts_and_initial_username():
    p = ready(secure=True)
    assert p.send(b"AUTH LOGIN\r\n") == [Reply(334, (b64(b"Username:").decode(),))]
    assert p.send(b64(b"alice") + b"\r\n") == [Reply(334, (b64(b"Password:").decode(),))]
    assert p.one(b64(b"alice-pw") + b"\r\n") == (235, "2.7.0")
    p = ready(secure=True)
    assert p.send(b"AUTH LOGIN " + b64(b"alice") + b"\r\n") == [Reply(334, (b64(b"Password:").decode(),))]
    assert p.one(b64(b"alice-pw") + b"\r\n") == (235, "2.7.0")


def test_auth_cram_md5_challenge_names_the_host():
    p = ready(extensions=trust_extensions(auth=Auth(lookup, nonce=lambda: "1896.697170952")))
    [r] = p.send(b"AUTH CRAM-MD5\r\n")
    assert r.code == 334
    assert base64.b64decode(r.text) == b"<1896.697170952@mx.example>"


def test_auth_plain_empty_lines_and_equals():
    # "=" is the empty initial response (RFC 4954 §4), not a missing one: PLAIN gets it and fails.
    p = ready(secure=True)
    assert p.one(b"AUTH PLAIN =\r\n") == (535, "5.7.8")
    assert [type(e) for e in p.events] == [ev.AuthFailed]
    # An empty continuation line is the empty response.
    p = ready(secure=True)
    assert p.codes(b"AUTH PLAIN\r\n\r\n") == [334, 535]


def test_auth_identity_is_the_stored_username():
    users = {"alice": USERS["alice"]}
    auth = Auth(lambda name: users.get(name.lower()))
    p = ready(extensions=trust_extensions(auth=auth), secure=True)
    assert p.one(b"AUTH PLAIN " + plain("ALICE") + b"\r\n") == (235, "2.7.0")
    assert p.events == [ev.Authenticated("alice", "PLAIN")] and p.rx.authenticated == "alice"


@pytest.mark.parametrize("mechanism, user", LOGINS)
def test_auth_wrong_password_535(mechanism, user):
    p = ready(secure=True)
    replies, _ = run_auth(p, mechanism, user, "wrong")
    assert (replies[-1].code, replies[-1].enhanced) == (535, "5.7.8")
    [failed] = p.events
    assert isinstance(failed, ev.AuthFailed) and failed.mechanism == mechanism
    assert p.rx.authenticated is None and p.rx.auth_failures == 1
    assert p.rx.continuation is None
    assert p.codes(b"NOOP\r\n") == [250]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_auth_unknown_user_looks_like_a_wrong_password(mechanism):
    p = ready(secure=True)
    replies, _ = run_auth(p, mechanism, "nobody", "whatever")
    assert (replies[-1].code, replies[-1].enhanced) == (535, "5.7.8")
    assert "Authentication credentials invalid" in replies[-1].text


def test_auth_cram_md5_hashed_only_login_fails():
    p = ready(secure=True)
    replies, _ = run_auth(p, "CRAM-MD5", "hashed", "hashed-pw")
    assert replies[-1].code == 535


def test_auth_retry_after_failure():
    p = ready(secure=True)
    assert p.one(b"AUTH PLAIN " + plain(password="bad") + b"\r\n") == (535, "5.7.8")
    assert p.one(AUTH_ALICE) == (235, "2.7.0")
    assert [type(e) for e in p.events] == [ev.AuthFailed, ev.Authenticated]
    assert p.rx.auth_failures == 1


@pytest.mark.parametrize("initial", [b64(b"alice 0123"), b"="])
def test_auth_cram_md5_with_initial_response_501(initial):
    # RFC 4954 §4: an initial response to a mechanism where the server speaks first is a 501 (5.7.0).
    p = ready()
    assert p.one(b"AUTH CRAM-MD5 " + initial + b"\r\n") == (501, "5.7.0")
    assert p.rx.auth_failures == 0 and p.rx.continuation is None
    assert p.codes(b"AUTH CRAM-MD5\r\n") == [334]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("cancel", [b"*", b" * "])
def test_auth_cancel_501(mechanism, cancel):
    p = ready(secure=True)
    assert p.codes(b"AUTH " + mechanism.encode() + b"\r\n") == [334]
    assert p.one(cancel + b"\r\n") == (501, "5.0.0")
    assert p.events == [ev.AuthFailed(mechanism, "cancelled by the client")]
    assert p.rx.authenticated is None and p.rx.continuation is None
    assert p.codes(b"NOOP\r\n") == [250]
    assert p.one(AUTH_ALICE) == (235, "2.7.0")


def test_auth_cancel_mid_scram():
    p = ready(secure=True)
    client = sasl.client_exchange("SCRAM-SHA-256", "alice", "alice-pw")
    assert p.codes(b"AUTH SCRAM-SHA-256 " + b64(client.initial) + b"\r\n") == [334]
    assert p.one(b"*\r\n") == (501, "5.0.0")
    assert p.rx.authenticated is None


@pytest.mark.parametrize("bad", [b"!!!!", b"abc", b"dXNlcg", b"==", b"dXNl cg=="])
def test_auth_bad_base64_initial_501(bad):
    p = ready(secure=True)
    assert p.one(b"AUTH PLAIN " + bad + b"\r\n") in [(501, "5.5.2"), (501, "5.5.4")]
    assert p.rx.continuation is None and p.rx.authenticated is None and p.rx.auth_failures == 0
    assert p.codes(b"NOOP\r\n") == [250]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("bad", [b"!!!!", b"abc", b"dXNlcg", b"==", b"dXNl cg=="])
def test_auth_bad_base64_continuation_501(mechanism, bad):
    p = ready(secure=True)
    assert p.codes(b"AUTH " + mechanism.encode() + b"\r\n") == [334]
    assert p.one(bad + b"\r\n") == (501, "5.5.2")
    assert p.events == [ev.AuthFailed(mechanism, "response was not base64")]
    assert p.rx.continuation is None and p.rx.auth_failures == 0
    assert p.codes(b"NOOP\r\n") == [250]


@pytest.mark.parametrize("max_failures", [1, 2, 3])
def test_auth_max_failures_closes(max_failures):
    p = ready(extensions=trust_extensions(auth=Auth(lookup, max_failures=max_failures)), secure=True)
    bad = b"AUTH PLAIN " + plain(password="bad") + b"\r\n"
    for _ in range(max_failures - 1):
        assert p.one(bad) == (535, "5.7.8")
        assert not p.rx.closed
    replies = p.send(bad + b"NOOP\r\n")
    assert [(r.code, r.enhanced) for r in replies] == [(535, "5.7.8"), (421, "4.7.0")]
    assert [type(e) for e in p.events] == [ev.AuthFailed] * max_failures + [ev.Close]
    assert p.events[-1] == ev.Close("too many failed AUTH attempts")
    assert p.rx.closed and p.last is ev.CLOSED
    p.rx.receive_data(AUTH_ALICE)
    assert p.rx.next_event() is ev.CLOSED and p.rx.data_to_send() == b""


def test_auth_failures_count_across_mechanisms():
    p = ready(extensions=trust_extensions(auth=Auth(lookup, max_failures=3)), secure=True)
    run_auth(p, "SCRAM-SHA-256", "alice", "bad")
    run_auth(p, "LOGIN", "alice", "bad")
    replies, _ = run_auth(p, "CRAM-MD5", "alice", "bad")
    assert [r.code for r in replies] == [334, 535, 421]
    assert p.rx.closed


def test_auth_cancels_and_bad_base64_do_not_count_as_failures():
    p = ready(extensions=trust_extensions(auth=Auth(lookup, max_failures=1)), secure=True)
    assert p.codes(b"AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\n!!\r\nAUTH PLAIN !!\r\n") == [334, 501, 334, 501, 501]
    assert not p.rx.closed and p.rx.auth_failures == 0
    assert p.one(AUTH_ALICE) == (235, "2.7.0")


@pytest.mark.parametrize(
    "line",
    [
        b"QUIT",
        b"RSET",
        b"NOOP",
        b"EHLO x",
        b"HELO x",
        b"MAIL FROM:<a@x.example>",
        b"STARTTLS",
        b"DATA",
        b"AUTH",
    ],
)
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_auth_continuation_lines_are_never_commands(mechanism, line):
    p = ready(secure=True)
    replies = p.send(b"AUTH " + mechanism.encode() + b"\r\n" + line + b"\r\n")
    assert replies[0].code == 334
    # The line was a SASL response: whatever it decoded to, it failed or was malformed.
    assert replies[1].code in (334, 501, 535)
    assert not any(r.code in (221, 250, 220, 354, 503) for r in replies)
    assert all(isinstance(e, ev.AuthFailed) for e in p.events)
    assert not p.rx.closed and p.rx.helo_name == "client.example" and p.rx.transaction is None


def test_auth_continuation_quit_is_a_login_username():
    p = ready(secure=True)
    assert p.send(b"AUTH LOGIN\r\nQUIT\r\n")[1] == Reply(334, (b64(b"Password:").decode(),))
    assert not p.rx.closed and p.events == []
    assert p.one(b64(b"pw") + b"\r\n") == (535, "5.7.8")  # user "AB\x13" does not exist
    assert p.codes(b"QUIT\r\n") == [221]


def test_auth_lines_may_be_longer_than_commands():
    """RFC 4954 §4: 12288 octets for the AUTH command and the answers; others keep 512."""
    p = ready(secure=True)
    long_answer = b"A" * 4000
    assert p.one(b"AUTH LOGIN " + long_answer + b"\r\n")[0] == 334  # a long initial response
    assert p.one(long_answer + b"\r\n")[0] == 535  # a long answer is read, not refused
    assert p.one(b"NOOP " + b"x" * 600 + b"\r\n") == (500, "5.5.2")
    assert p.one(b"AUTH LOGIN\r\n")[0] == 334
    assert p.one(b"A" * (AUTH_LINE + 10) + b"\r\n") == (500, "5.5.6")


@pytest.mark.parametrize(
    "bad_line, codes",
    [
        (b"A" * AUTH_LINE + b"\r\n", [334, 500, 250, 221]),
        (b"A" * AUTH_LINE, [334, 500, 250, 221]),  # no line end yet: the rest of the line is skipped
        (b"abc\n", [334, 500, 250, 221]),
        (b"a\rbc\r\n", [334, 500, 250, 221]),
        (b"\xff\xfe\r\n", [334, 500, 250, 221]),
    ],
    ids=["too-long", "too-long-unfinished", "bare-lf", "bare-cr", "not-utf8"],
)
def test_auth_unreadable_continuation_ends_the_exchange(bad_line, codes):
    # The error answers the client's response; its next line is a command again.
    p = ready(secure=True, limits=Limits(command_line=64))
    p.rx.receive_data(b"AUTH LOGIN\r\n" + bad_line)
    p.pump()
    assert p.rx.continuation is None
    end_of_long_line = b"\r\n" if bad_line.endswith(b"A") else b""
    assert [r.code for r in p.send(end_of_long_line + b"EHLO again\r\nQUIT\r\n")] == codes
    assert p.events == [ev.Hello("EHLO", "again"), ev.Quit()]
    assert p.rx.closed


def test_auth_pipelined_initial_response_and_mail():
    p = peer(secure=True)
    replies = p.send(
        b"EHLO c\r\nAUTH PLAIN "
        + plain()
        + b"\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    )
    assert [r.code for r in replies] == [250, 235, 250, 250, 354]
    assert [type(e) for e in p.events] == [ev.Hello, ev.Authenticated, ev.MailFrom, ev.RcptTo, ev.DataStarted]
    assert p.rx.authenticated == "alice"


def test_auth_whole_login_exchange_in_one_chunk():
    p = ready(secure=True)
    data = b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"alice-pw") + b"\r\nMAIL FROM:<a@x.example>\r\n"
    assert p.codes(data) == [334, 334, 235, 250]
    assert [type(e) for e in p.events] == [ev.Authenticated, ev.MailFrom]


def test_auth_mail_pipelined_behind_failed_auth_is_still_a_command():
    p = ready(secure=True)
    replies = p.send(b"AUTH PLAIN " + plain(password="x") + b"\r\nMAIL FROM:<a@x.example>\r\n")
    assert [r.code for r in replies] == [535, 250]


class Boom(Exception):
    pass


def broken_lookup(username: str) -> Credentials | None:
    raise Boom("database down")


@pytest.mark.parametrize(
    "lines, codes",
    [
        ([b"AUTH PLAIN " + plain()], [454]),
        ([b"AUTH PLAIN", plain()], [334, 454]),
        ([b"AUTH LOGIN " + b64(b"alice"), b64(b"pw")], [334, 454]),
        ([b"AUTH CRAM-MD5", b64(b"alice " + b"0" * 32)], [334, 454]),
        ([b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=alice,r=abcdefghijkl")], [454]),
        ([b"AUTH SCRAM-SHA-256", b64(b"n,,n=alice,r=abcdefghijkl")], [334, 454]),
    ],
)
def test_auth_lookup_that_raises_454(lines, codes):
    p = ready(extensions=trust_extensions(auth=Auth(broken_lookup)), secure=True)
    replies = p.send(b"".join(line + b"\r\n" for line in lines))
    assert [r.code for r in replies] == codes
    assert replies[-1].enhanced == "4.7.0"
    [failed] = p.events
    assert isinstance(failed, ev.AuthFailed) and "database down" in failed.reason
    assert p.rx.authenticated is None and p.rx.auth_failures == 0 and p.rx.continuation is None
    assert not p.rx.closed
    assert p.codes(b"NOOP\r\n") == [250]


def test_auth_lookup_failures_never_close_the_session():
    p = ready(extensions=trust_extensions(auth=Auth(broken_lookup, max_failures=1)), secure=True)
    assert p.codes(b"AUTH PLAIN " + plain() + b"\r\n") == [454]
    assert p.codes(b"AUTH PLAIN " + plain() + b"\r\n") == [454]
    assert not p.rx.closed


# -- ODMR and ATRN ------------------------------------------------------------------------------


def odmr(**kw) -> Driver:
    return ready(only_commands=ODMR_COMMANDS, **kw)


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@x.example>",
        b"RCPT TO:<b@y.example>",
        b"DATA",
        b"TURN",
        b"VRFY x",
        b"EXPN x",
        b"ETRN x.example",
        b"HELO c",
        b"SOML FROM:<a@x.example>",
        b"SEND FROM:<a@x.example>",
    ],
)
def test_odmr_refuses_other_commands_502(line):
    p = odmr()
    assert p.one(line + b"\r\n") == (502, "5.5.1")
    assert p.events == []


@pytest.mark.parametrize(
    "line, code", [(b"NOOP", 250), (b"RSET", 250), (b"HELP", 214), (b"EHLO again", 250), (b"QUIT", 221)]
)
def test_odmr_allows_its_commands(line, code):
    p = odmr()
    assert p.codes(line + b"\r\n") == [code]


def test_odmr_unknown_commands_are_502_too():
    # RFC 2645 §4: everything but the ODMR commands, known or not.
    p = odmr()
    assert p.one(b"XYZZY\r\n") == (502, "5.5.1")
    assert p.one(b"\r\n") == (500, "5.5.2")
    p = odmr(extensions=trust_extensions(etrn=False))
    assert p.one(b"ETRN x.example\r\n") == (502, "5.5.1")


def test_odmr_ehlo_offers_atrn_and_auth():
    p = peer(only_commands=ODMR_COMMANDS)
    lines = p.ehlo()
    assert "ATRN" in lines and "STARTTLS" in lines
    assert any(line.startswith("AUTH ") for line in lines)


def test_atrn_before_auth_530():
    p = odmr()
    assert p.one(b"ATRN\r\n") == (530, "5.7.0")
    assert p.one(b"ATRN a.example\r\n") == (530, "5.7.0")
    assert p.events == []


@pytest.mark.parametrize(
    "argument, domains",
    [
        (b"", []),
        (b" ", []),
        (b" a.example", ["a.example"]),
        (b" Example.COM", ["example.com"]),
        (b" a.test,B.Test", ["a.test", "b.test"]),
        (b" a.test,b.test,c", ["a.test", "b.test", "c"]),
        (b" x-1.example", ["x-1.example"]),
    ],
)
def test_atrn_after_auth(argument, domains):
    p = authed(only_commands=ODMR_COMMANDS, answer=NO_MAIL)
    assert p.one(b"ATRN" + argument + b"\r\n") == (453, "4.3.0")
    assert p.events == [ev.TurnRequested("ATRN", domains)]


def test_atrn_over_the_odmr_sequence():
    # EHLO, AUTH, ATRN as an ODMR client says them (RFC 2645 §4), pipelined up to ATRN.
    p = peer(only_commands=ODMR_COMMANDS, secure=True, answer=NO_MAIL)
    assert p.codes(b"EHLO client\r\nAUTH PLAIN " + plain() + b"\r\nATRN a.test\r\n") == [250, 235, 453]
    assert p.events[1:] == [ev.Authenticated("alice", "PLAIN"), ev.TurnRequested("ATRN", ["a.test"])]


@pytest.mark.parametrize(
    "argument",
    [
        b"a..b",
        b"a,,b",
        b"-a.test",
        b"[1.2.3.4]",
        b"a.test,",
        b",a.test",
        b"a b",
        b"a_b.test",
        b"a.test-",
        b"@a.test",
    ],
)
def test_atrn_malformed_domains_501(argument):
    p = authed(only_commands=ODMR_COMMANDS)
    assert p.one(b"ATRN " + argument + b"\r\n") == (501, "5.5.4")
    assert p.events == []


def test_atrn_after_helo_503():
    p = peer(secure=True)
    assert p.codes(b"HELO c\r\n") == [250]
    assert p.one(b"ATRN\r\n") == (503, "5.5.1")


def test_atrn_before_ehlo_503():
    p = peer()
    assert p.one(b"ATRN\r\n") == (503, "5.5.1")


def test_atrn_inside_transaction_503():
    p = authed(secure=True)
    assert p.codes(b"MAIL FROM:<a@x.example>\r\n") == [250]
    assert p.one(b"ATRN\r\n") == (503, "5.5.1")
    assert not any(isinstance(e, ev.TurnRequested) for e in p.events)


def test_atrn_refused_stays_receiver():
    p = authed(only_commands=ODMR_COMMANDS, answer=NO_MAIL)
    assert p.codes(b"ATRN a.test\r\nNOOP\r\nQUIT\r\n") == [453, 250, 221]


def test_atrn_not_available_without_the_extension():
    p = authed(extensions=trust_extensions(atrn=False), secure=True)
    assert p.one(b"ATRN\r\n") == (500, "5.5.1")


# -- ETRN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, node, kind",
    [
        (b"x.example", "x.example", "domain"),
        (b"X.Example", "x.example", "domain"),
        (b"  x.example  ", "x.example", "domain"),
        (b"localhost", "localhost", "domain"),
        (b"@x.example", "x.example", "subdomains"),
        (b"@X.EXAMPLE", "x.example", "subdomains"),
        (b"#queue", "queue", "queue"),
        (b"#Queue_1.a-b", "Queue_1.a-b", "queue"),
        (b"#" + b"q" * 255, "q" * 255, "queue"),
    ],
)
def test_etrn_nodes(argument, node, kind):
    p = ready()
    assert p.one(b"ETRN " + argument + b"\r\n") == (250, "2.0.0")
    assert p.events == [ev.QueueStartRequested(node, kind)]


@pytest.mark.parametrize(
    "line",
    [
        b"ETRN",
        b"ETRN ",
        b"ETRN @",
        b"ETRN #",
        b"ETRN a b",
        b"ETRN #bad/name",
        b"ETRN #a b",
        b"ETRN #" + b"q" * 256,
        b"ETRN @@x.example",
        b"ETRN x..example",
        b"ETRN -x.example",
        b"ETRN [1.2.3.4]",
        b"ETRN x.example,y.example",
    ],
)
def test_etrn_malformed_501(line):
    p = ready()
    assert p.one(line + b"\r\n") == (501, "5.5.4")
    assert p.events == []


def test_etrn_before_ehlo_503():
    p = peer()
    assert p.one(b"ETRN x.example\r\n") == (503, "5.5.1")
    assert p.events == []


def test_etrn_inside_transaction_503():
    p = in_tx()
    assert p.one(b"ETRN x.example\r\n") == (503, "5.5.1")
    assert p.events == [] and p.rx.transaction is not None


@pytest.mark.parametrize(
    "response",
    [
        reply(250, "2.0.0", "Queuing started"),
        reply(251, "2.0.0", "No messages waiting"),
        reply(253, "2.0.0", "OK, 3 pending messages"),
        reply(458, "4.0.0", "Unable to queue messages"),
        reply(459, "4.0.0", "Node not allowed"),
    ],
)
def test_etrn_answer_is_the_reply(response):
    p = ready(answer=answering(ev.QueueStartRequested, response))
    assert p.send(b"ETRN x.example\r\n") == [response]


def test_etrn_pipelined_in_order():
    p = ready()
    assert p.codes(b"ETRN a.example\r\nETRN @b.example\r\nETRN #c\r\nNOOP\r\n") == [250, 250, 250, 250]
    assert p.events == [
        ev.QueueStartRequested("a.example", "domain"),
        ev.QueueStartRequested("b.example", "subdomains"),
        ev.QueueStartRequested("c", "queue"),
    ]


def test_etrn_waits_for_its_answer():
    p = ready(answer=None)
    p.rx.receive_data(b"ETRN a.example\r\nNOOP\r\n")
    assert p.rx.next_event() == ev.QueueStartRequested("a.example", "domain")
    assert p.rx.next_event() is ev.PAUSED and p.rx.data_to_send() == b""
    p.rx.answer(reply(458, "4.0.0", "Unable"))
    assert p.rx.next_event() is ev.NEED_DATA
    assert [r.code for r in parse_replies(p.rx.data_to_send())] == [458, 250]


def test_etrn_ehlo_keyword():
    assert "ETRN" in peer().ehlo()
    assert "ETRN" not in peer(extensions=trust_extensions(etrn=False)).ehlo()


# -- the AUTH parameter to MAIL (RFC 4954 §5) ---------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["<>", "alice@x.example", "e+3Dmc2@x.example", "a+2Bb@x.example", "a+2bb@x.example", "<a@x.example>"],
)
@pytest.mark.parametrize("authenticated", [False, True])
def test_mail_auth_parameter_accepted(value, authenticated):
    # A server that offers AUTH MUST accept the parameter, even from a client that has not authenticated.
    p = authed() if authenticated else ready()
    assert p.codes(f"MAIL FROM:<a@x.example> AUTH={value}\r\n".encode()) == [250]
    [mail] = [e for e in p.events if isinstance(e, ev.MailFrom)]
    assert mail.params == {"AUTH": value}


@pytest.mark.parametrize("param", ["AUTH", "AUTH=a+4", "AUTH=a+zz@x", "AUTH=a+@x", "AUTH=caf\u00e9@x"])
def test_mail_auth_parameter_malformed_501(param):
    p = ready()
    [r] = p.send(f"MAIL FROM:<a@x.example> {param}\r\n".encode())
    assert r.code == 501 and p.events == []


def test_mail_auth_parameter_needs_ehlo_and_the_extension():
    p = peer()
    assert p.codes(b"HELO c\r\n") == [250]
    assert p.one(b"MAIL FROM:<a@x.example> AUTH=<>\r\n") == (555, "5.5.4")
    p = ready(extensions=default_extensions())
    assert p.one(b"MAIL FROM:<a@x.example> AUTH=<>\r\n") == (555, "5.5.4")


def test_auth_plain_only_in_clear_gets_538_not_503():
    """With only PLAIN/LOGIN configured nothing is advertised in clear, but asking still says why."""
    auth = Auth(lambda name: None, mechanisms=["PLAIN", "LOGIN"])
    p = peer(extensions=[*default_extensions(), auth])
    assert p.one(b"EHLO c\r\n")[0] == 250
    assert p.one(b"AUTH PLAIN AGEAYg==\r\n") == (538, "5.7.11")


# -- the adapter's gate before an AUTH exchange (issue 13, item 3) -----------------------


def test_auth_gate_is_asked_before_each_exchange_and_may_refuse_it():
    p = ready(secure=True)
    asked = []
    verdict: list[Reply | None] = [reply(454, "4.7.0", "Too many failed authentications")]
    p.rx.auth_gate = lambda: asked.append(1) or verdict[0]
    assert p.one(AUTH_ALICE) == (454, "4.7.0")
    assert p.rx.authenticated is None and p.rx.continuation is None and p.take_events() == []
    assert p.codes(b"AUTH PLAIN\r\n") == [454]  # no 334: the exchange never starts
    verdict[0] = None
    assert p.one(AUTH_ALICE) == (235, "2.7.0")
    assert len(asked) == 3
    assert p.codes(b"NOOP\r\n") == [250]  # a 454 is not a bad command; the session goes on


def test_auth_gate_421_ends_the_session():
    p = ready(secure=True)
    p.rx.auth_gate = lambda: reply(421, "4.7.0", "mx.example Too many failed authentications")
    replies = p.send(AUTH_ALICE + b"NOOP\r\n")
    assert [(r.code, r.enhanced) for r in replies] == [(421, "4.7.0")]
    assert p.last is ev.CLOSED and p.rx.closed
    assert [type(e) for e in p.events] == [ev.Close]


def test_auth_gate_is_not_asked_for_what_is_refused_anyway():
    """EHLO first, already authenticated, inside a transaction: 503 without asking."""
    p = peer()
    p.rx.auth_gate = lambda: pytest.fail("the gate was asked")
    assert p.one(AUTH_ALICE) == (503, "5.5.1")
    p = in_tx(secure=True)
    p.rx.auth_gate = lambda: pytest.fail("the gate was asked")
    assert p.one(AUTH_ALICE) == (503, "5.5.1")


def test_only_checked_credentials_are_a_guess():
    """What a budget per client counts: a wrong password, not a cancel or garbled base64."""
    p = ready(secure=True)
    assert p.one(b"AUTH PLAIN " + plain(password="bad") + b"\r\n") == (535, "5.7.8")
    assert p.codes(b"AUTH PLAIN\r\n") == [334]
    assert p.one(b"*\r\n") == (501, "5.0.0")
    assert p.codes(b"AUTH PLAIN\r\n") == [334]
    assert p.one(b"!!!!\r\n") == (501, "5.5.2")
    assert [(type(e), e.guess) for e in p.events] == [(ev.AuthFailed, True)] + [(ev.AuthFailed, False)] * 2
