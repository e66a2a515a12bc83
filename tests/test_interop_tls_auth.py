"""STARTTLS and AUTH with real peers, both ways.

smtppeer as the server: ``swaks`` and ``smtplib`` log in to the provider of the
trust lab (``tests/trustlab.py``) to relay to the outside world -- the ``*``
route, which is only for authenticated (or trusted) clients, goes to a second
smtppeer, ``far.test``, whose Maildirs show what got through.

smtppeer as the client: against a Postfix that insists on STARTTLS, against
the provider with ``tls = "verify"`` and with a login, and against aiosmtpd
with an authenticator.  What did not go stays in the sender's spool, read on
disk.
"""

from __future__ import annotations

import base64
import json
import signal
import smtplib
import subprocess
import threading
from pathlib import Path

import pytest

from .conftest import IN_CI, TwistdProcess, free_port, require_tool, wait_until
from .postfix import PrivatePostfix, require_postfix
from .trustlab import ALICE_PASSWORD, CAROL, CAROL_PASSWORD, insecure_context, make_cert, start_provider

pytestmark = pytest.mark.interop

FAR = """
hostname = "far.test"
data_dir = "{data_dir}"

[[listen]]
endpoint = "tcp:%(port)d:interface=127.0.0.1"

[domains."far.test"]
"""

# A sending smtppeer: one listener to inject mail into, and what the test adds
# (peers and routes).
SENDER = """
hostname = "sender.test"
data_dir = "{data_dir}"

[[listen]]
endpoint = "tcp:%(port)d:interface=127.0.0.1"

[domains."sender.test"]
%(extra)s
"""


class Lab:
    """One provider and the outside world (``far.test``) for the whole module."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[TwistdProcess] = []
        self.far = self.start(FAR % {"port": (far_port := free_port())}, far_port, "far")
        #: a second SMTP listener of the provider, for a peer entry of its own
        self.second_port = free_port()
        extra = (
            f'[routes]\n"*" = "tcp:host=127.0.0.1:port={far_port}"\n\n'
            f'[[listen]]\nendpoint = "tcp:{self.second_port}:interface=127.0.0.1"\n'
        )
        self.provider = start_provider(self.start, base, extra=extra)

    def start(self, text: str, port: int, name: str = "peer") -> TwistdProcess:
        """Like the ``twistd_config`` fixture, for a module-scoped process."""
        data = self.base / f"{name}-data"
        data.mkdir()
        config = self.base / f"{name}.toml"
        config.write_text(text.replace("{data_dir}", str(data)))
        proc = TwistdProcess(data, config=config, port=port)
        self.started.append(proc)
        return proc.start()

    def stop(self) -> None:
        for proc in reversed(self.started):
            proc.stop()

    def arrived(self, user: str) -> list[bytes]:
        """The messages in ``user@far.test``'s Maildir."""
        new = self.far.maildir("far.test", user) / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("tls-auth"))
    try:
        yield lab
    finally:
        lab.stop()


