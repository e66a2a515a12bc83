"""msmtp (Debian's ``msmtp``) submits to smtppeer: STARTTLS and AUTH (issue 14, item 2).

msmtp prefers SCRAM-SHA-256 and is strict about the empty challenge that
starts it: RFC 4954 §4 makes it ``"334" SP [base64]``, and a bare ``334``
makes msmtp say "the server sent an invalid reply" and give up (exit 76)
without logging in at all.  Each mechanism is forced with ``--auth=``
(left to itself over TLS msmtp picks PLAIN).  msmtp reads no
configuration file when given ``--host``.
"""

from __future__ import annotations

import subprocess

import pytest

from .conftest import TwistdProcess, require_tool, wait_until
from .daemons import delivered as maildir_messages
from .daemons import peer_with_tls

pytestmark = pytest.mark.interop

HOSTNAME = "peer.test"
USER, PASSWORD = "alice", "wonder-land"


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    require_tool("msmtp")
    login = f'[users.{USER}]\npassword = "{PASSWORD}"\n'
    with peer_with_tls(tmp_path_factory.mktemp("msmtp-peer"), HOSTNAME, extra=login) as proc:
        yield proc


def msmtp(peer: TwistdProcess, tmp_path, rcpt: str, *options: str, password: str = PASSWORD):
    log = tmp_path / "msmtp.log"
    argv = [
        require_tool("msmtp"),
        "--host=127.0.0.1",  # command-line settings only: no configuration file is read
        f"--port={peer.port}",
        "--domain=client.test",
        f"--user={USER}",
        f"--passwordeval=echo {password}",
        "--from=sender@client.test",
        f"--logfile={log}",
        "--timeout=20",
        *options,
        rcpt,
    ]
    message = f"Subject: msmtp {' '.join(options)}\n\nsubmitted by msmtp\n".encode()
    done = subprocess.run(argv, input=message, capture_output=True, timeout=60, check=False)
    return done, log.read_text() if log.exists() else ""


def delivered(peer: TwistdProcess, user: str) -> list[bytes]:
    return maildir_messages(peer, HOSTNAME, user)


TLS = ("--tls=on", "--tls-starttls=on", "--tls-certcheck=off")


@pytest.mark.parametrize(
    ("mechanism", "tls"),
    [("scram-sha-256", True), ("scram-sha-256", False), ("plain", True)],
    ids=["scram-starttls", "scram-clear", "plain-starttls"],
)
def test_msmtp_logs_in_and_delivers(peer, tmp_path, mechanism, tls):
    user = f"msmtp-{mechanism}-{'tls' if tls else 'clear'}"
    options = (*TLS, f"--auth={mechanism}") if tls else ("--tls=off", f"--auth={mechanism}")
    done, log = msmtp(peer, tmp_path, f"{user}@{HOSTNAME}", *options)
    assert done.returncode == 0, (done.stderr, log)
    assert "smtpstatus=250" in log and "exitcode=EX_OK" in log, log
    assert f"tls={'on' if tls else 'off'} auth=on user={USER}" in log, log
    assert f"AUTH {mechanism.upper()} as {USER} from 127.0.0.1" in peer.log()
    [copy] = wait_until(lambda: delivered(peer, user), what="the delivery")
    assert b"submitted by msmtp" in copy


def test_msmtp_with_a_wrong_password_is_refused(peer, tmp_path):
    user = "msmtp-wrong-password"
    done, log = msmtp(peer, tmp_path, f"{user}@{HOSTNAME}", *TLS, "--auth=scram-sha-256", password="nope")
    assert done.returncode == 77, (done.stderr, log)  # EX_NOPERM: "authentication failed"
    assert "authentication failed" in done.stderr.decode()
    assert delivered(peer, user) == []
