"""The SASL module: each server mechanism against its client, against independent
implementations (smtplib's auth helpers, the RFC 2195 and RFC 7677 examples), and
against malformed or arbitrary input, which must end in Failure, never an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import smtplib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtppeer.engine import sasl
from smtppeer.engine.sasl import Challenge, Credentials, Failure, SaslError, Success

# RFC 7677 §3: the SCRAM-SHA-256 example exchange.
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# RFC 2195 §2: the CRAM-MD5 example.
RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC2195_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"

PENCIL_SECRET = sasl.parse_secret(sasl.hash_password("pencil", 4096, RFC7677_SALT))

USERS = {
    "clear": Credentials("clear", password="clear-pw"),
    "hashed": Credentials("hashed", secret=sasl.parse_secret(sasl.hash_password("hashed-pw"))),
    "both": Credentials("both", password="both-pw", secret=sasl.parse_secret(sasl.hash_password("both-pw"))),
    "user": Credentials("user", secret=PENCIL_SECRET),
    "tim": Credentials("tim", password="tanstaaftanstaaf"),
    "grüße": Credentials("grüße", password="pässwörd"),
}
PASSWORDS = {"clear": "clear-pw", "hashed": "hashed-pw", "both": "both-pw", "grüße": "pässwörd"}


def lookup(username: str) -> Credentials | None:
    return USERS.get(username)


def run(
    mechanism: str,
    username: str,
    password: str,
    *,
    use_initial: bool = True,
    server_nonce: str | None = None,
) -> tuple[sasl.Step, list[bytes], sasl.ClientExchange]:
    """Drive a server exchange with the matching client; the final step and the challenges sent."""
    nonce = (lambda: server_nonce) if server_nonce else None
    server = sasl.server_exchange(mechanism, lookup, "mx.example.org", nonce=nonce)
    client = sasl.client_exchange(mechanism, username, password)
    step = server.start(client.initial if use_initial else None)
    challenges = []
    while isinstance(step, Challenge):
        challenges.append(step.data)
        assert len(challenges) < 5, "exchange does not end"
        step = server.respond(client.respond(step.data))
    return step, challenges, client


# -- every mechanism against its own client ---------------------------------------------------


@pytest.mark.parametrize("use_initial", [True, False], ids=["initial", "no-initial"])
@pytest.mark.parametrize("username", ["clear", "hashed", "both", "grüße"])
@pytest.mark.parametrize("mechanism", sasl.SERVER_MECHANISMS)
def test_right_password_succeeds(mechanism: str, username: str, use_initial: bool) -> None:
    step, _, client = run(mechanism, username, PASSWORDS[username], use_initial=use_initial)
    if mechanism == "CRAM-MD5" and username == "hashed":
        assert isinstance(step, Failure) and "clear password" in step.reason
        return
    assert step == Success(username)
    client.verify_success()


@pytest.mark.parametrize("username", ["clear", "hashed", "both"])
@pytest.mark.parametrize("mechanism", sasl.SERVER_MECHANISMS)
def test_wrong_password_fails(mechanism: str, username: str) -> None:
    step, _, _ = run(mechanism, username, "not-the-password")
    assert isinstance(step, Failure)


@pytest.mark.parametrize("mechanism", sasl.SERVER_MECHANISMS)
def test_unknown_user_looks_like_a_wrong_password(mechanism: str) -> None:
    wrong, wrong_challenges, _ = run(mechanism, "clear", "nope", server_nonce="fixednonce")
    unknown, unknown_challenges, _ = run(mechanism, "nobody", "nope", server_nonce="fixednonce")
    assert isinstance(wrong, Failure) and isinstance(unknown, Failure)
    assert "unknown user" in unknown.reason  # the log may say so...
    assert len(unknown_challenges) == len(wrong_challenges)  # ...the client sees the same path
    if mechanism != "SCRAM-SHA-256":
        assert unknown_challenges == wrong_challenges


def _server_first_fields(user: str) -> dict[str, str]:
    server = sasl.server_exchange("SCRAM-SHA-256", lookup, "mx.example.org")
    step = server.start(sasl.client_exchange("SCRAM-SHA-256", user, "pw").initial)
    assert isinstance(step, Challenge)
    return dict(part.split("=", 1) for part in step.data.decode().split(","))


@pytest.mark.parametrize("user", ["nobody", "clear"])
def test_scram_salt_is_stable_for_unknown_and_clear_logins(user: str) -> None:
    first, second = _server_first_fields(user), _server_first_fields(user)
    assert first["s"] == second["s"] and first["r"] != second["r"]
    assert len(base64.b64decode(first["s"])) == 16 and first["i"] == "4096"
    assert _server_first_fields(user + "x")["s"] != first["s"]


def test_scram_clear_salt_does_not_depend_on_the_credentials_object() -> None:
    info = Credentials("clear", password="clear-pw")._scram_info
    assert info[0] == USERS["clear"]._scram_info[0]


def test_scram_password_saslprep_refuses_fails_without_exception() -> None:
    creds = Credentials("bell", password="ring\x07")
    server = sasl.server_exchange("SCRAM-SHA-256", {"bell": creds}.get, "h")
    step = server.start(b"n,,n=bell,r=abcdef")
    assert isinstance(step, Challenge)  # same path as any other login...
    client_final = b"c=biws,r=" + step.data.split(b",")[0][2:] + b",p=" + base64.b64encode(bytes(32))
    assert isinstance(server.respond(client_final), Failure)  # ...ending in Failure
    assert creds.check_password("ring\x07") and not creds.check_password("ring")


# -- independent implementations ----------------------------------------------------------------


def smtplib_auth(authobject, initial_response_ok: bool, server: sasl.ServerExchange) -> sasl.Step:
    """smtplib.SMTP.auth's loop (3.11), minus the socket and the base64."""
    obj = authobject.__self__
    obj._auth_challenge_count = 0
    initial = authobject() if initial_response_ok else None
    if initial is not None:
        step = server.start(initial.encode("ascii"))
        obj._auth_challenge_count = 1
    else:
        step = server.start(None)
    while isinstance(step, Challenge):
        obj._auth_challenge_count += 1
        step = server.respond(authobject(step.data).encode("ascii"))
    return step