def swaks(port: int, *args: str) -> subprocess.CompletedProcess:
    binary = require_tool("swaks")
    argv = [binary, "--server", "127.0.0.1", "--port", str(port), "--from", "sender@outside.test", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def message(subject: str, to: str) -> bytes:
    head = f"From: <sender@outside.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
    return f"{head}\r\nbody of {subject}\r\n".encode()


def start_sender(twistd_config, extra: str):
    port = free_port()
    return twistd_config(SENDER % {"port": port, "extra": extra}, port, name="sender")


def inject(proc, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", proc.port, timeout=30) as s:
        assert not s.sendmail("me@sender.test", [rcpt], message(subject, rcpt))


def spooled(proc) -> dict[str, dict]:
    """recipient -> its record in ``proc``'s spool (state, attempts, last_reply), read on disk."""
    out = {}
    for path in sorted((proc.data_dir / "spool" / "queue").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # replaced or removed while we looked
            continue
        for rcpt in record["recipients"]:
            out[rcpt["address"]] = rcpt
    return out


def deferred(proc, rcpt: str) -> dict | None:
    """``rcpt``'s spool record once an attempt has deferred it (still queued), else None."""
    record = spooled(proc).get(rcpt)
    if record and record["state"] == "pending" and record["attempts"] >= 1:
        return record
    return None


# -- clients log in to smtppeer ----------------------------------------------------------


def test_swaks_without_auth_may_not_relay(lab):
    done = swaks(lab.provider.smtp_port, "--to", "noauth@far.test")
    assert done.returncode != 0, done.stdout
    assert "<** 550 5.7.1 Relaying denied" in done.stdout, done.stdout
    # the provider's own domain needs no login
    done = swaks(lab.provider.smtp_port, "--to", "postmaster@provider.test", "--header", "Subject: no login")
    assert done.returncode == 0, done.stdout
    new = lab.provider.data_dir / "mail" / "provider.test" / "postmaster" / "new"
    wait_until(
        lambda: any(b"Subject: no login" in p.read_bytes() for p in new.glob("*")), what="the local delivery"
    )
    assert lab.arrived("noauth") == []


@pytest.mark.parametrize(
    ("mechanism", "login", "password"),
    [
        ("PLAIN", "alice", ALICE_PASSWORD),
        ("LOGIN", "alice", ALICE_PASSWORD),
        ("CRAM-MD5", "alice", ALICE_PASSWORD),
        ("PLAIN", CAROL, CAROL_PASSWORD),
        ("CRAM-MD5", CAROL, CAROL_PASSWORD),
    ],
)
def test_swaks_starttls_auth_relays(lab, mechanism, login, password):
    user = f"swaks-{mechanism.lower()}-{login.split('@')[0].replace('+', '-')}"
    subject = f"swaks {mechanism} {login}"
    done = swaks(
        lab.provider.smtp_port,
        "--to", f"{user}@far.test",
        "--tls",
        "--auth", mechanism,
        "--auth-user", login,
        "--auth-password", password,
        "--header", f"Subject: {subject}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in done.stdout and "=== TLS started" in done.stdout, done.stdout
    assert "<~  235 2.7.0 Authentication successful" in done.stdout, done.stdout
    [raw] = wait_until(lambda: lab.arrived(user), what="the relayed message at far.test")
    assert f"Subject: {subject}".encode() in raw
    assert b"by provider.test (smtppeer) with ESMTPSA" in raw and b"by far.test (smtppeer)" in raw
    assert f"AUTH {mechanism} as {login} from 127.0.0.1" in lab.provider.log()


def test_swaks_will_not_send_plain_in_clear(lab):
    """In clear the provider offers only the challenge-response mechanisms, so swaks stops
    before sending the password (exit 28); nothing is relayed."""
    done = swaks(
        lab.provider.smtp_port,
        "--to", "swaks-clear@far.test",
        "--auth", "PLAIN",
        "--auth-user", "alice",
        "--auth-password", ALICE_PASSWORD,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 28, output
    assert "<-  250-AUTH SCRAM-SHA-256 CRAM-MD5\n" in output, output
    assert "*** Auth not attempted, requested type not available" in output, output
    assert " -> AUTH" not in output, output  # the password never left
    assert lab.arrived("swaks-clear") == []


@pytest.mark.parametrize("mechanism", ["CRAM-MD5", "PLAIN", "LOGIN"])
def test_smtplib_starttls_login_relays(lab, mechanism):
    user = "smtplib-" + mechanism.lower()
    with smtplib.SMTP("127.0.0.1", lab.provider.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=insecure_context())
        s.ehlo("client.test")
        offered = s.esmtp_features["auth"].split()
        assert mechanism in offered, offered
        s.user, s.password = "alice", ALICE_PASSWORD
        method = getattr(s, "auth_" + mechanism.lower().replace("-", "_"))
        code, text = s.auth(mechanism, method, initial_response_ok=mechanism != "LOGIN")
        assert code == 235, text
        assert not s.sendmail("a@client.test", [f"{user}@far.test"], message(f"smtplib {mechanism}", user))
    [raw] = wait_until(lambda: lab.arrived(user), what="the relayed message at far.test")
    assert f"Subject: smtplib {mechanism}".encode() in raw
    assert b"by provider.test (smtppeer) with ESMTPSA" in raw
    assert f"AUTH {mechanism} as alice from 127.0.0.1" in lab.provider.log()


def test_auth_in_clear_is_refused_with_538(lab):
    token = base64.b64encode(f"\0alice\0{ALICE_PASSWORD}".encode()).decode()
    with smtplib.SMTP("127.0.0.1", lab.provider.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "CRAM-MD5"]
        assert s.docmd("AUTH", f"PLAIN {token}") == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        assert s.docmd("AUTH", "LOGIN")[0] == 538
        s.mail("a@client.test")
        code, text = s.rcpt("clear@far.test")  # still nobody: no relaying
        assert code == 550 and text.startswith(b"5.7.1"), text
        s.rset()
        s.starttls(context=insecure_context())
        s.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            s.login("alice", "not the password")
        assert refused.value.smtp_code == 535
        # login() tries every mechanism it knows (CRAM-MD5, PLAIN, LOGIN): three failures,
        # the listener's max_auth_failures, so the provider ends the session
        assert s.getreply() == (421, b"4.7.0 provider.test Too many failed authentications")
    assert lab.arrived("clear") == []


# -- smtppeer logs in (and checks certificates) as a client ------------------------------


def test_client_verify_checks_the_provider_certificate(lab, twistd_config):
    """``tls = "verify"``: the provider's self-signed certificate as the CA, its name as
    tls_name; the same certificate under another name is refused and the mail waits."""
    provider = lab.provider
    sender = start_sender(
        twistd_config,
        f"""
[routes]
"provider.test" = "peer:good"
"cust.test" = "peer:misnamed"

[peers.good]
endpoint = "tcp:host=127.0.0.1:port={provider.smtp_port}"
tls = "verify"
ca_file = "{provider.cert}"
tls_name = "provider.test"

[peers.misnamed]
endpoint = "tcp:host=127.0.0.1:port={lab.second_port}"
tls = "verify"
ca_file = "{provider.cert}"
tls_name = "wrong.test"
""",
    )
    inject(sender, "verified@provider.test", "verified")
    inject(sender, "misnamed@cust.test", "misnamed")

    new = provider.data_dir / "mail" / "provider.test" / "verified" / "new"
    [path] = wait_until(lambda: new.is_dir() and list(new.iterdir()), what="the verified delivery")
    raw = path.read_bytes()
    assert b"Subject: verified" in raw and b"from sender.test" in raw

    record = wait_until(lambda: deferred(sender, "misnamed@cust.test"), what="the misnamed peer's deferral")
    assert record["last_reply"].startswith("451 ") and "wrong.test" in record["last_reply"], record
    # the failed handshake ends the session properly (it once raised in connectionLost,
    # leaving the delivery unfinished and SIGTERM waiting for it)
    wait_until(
        lambda: f"session with tcp:host=127.0.0.1:port={lab.second_port}: 0 of 1" in sender.log(),
        what="the misnamed session to end",
    )
    assert "misnamed@cust.test" not in provider.held().get("cust", [])
    assert "misnamed" not in provider.log()
    assert sender.stop() in (0, -signal.SIGTERM)  # not killed after the stop timeout
    sender_log = sender.log()
    assert "Traceback" not in sender_log, sender_log
    assert "verified@provider.test delivered" in sender_log, sender_log
    assert "misnamed@cust.test deferred (attempt 1)" in sender_log, sender_log
    assert spooled(sender)["misnamed@cust.test"]["state"] == "pending"  # still queued on disk


@pytest.mark.parametrize(("login", "password"), [("alice", ALICE_PASSWORD), (CAROL, CAROL_PASSWORD)])
def test_client_auth_against_smtppeer(lab, twistd_config, login, password):
    """A peer entry with a provider login (a name, or an address): the provider lets it
    relay to the world."""
    provider = lab.provider
    token = "client-auth-" + login.split("@")[0].replace("+", "-")
    sender = start_sender(
        twistd_config,
        f"""
[routes]
"far.test" = "peer:provider"

[peers.provider]
endpoint = "tcp:host=127.0.0.1:port={provider.smtp_port}"
tls = "required"
username = "{login}"
password = "{password}"
""",
    )
    inject(sender, f"{token}@far.test", "logged in")
    [raw] = wait_until(lambda: lab.arrived(token), what="the message relayed by the provider")
    assert b"Subject: logged in" in raw
    hops = raw.split(b"\r\n\r\n", 1)[0]
    assert b"by provider.test (smtppeer)" in hops and b"by sender.test (smtppeer)" in hops
    # smtppeer prefers SCRAM-SHA-256 when offered
    wait_until(
        lambda: f"AUTH SCRAM-SHA-256 as {login} from 127.0.0.1" in provider.log(),
        what="the provider's AUTH line",
    )
    wait_until(lambda: not spooled(sender), what="the sender's spool to empty")


def postfix_requiring_tls(base: Path) -> PrivatePostfix:
    cert, key = make_cert(base.parent, "pf.test")
    return PrivatePostfix(
        base,
        hostname="pf.test",
        mailboxes=["bob@pf.test", "carl@pf.test"],
        main={"smtpd_tls_security_level": "encrypt", "smtpd_tls_chain_files": f"{key}, {cert}"},
    )


def test_client_tls_required_against_postfix_that_requires_starttls(tmp_path, twistd_config):
    require_postfix()
    with postfix_requiring_tls(tmp_path / "pf") as pf:
        endpoint = f"tcp:host=127.0.0.1:port={pf.port}"
        secure = start_sender(
            twistd_config,
            f'[routes]\n"pf.test" = "peer:pf"\n\n[peers.pf]\nendpoint = "{endpoint}"\ntls = "required"\n',
        )
        inject(secure, "bob@pf.test", "over tls")
        [raw] = pf.wait_for(lambda: pf.maildir_messages("bob@pf.test"), what="the message over TLS")
        assert b"Subject: over tls" in raw
        assert b"by pf.test (Postfix) with ESMTPS" in raw  # Postfix saw STARTTLS
        wait_until(lambda: not spooled(secure), what="the sender's spool to empty")


def test_client_without_tls_against_postfix_that_requires_starttls(tmp_path, twistd_config):
    """``tls = "none"`` towards a server that insists on STARTTLS: Postfix answers MAIL with
    ``530 5.7.0 Must issue a STARTTLS command first``.  A mismatch of configurations is no
    reason to bounce: the mail stays queued (4.7.0), and nothing reaches Postfix in clear."""
    require_postfix()
    with postfix_requiring_tls(tmp_path / "pf") as pf:
        endpoint = f"tcp:host=127.0.0.1:port={pf.port}"
        plain = start_sender(
            twistd_config,
            f'[routes]\n"pf.test" = "peer:pf"\n\n[peers.pf]\nendpoint = "{endpoint}"\ntls = "none"\n',
        )
        inject(plain, "carl@pf.test", "in clear")
        record = wait_until(lambda: deferred(plain, "carl@pf.test"), what="the deferral")
        assert record["last_reply"].startswith("451 4.7.0 The server wants TLS or AUTH first: 530 5.7.0")
        assert not (plain.maildir("sender.test", "me") / "new").exists()  # no bounce
        assert pf.maildir_messages("carl@pf.test") == []
        assert pf.queue_ids() == []


# -- smtppeer logs in to aiosmtpd ---------------------------------------------------------


def aiosmtpd_controller():
    """aiosmtpd's ``Controller`` class (skip, or fail under CI, without aiosmtpd)."""
    try:
        from aiosmtpd.controller import Controller  # noqa: PLC0415
    except ImportError:
        message = "aiosmtpd is not installed (pip install -e .[test])"
        if IN_CI:
            pytest.fail(message + " -- CI must not skip interop tests")
        pytest.skip(message)
    return Controller


class Recorder:
    """aiosmtpd's handler and authenticator: keeps what it saw (from the server's thread)."""

    def __init__(self, logins: dict[str, str]) -> None:
        self.accounts = logins
        self.logins: list[tuple[str, str, str, bool]] = []  # (mechanism, login, password, accepted)
        self.messages: list[tuple[str, list[str], list[str], bytes, str | None]] = []
        self.lock = threading.Lock()

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: PLC0415

        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = self.accounts.get(login) == password
        with self.lock:
            self.logins.append((mechanism, login, password, ok))
        return AuthResult(success=ok, handled=False, auth_data=login)  # becomes session.auth_data

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 -- aiosmtpd's name
        login = session.auth_data if session.authenticated else None
        with self.lock:
            self.messages.append(
                (
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    list(envelope.mail_options),
                    envelope.content,
                    login,
                )
            )
        return "250 2.0.0 Ok: kept"


def start_aiosmtpd(controller_class, recorder: Recorder, context, tls: str):
    controller = controller_class(
        recorder,
        hostname="127.0.0.1",
        port=free_port(),
        server_hostname="aio.test",
        authenticator=recorder.authenticator,
        auth_require_tls=tls != "none",  # then AUTH is offered only after STARTTLS
        require_starttls=tls != "none",
        tls_context=context,
    )
    controller.start()
    return controller


def aio_peer(name: str, port: int, tls: str, username: str, password: str) -> str:
    return (
        f'[peers.{name}]\nendpoint = "tcp:host=127.0.0.1:port={port}"\n'
        f'tls = "{tls}"\nusername = "{username}"\npassword = "{password}"\n'
    )


@pytest.mark.parametrize("tls", ["required", "none"])
def test_client_auth_against_aiosmtpd(tmp_path, twistd_config, tls):
    """aiosmtpd with an authenticator, over STARTTLS (``auth_require_tls``) or in clear where
    the peer entry says ``tls = "none"``.  A login it refuses keeps the mail queued."""
    controller_class = aiosmtpd_controller()
    context = None
    if tls != "none":
        import ssl

        cert, key = make_cert(tmp_path, "aio.test")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
    recorder = Recorder({"carol": "carols-secret"})
    controllers = []
    try:
        for _ in range(2):  # one for carol's login, one for a login it refuses
            controllers.append(start_aiosmtpd(controller_class, recorder, context, tls))
        good, bad = controllers
        sender = start_sender(
            twistd_config,
            '[routes]\n"aio.test" = "peer:aio"\n"bad.test" = "peer:aiobad"\n\n'
            + aio_peer("aio", good.port, tls, "carol", "carols-secret")
            + aio_peer("aiobad", bad.port, tls, "mallory", "not-carols"),
        )
        inject(sender, "dave@aio.test", "to aiosmtpd")
        inject(sender, "erin@bad.test", "refused login")
        [got] = wait_until(lambda: list(recorder.messages), what="aiosmtpd to get the message")
        mail_from, rcpts, options, data, login = got
        assert (mail_from, rcpts, login) == ("me@sender.test", ["dave@aio.test"], "carol")
        assert not any(o.startswith("AUTH=") for o in options), options  # stock aiosmtpd refuses it
        assert b"Subject: to aiosmtpd" in data and b"by sender.test (smtppeer)" in data
        record = wait_until(lambda: deferred(sender, "erin@bad.test"), what="the refused login's deferral")
        assert record["last_reply"].startswith("451 4.7.0 AUTH"), record
        assert "535" in record["last_reply"], record
        wait_until(
            lambda: "dave@aio.test" not in spooled(sender), what="the delivered one to leave the spool"
        )
    finally:
        for controller in controllers:
            controller.stop()
    with recorder.lock:
        logins = sorted(recorder.logins, key=lambda entry: entry[1])
        assert len(recorder.messages) == 1
    assert [(login, password, ok) for _, login, password, ok in logins] == [
        ("carol", "carols-secret", True),
        ("mallory", "not-carols", False),
    ]
    assert {mechanism for mechanism, *_ in logins} <= {"PLAIN", "LOGIN"}