def smtplib_user(user: str, password: str) -> smtplib.SMTP:
    obj = smtplib.SMTP.__new__(smtplib.SMTP)  # no connection: only the auth helpers are used
    obj.user, obj.password = user, password
    return obj


@pytest.mark.parametrize("initial_ok", [True, False])
@pytest.mark.parametrize(
    ("mechanism", "username", "password", "succeeds"),
    [
        ("PLAIN", "clear", "clear-pw", True),
        ("PLAIN", "hashed", "hashed-pw", True),
        ("PLAIN", "hashed", "wrong", False),
        ("PLAIN", "nobody", "x", False),
        ("LOGIN", "clear", "clear-pw", True),
        ("LOGIN", "hashed", "hashed-pw", True),
        ("LOGIN", "clear", "wrong", False),
        ("CRAM-MD5", "clear", "clear-pw", True),
        ("CRAM-MD5", "both", "both-pw", True),
        ("CRAM-MD5", "clear", "wrong", False),
        ("CRAM-MD5", "nobody", "x", False),
    ],
)
def test_smtplib_clients_against_our_server(
    mechanism: str, username: str, password: str, succeeds: bool, initial_ok: bool
) -> None:
    obj = smtplib_user(username, password)
    authobject = getattr(obj, "auth_" + mechanism.lower().replace("-", "_"))
    server = sasl.server_exchange(mechanism, lookup, "mx.example.org")
    step = smtplib_auth(authobject, initial_ok, server)
    assert (step == Success(username)) if succeeds else isinstance(step, Failure)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_our_clients_answer_like_smtplib(mechanism: str) -> None:
    obj = smtplib_user("someone", "secret")
    ours = sasl.client_exchange(mechanism, "someone", "secret")
    if mechanism == "PLAIN":
        assert ours.initial == smtplib.SMTP.auth_plain(obj).encode()
    elif mechanism == "LOGIN":
        assert ours.initial is None
        obj._auth_challenge_count = 1
        assert ours.respond(b"Username:") == smtplib.SMTP.auth_login(obj, b"Username:").encode()
        obj._auth_challenge_count = 2
        assert ours.respond(b"Password:") == smtplib.SMTP.auth_login(obj, b"Password:").encode()
    else:
        assert ours.initial is None
        challenge = b"<12345.678@mx.example.org>"
        assert ours.respond(challenge) == smtplib.SMTP.auth_cram_md5(obj, challenge).encode()


def rfc2195_server() -> sasl.ServerExchange:
    nonce = "1896.697170952"
    return sasl.server_exchange("CRAM-MD5", lookup, "postoffice.reston.mci.net", nonce=lambda: nonce)


def test_cram_md5_rfc2195_example() -> None:
    server = rfc2195_server()
    assert server.start(None) == Challenge(RFC2195_CHALLENGE)
    assert server.respond(RFC2195_RESPONSE) == Success("tim")
    client = sasl.client_exchange("CRAM-MD5", "tim", "tanstaaftanstaaf")
    assert client.respond(RFC2195_CHALLENGE) == RFC2195_RESPONSE


def test_cram_md5_digest_is_case_insensitive() -> None:
    server = rfc2195_server()
    server.start(None)
    assert server.respond(RFC2195_RESPONSE.upper().replace(b"TIM", b"tim")) == Success("tim")


def test_cram_md5_default_challenge_shape() -> None:
    first = sasl.server_exchange("CRAM-MD5", lookup, "mx.example.org").start(None)
    second = sasl.server_exchange("CRAM-MD5", lookup, "mx.example.org").start(None)
    assert isinstance(first, Challenge) and isinstance(second, Challenge)
    assert re.fullmatch(rb"<\d+\.\d+@mx\.example\.org>", first.data)
    assert first.data != second.data


def test_cram_md5_hashed_only_login_fails_and_says_why() -> None:
    step, _, _ = run("CRAM-MD5", "hashed", "hashed-pw")
    assert isinstance(step, Failure) and "clear password" in step.reason


def test_scram_rfc7677_server() -> None:
    server = sasl.server_exchange("SCRAM-SHA-256", lookup, "h", nonce=lambda: RFC7677_SERVER_NONCE)
    assert server.start(RFC7677_CLIENT_FIRST) == Challenge(RFC7677_SERVER_FIRST)
    assert server.respond(RFC7677_CLIENT_FINAL) == Challenge(RFC7677_SERVER_FINAL)
    assert server.respond(b"") == Success("user")


def test_scram_rfc7677_server_without_initial_response() -> None:
    server = sasl.server_exchange("SCRAM-SHA-256", lookup, "h", nonce=lambda: RFC7677_SERVER_NONCE)
    assert server.start(None) == Challenge(b"")
    assert server.respond(RFC7677_CLIENT_FIRST) == Challenge(RFC7677_SERVER_FIRST)
    assert server.respond(RFC7677_CLIENT_FINAL) == Challenge(RFC7677_SERVER_FINAL)
    assert server.respond(b"") == Success("user")


def test_scram_rfc7677_client() -> None:
    client = sasl.client_exchange("SCRAM-SHA-256", "user", "pencil", nonce=lambda: RFC7677_CLIENT_NONCE)
    assert client.initial == RFC7677_CLIENT_FIRST
    assert client.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL
    assert client.respond(RFC7677_SERVER_FINAL) == b""
    client.verify_success()


def test_scram_client_rejects_a_wrong_server_signature() -> None:
    client = sasl.client_exchange("SCRAM-SHA-256", "user", "pencil", nonce=lambda: RFC7677_CLIENT_NONCE)
    client.respond(RFC7677_SERVER_FIRST)
    with pytest.raises(SaslError):
        client.respond(b"v=" + base64.b64encode(bytes(32)))
    with pytest.raises(SaslError):
        client.verify_success()


@pytest.mark.parametrize(
    "server_first",
    [
        b"e=unknown-user",
        b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # not our nonce
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # no server part
        b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999",  # costly
        b"garbage",
        b"\xff\xfe",
    ],
)
def test_scram_client_rejects_bad_server_first(server_first: bytes) -> None:
    client = sasl.client_exchange("SCRAM-SHA-256", "user", "pencil", nonce=lambda: RFC7677_CLIENT_NONCE)
    with pytest.raises(SaslError):
        client.respond(server_first)


def test_scram_client_rejects_server_final_error() -> None:
    client = sasl.client_exchange("SCRAM-SHA-256", "user", "pencil", nonce=lambda: RFC7677_CLIENT_NONCE)
    client.respond(RFC7677_SERVER_FIRST)
    with pytest.raises(SaslError):
        client.respond(b"e=invalid-proof")


def test_scram_client_needs_server_final_before_success() -> None:
    client = sasl.client_exchange("SCRAM-SHA-256", "user", "pencil")
    with pytest.raises(SaslError):
        client.verify_success()
    client = sasl.client_exchange("SCRAM-SHA-256", "user", "pencil", nonce=lambda: RFC7677_CLIENT_NONCE)
    client.respond(RFC7677_SERVER_FIRST)
    with pytest.raises(SaslError):
        client.verify_success()
    client.respond(RFC7677_SERVER_FINAL)
    client.verify_success()
    with pytest.raises(SaslError):
        client.respond(b"")


def test_scram_client_resends_client_first_after_empty_challenge() -> None:
    client = sasl.client_exchange("SCRAM-SHA-256", "user", "pencil", nonce=lambda: RFC7677_CLIENT_NONCE)
    assert client.respond(b"") == RFC7677_CLIENT_FIRST
    assert client.respond(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL


@pytest.mark.parametrize("username", ["", "bad\x07name"])
def test_scram_client_refuses_unsendable_usernames(username: str) -> None:
    with pytest.raises(SaslError):
        sasl.client_exchange("SCRAM-SHA-256", username, "pw")


def test_other_clients_need_no_server_proof() -> None:
    for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
        sasl.client_exchange(mechanism, "u", "p").verify_success()


def test_plain_client() -> None:
    client = sasl.client_exchange("PLAIN", "u", "p")
    assert client.initial == b"\0u\0p"
    assert client.respond(b"") == b"\0u\0p"  # a server that wants it after an empty challenge
    with pytest.raises(SaslError):
        client.respond(b"")
    with pytest.raises(SaslError):
        sasl.client_exchange("PLAIN", "u\0v", "p")


def test_login_client_follows_prompts_or_order() -> None:
    client = sasl.client_exchange("LOGIN", "u", "p")
    assert client.respond(b"Password:") == b"p"
    assert client.respond(b"Username:") == b"u"
    with pytest.raises(SaslError):
        client.respond(b"Password:")
    client = sasl.client_exchange("LOGIN", "u", "p")
    assert [client.respond(b"Nom:"), client.respond(b"Mot de passe:")] == [b"u", b"p"]


def test_cram_md5_client_answers_once() -> None:
    client = sasl.client_exchange("CRAM-MD5", "u", "p")
    client.respond(b"<1.2@h>")
    with pytest.raises(SaslError):
        client.respond(b"<1.2@h>")


# -- exchange shapes ------------------------------------------------------------------------------


def test_plain_without_initial_response_starts_with_empty_challenge() -> None:
    server = sasl.server_exchange("PLAIN", lookup, "h")
    assert server.start(None) == Challenge(b"")
    assert server.respond(b"\0clear\0clear-pw") == Success("clear")


def test_plain_authzid_equal_to_authcid_is_fine() -> None:
    server = sasl.server_exchange("PLAIN", lookup, "h")
    assert server.start(b"clear\0clear\0clear-pw") == Success("clear")


def test_plain_proxy_authorisation_is_refused() -> None:
    server = sasl.server_exchange("PLAIN", lookup, "h")
    step = server.start(b"hashed\0clear\0clear-pw")
    assert isinstance(step, Failure) and "proxy" in step.reason


def test_login_shapes() -> None:
    server = sasl.server_exchange("LOGIN", lookup, "h")
    assert server.start(None) == Challenge(b"Username:")
    assert server.respond(b"clear") == Challenge(b"Password:")
    assert server.respond(b"clear-pw") == Success("clear")
    server = sasl.server_exchange("LOGIN", lookup, "h")
    assert server.start(b"clear") == Challenge(b"Password:")
    assert server.respond(b"clear-pw") == Success("clear")


@pytest.mark.parametrize("mechanism", sasl.SERVER_MECHANISMS)
def test_nothing_after_a_terminal_step(mechanism: str) -> None:
    for password in (PASSWORDS["clear"], "wrong"):
        nonce = (lambda: "n0nce") if mechanism != "CRAM-MD5" else None
        server = sasl.server_exchange(mechanism, lookup, "h", nonce=nonce)
        client = sasl.client_exchange(mechanism, "clear", password)
        step = server.start(client.initial)
        while isinstance(step, Challenge):
            step = server.respond(client.respond(step.data))
        assert server.respond(b"") == Failure("exchange already finished")
        assert server.start(None) == Failure("exchange already finished")


@pytest.mark.parametrize("mechanism", sasl.SERVER_MECHANISMS)
def test_out_of_order_calls_fail(mechanism: str) -> None:
    assert isinstance(sasl.server_exchange(mechanism, lookup, "h").respond(b"x"), Failure)
    server = sasl.server_exchange(mechanism, lookup, "h")
    server.start(None)
    assert isinstance(server.start(None), Failure)


@pytest.mark.parametrize("mechanism", ["plain", "XOAUTH2", "SCRAM-SHA-256-PLUS", ""])
def test_unknown_mechanisms_are_refused(mechanism: str) -> None:
    with pytest.raises(ValueError):
        sasl.server_exchange(mechanism, lookup, "h")
    with pytest.raises(ValueError):
        sasl.client_exchange(mechanism, "u", "p")


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "LOGIN", "CRAM-MD5"])
def test_lookup_errors_propagate(mechanism: str) -> None:
    """A broken user database is the caller's 454, not a 535."""

    def broken(username: str) -> Credentials | None:
        raise ConnectionError("user database down")

    server = sasl.server_exchange(mechanism, broken, "h")
    client = sasl.client_exchange(mechanism, "clear", "clear-pw")
    with pytest.raises(ConnectionError):
        step = server.start(client.initial)
        while isinstance(step, Challenge):
            step = server.respond(client.respond(step.data))
    assert server.respond(b"") == Failure("exchange already finished")


# -- malformed input ------------------------------------------------------------------------------

_SCRAM_NONCE = "srvnonce"
_SCRAM_COMBINED = b"r=" + RFC7677_CLIENT_NONCE.encode() + _SCRAM_NONCE.encode()
_ZERO_PROOF = base64.b64encode(bytes(32))

MALFORMED = [
    # (mechanism, initial response, answers to the challenges that follow)
    ("PLAIN", b"clear\0clear-pw", []),
    ("PLAIN", b"\0clear\0clear-pw\0", []),
    ("PLAIN", b"\0\0", []),
    ("PLAIN", b"", []),
    ("PLAIN", b"\0clear\0", []),
    ("PLAIN", b"\0\0clear-pw", []),
    ("PLAIN", b"\0cl\xffear\0clear-pw", []),
    ("PLAIN", b"\0clear\0clear-pw\xff", []),
    ("PLAIN", None, [b"no nuls at all"]),
    ("LOGIN", b"\xff", []),
    ("LOGIN", b"", []),
    ("LOGIN", None, [b"\xc3"]),
    ("LOGIN", None, [b"clear", b"\xff"]),
    ("LOGIN", None, [b"clear", b""]),
    ("CRAM-MD5", b"clear 0123", []),  # initial response to a server-first mechanism
    ("CRAM-MD5", None, [b"clear"]),
    ("CRAM-MD5", None, [b""]),
    ("CRAM-MD5", None, [b"clear " + b"z" * 32]),
    ("CRAM-MD5", None, [b"clear " + b"0" * 31]),
    ("CRAM-MD5", None, [b" " + b"0" * 32]),
    ("CRAM-MD5", None, [b"cl\xffear " + b"0" * 32]),
    ("SCRAM-SHA-256", b"", []),
    ("SCRAM-SHA-256", b"garbage", []),
    ("SCRAM-SHA-256", b"n,,", []),
    ("SCRAM-SHA-256", b"n,,n=user", []),
    ("SCRAM-SHA-256", b"n,,r=abc", []),
    ("SCRAM-SHA-256", b"x,,n=user,r=abc", []),
    ("SCRAM-SHA-256", b"p=tls-server-end-point,,n=user,r=abc", []),  # channel binding
    ("SCRAM-SHA-256", b"p=tls-unique,,n=user,r=abc", []),
    ("SCRAM-SHA-256", b"p=tls-exporter,,n=user,r=abc", []),
    ("SCRAM-SHA-256", b"n,a=admin,n=user,r=abc", []),  # authzid
    ("SCRAM-SHA-256", b"n,,m=ext,n=user,r=abc", []),
    ("SCRAM-SHA-256", b"n,,n=us=er,r=abc", []),  # bad escape
    ("SCRAM-SHA-256", b"n,,n=user,r=a,b", []),
    ("SCRAM-SHA-256", b"n,,n=\xff,r=abc", []),
    ("SCRAM-SHA-256", b"n,,n=user,r=abc\x00", []),
    ("SCRAM-SHA-256", None, [b"n,,n=user,r=abc,r=def"]),
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"garbage"]),
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"c=biws,r=wrongnonce,p=" + _ZERO_PROOF]),
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"c=biws," + _SCRAM_COMBINED + b",p=" + _ZERO_PROOF]),  # wrong
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"c=biws," + _SCRAM_COMBINED + b",p=not*base64"]),
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"c=biws," + _SCRAM_COMBINED + b",p=AAAA"]),  # short proof
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"c=eSws," + _SCRAM_COMBINED + b",p=" + _ZERO_PROOF]),  # 'y,,'
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"c=biws," + _SCRAM_COMBINED]),  # no proof
    ("SCRAM-SHA-256", RFC7677_CLIENT_FIRST, [b"\xff"]),
]


@pytest.mark.parametrize(("mechanism", "initial", "answers"), MALFORMED)
def test_malformed_input_fails_cleanly(mechanism: str, initial: bytes | None, answers: list[bytes]) -> None:
    server = sasl.server_exchange(mechanism, lookup, "h", nonce=lambda: _SCRAM_NONCE)
    step = server.start(initial)
    for answer in answers:
        assert isinstance(step, Challenge)
        step = server.respond(answer)
    assert isinstance(step, Failure), step
    assert "internal error" not in step.reason


def test_scram_nonempty_answer_to_server_final_fails() -> None:
    server = sasl.server_exchange("SCRAM-SHA-256", lookup, "h", nonce=lambda: RFC7677_SERVER_NONCE)
    server.start(RFC7677_CLIENT_FIRST)
    server.respond(RFC7677_CLIENT_FINAL)
    assert isinstance(server.respond(b"v=whatever"), Failure)


_FRAGMENTS = st.sampled_from(
    [b"n,,", b"y,,", b"p=tls-unique,,", b"n=user", b"n=clear", b"r=", b"s=", b"i=4096", b"c=biws", b"p=",
     b"v=", b"e=x", b",", b"=", b"\0", b"clear", b"clear-pw", b"\xff", b"AAAA", b" ", b"0" * 32]
)  # fmt: skip
_MESSAGES = st.one_of(st.binary(max_size=200), st.lists(_FRAGMENTS, max_size=12).map(b"".join))


@settings(max_examples=300, deadline=None)
@given(
    mechanism=st.sampled_from(sasl.SERVER_MECHANISMS),
    initial=st.one_of(st.none(), _MESSAGES),
    answers=st.lists(_MESSAGES, max_size=4),
)
def test_arbitrary_bytes_never_raise(mechanism: str, initial: bytes | None, answers: list[bytes]) -> None:
    server = sasl.server_exchange(mechanism, lookup, "h")
    steps = [server.start(initial)] + [server.respond(answer) for answer in answers]
    assert all(isinstance(step, Challenge | Success | Failure) for step in steps)
    assert not any(isinstance(step, Failure) and "internal error" in step.reason for step in steps)


@settings(max_examples=200, deadline=None)
@given(client_final=_MESSAGES, ack=_MESSAGES)
def test_arbitrary_scram_client_final_never_raises(client_final: bytes, ack: bytes) -> None:
    server = sasl.server_exchange("SCRAM-SHA-256", lookup, "h", nonce=lambda: RFC7677_SERVER_NONCE)
    assert server.start(RFC7677_CLIENT_FIRST) == Challenge(RFC7677_SERVER_FIRST)
    step = server.respond(client_final)
    assert isinstance(step, Challenge | Failure)  # a random proof does not pass
    assert isinstance(server.respond(ack), Failure)


# -- stored secrets ---------------------------------------------------------------------------------


def _independent_scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def test_hash_password_rfc5803_text() -> None:
    text = sasl.hash_password("pencil", 4096, RFC7677_SALT)
    stored_key, server_key = _independent_scram_keys("pencil", RFC7677_SALT, 4096)
    salt_b64, stored_b64, server_b64 = (
        base64.b64encode(b).decode() for b in (RFC7677_SALT, stored_key, server_key)
    )
    assert text == f"SCRAM-SHA-256$4096:{salt_b64}${stored_b64}:{server_b64}"


def test_hash_password_defaults() -> None:
    first, second = sasl.hash_password("pw"), sasl.hash_password("pw")
    b64 = "[A-Za-z0-9+/]+={0,2}"
    assert re.fullmatch(rf"SCRAM-SHA-256\$4096:{b64}\${b64}:{b64}", first)
    assert first != second  # random salt
    secret = sasl.parse_secret(first)
    assert secret.iterations == 4096 and len(secret.salt) == 16
    assert len(secret.stored_key) == len(secret.server_key) == 32


def test_round_trip_and_check_password() -> None:
    secret = sasl.parse_secret(sasl.hash_password("s3cret", iterations=5000))
    assert secret.iterations == 5000
    creds = Credentials("u", secret=secret)
    assert creds.check_password("s3cret")
    assert not creds.check_password("s3cret ")
    assert not creds.check_password("")
    assert sasl.parse_secret("  " + sasl.hash_password("x", salt=RFC7677_SALT) + "\n").salt == RFC7677_SALT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"iterations": 4095}, "iteration"), ({"iterations": 10**8}, "iteration"), ({"salt": b"short"}, "salt")],
)
def test_hash_password_refuses_what_scram_cannot_serve(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sasl.hash_password("pw", **kwargs)


def test_hash_password_refuses_a_password_saslprep_prohibits() -> None:
    with pytest.raises(ValueError):
        sasl.hash_password("ring\x07")


_GOOD = sasl.hash_password("pw", salt=RFC7677_SALT)
_SCHEME, _PARAMS, _KEYS = _GOOD.split("$")
_STORED, _SERVER = _KEYS.split(":")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SCRAM-SHA-256",
        _GOOD + "$",
        _GOOD.replace("SCRAM-SHA-256", "SCRAM-SHA-1"),
        _GOOD.replace("SCRAM-SHA-256", "{SSHA}"),
        f"{_SCHEME}${_PARAMS.replace(':', '')}${_KEYS}",
        f"{_SCHEME}${_PARAMS}${_STORED}{_SERVER}",
        f"{_SCHEME}$abc:{_PARAMS.split(':')[1]}${_KEYS}",
        f"{_SCHEME}$-4096:{_PARAMS.split(':')[1]}${_KEYS}",
        f"{_SCHEME}$1000:{_PARAMS.split(':')[1]}${_KEYS}",
        f"{_SCHEME}$４０９６:{_PARAMS.split(':')[1]}${_KEYS}",  # non-ASCII digits
        f"{_SCHEME}$4096:not*base64${_KEYS}",
        f"{_SCHEME}$4096:c2hvcnQ=${_KEYS}",  # salt too short
        f"{_SCHEME}$4096:${_KEYS}",
        f"{_SCHEME}${_PARAMS}${_STORED}:{_SERVER}:{_SERVER}",
        f"{_SCHEME}${_PARAMS}${_STORED}:c2hvcnQ=",  # key too short
        f"{_SCHEME}${_PARAMS}$:{_SERVER}",
        f"{_SCHEME}${_PARAMS}${_STORED}:{_SERVER}é",
    ],
)
def test_malformed_secrets(text: str) -> None:
    with pytest.raises(ValueError) as info:
        sasl.parse_secret(text)
    message = str(info.value)
    assert "\n" not in message and _STORED not in message and _SERVER not in message


def test_scram_secret_validates_when_built_directly() -> None:
    with pytest.raises(ValueError):
        sasl.ScramSecret(4096, RFC7677_SALT, b"short", bytes(32))
    with pytest.raises(ValueError):
        sasl.ScramSecret(True, RFC7677_SALT, bytes(32), bytes(32))


# -- credentials ------------------------------------------------------------------------------------


def test_credentials_need_a_password_or_secret() -> None:
    with pytest.raises(ValueError):
        Credentials("u")


def test_credentials_mechanisms() -> None:
    assert USERS["clear"].mechanisms() == frozenset(sasl.SERVER_MECHANISMS)
    assert USERS["both"].mechanisms() == frozenset(sasl.SERVER_MECHANISMS)
    assert USERS["hashed"].mechanisms() == {"SCRAM-SHA-256", "PLAIN", "LOGIN"}


def test_credentials_check_password_clear_and_hashed() -> None:
    for username, password in (("clear", "clear-pw"), ("hashed", "hashed-pw"), ("user", "pencil")):
        creds = USERS[username]
        assert creds.check_password(password)
        assert not creds.check_password(password + "x")
        assert not creds.check_password(password.upper())


def test_clear_passwords_compare_saslprepped() -> None:
    """RFC 4616 compares prepared strings: a soft hyphen maps to nothing, as SCRAM would map it."""
    assert Credentials("u", password="pass\u00adword").check_password("password")
    assert Credentials("u", password="pass\u00a0word").check_password("pass word")


def test_credentials_repr_keeps_secrets_out_of_logs() -> None:
    text = repr(USERS["both"]) + repr(PENCIL_SECRET)
    assert "both-pw" not in text and repr(PENCIL_SECRET.stored_key) not in text


# -- choosing a mechanism ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "secure", "allow_clear", "chosen"),
    [
        (["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"], False, False, "SCRAM-SHA-256"),
        (["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"], True, False, "SCRAM-SHA-256"),
        (["PLAIN", "LOGIN", "CRAM-MD5"], False, False, "CRAM-MD5"),
        (["LOGIN", "PLAIN"], True, False, "PLAIN"),
        (["LOGIN"], True, False, "LOGIN"),
        (["PLAIN", "LOGIN"], False, False, None),
        (["PLAIN", "LOGIN"], False, True, "PLAIN"),
        (["login", "cram-md5"], False, False, "CRAM-MD5"),
        (["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "PLAIN"], True, False, "PLAIN"),
        (["XOAUTH2", "GSSAPI", "NTLM"], True, True, None),
        ([], True, True, None),
    ],
)
def test_choose_mechanism(offered: list[str], secure: bool, allow_clear: bool, chosen: str | None) -> None:
    assert sasl.choose_mechanism(offered, secure=secure, allow_clear=allow_clear) == chosen
    assert sasl.choose_mechanism(iter(offered), secure=secure, allow_clear=allow_clear) == chosen


def test_constants() -> None:
    assert sasl.SERVER_MECHANISMS == ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN")
    assert sasl.CLIENT_PREFERENCE == ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN")
    assert sasl.CLEAR_ONLY == {"PLAIN", "LOGIN"}
