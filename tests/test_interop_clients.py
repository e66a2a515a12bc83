"""Real SMTP clients against a real ``twistd -n smtppeer`` process.

``smtplib`` and raw sockets (for what smtplib will not send), ``swaks`` with
and without PIPELINING, and Postfix's ``smtp-source`` load generator.  Every
delivery is checked in the Maildir the way a mail reader would see it
(``mailbox.Maildir``), byte for byte.
"""

from __future__ import annotations

import email.utils
import mailbox
import re
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import TwistdProcess, require_tool

HOSTNAME = "peer.test"
QUEUED = re.compile(r"^2\.0\.0 Ok: queued as (\S+)$")


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One twistd for the module; each test uses its own local parts."""
    base = tmp_path_factory.mktemp("smtppeer")
    data = base / "data"
    data.mkdir()
    proc = TwistdProcess(data, hostname=HOSTNAME).start()
    try:
        yield proc
    finally:
        code = proc.stop()
    assert_clean_shutdown(code, proc.log())


def assert_clean_shutdown(code: int | None, log: str) -> None:
    """twistd handled SIGTERM: stopped its services and logged no error.

    Stock twistd, after a clean shutdown, re-raises the signal it was stopped
    with (``app._exitWithSignal``), so the exit status is -SIGTERM, not 0;
    ``test_sigterm_exit_status_is_zero`` holds the stricter requirement.
    """
    assert code in (0, -signal.SIGTERM), f"twistd exited with {code}:\n{log}"
    assert "Traceback" not in log and "Unhandled" not in log, log
    assert "Main loop terminated." in log and "Server Shut Down." in log, log


def files_in(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []


def stored_messages(server: TwistdProcess, domain: str, user: str) -> list[bytes]:
    """Every message in a Maildir, as ``mailbox.Maildir`` reads it (raw bytes)."""
    path = server.maildir(domain, user)
    assert path.is_dir(), f"no Maildir {path}"
    assert files_in(path / "tmp") == [], "a message was left in tmp/"
    box = mailbox.Maildir(str(path), factory=None, create=False)
    try:
        return [box.get_bytes(key) for key in sorted(box.keys())]
    finally:
        box.close()


def all_stored_files(server: TwistdProcess) -> set[Path]:
    return {p for p in (server.data_dir / "mail").rglob("*") if p.is_file()}


def split_received(raw: bytes) -> tuple[str, bytes]:
    """The prepended (folded) Received: header, unfolded, and the original message.

    Final delivery puts Return-Path: (the reverse-path) first (RFC 5321 §4.4).
    """
    assert raw.startswith(b"Return-Path: <"), raw[:200]
    raw = raw.split(b"\r\n", 1)[1]
    assert raw.startswith(b"Received: "), raw[:200]
    lines = raw.split(b"\r\n")
    n = 1
    while lines[n][:1] in (b" ", b"\t"):
        n += 1
    header = b" ".join(line.strip() for line in lines[:n]).decode()
    return header, b"\r\n".join(lines[n:])


def queue_id(text: bytes | str) -> str:
    text = text.decode() if isinstance(text, bytes) else text
    m = QUEUED.match(text.strip())
    assert m, f"not a 'queued as' reply: {text!r}"
    return m.group(1)


def connect(server: TwistdProcess) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=20)
    code, _ = client.ehlo()
    assert code == 250
    return client


class RawClient:
    """A blocking socket client that reads whole (multi-line) replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def reply(self) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def cmd(self, data: bytes) -> tuple[int, list[bytes]]:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


# -- smtplib -------------------------------------------------------------------------------

BODY_8BIT = (
    b"From: <a@x.test>\r\n"
    b"To: <u1@localhost>\r\n"
    b"Subject: interop\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, \xe2\x82\xac and raw high bytes \x80\xfe\xff\r\n"
    b"\r\n"
    b"From the start of a line\r\n"
    b"last line\r\n"
)


def test_smtplib_delivers_8bit_message_intact(server):
    with connect(server) as client:
        assert client.has_extn("8bitmime")
        assert client.mail("a@x.test", ["BODY=8BITMIME"])[0] == 250
        assert client.rcpt("u1@localhost")[0] == 250
        code, text = client.data(BODY_8BIT)  # smtplib dot-stuffs
        assert code == 250, text
        qid = queue_id(text)

    [raw] = stored_messages(server, "localhost", "u1")
    received, original = split_received(raw)
    assert original == BODY_8BIT
    assert received.startswith("Received: from client.test ([127.0.0.1])"), received
    assert f"by {HOSTNAME} (smtppeer) with ESMTP id {qid}" in received, received
    assert "for <u1@localhost>;" in received, received
    date = received.rsplit(";", 1)[1].strip()
    assert email.utils.parsedate_to_datetime(date) is not None

    # A mail reader sees a well-formed message with our header on top.
    box = mailbox.Maildir(str(server.maildir("localhost", "u1")), create=False)
    [msg] = list(box)
    assert msg["Subject"] == "interop"
    assert msg["Received"].split()[1] == "client.test"
    assert msg.get_subdir() == "new"


def test_smtplib_several_recipients_each_get_a_copy(server):
    rcpts = ["m1@localhost", "M2@LOCALHOST", f"m3@{HOSTNAME}"]
    body = b"Subject: to three\r\n\r\nhello all\r\n"
    with connect(server) as client:
        assert client.mail("a@x.test")[0] == 250
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(body)
        assert code == 250, text
        qid = queue_id(text)

    for domain, user in [("localhost", "m1"), ("localhost", "m2"), (HOSTNAME, "m3")]:
        [raw] = stored_messages(server, domain, user)
        received, original = split_received(raw)
        assert original == body
        assert f"id {qid};" in received, received
        assert " for " not in received, "with several recipients the header must not name one"


def test_smtplib_sendmail_many_messages_one_session(server):
    with connect(server) as client:
        for n in range(20):
            refused = client.sendmail("a@x.test", ["many@localhost"], f"Subject: {n}\r\n\r\nbody {n}\r\n")
            assert refused == {}
    messages = stored_messages(server, "localhost", "many")
    bodies = sorted(split_received(raw)[1] for raw in messages)
    assert bodies == sorted(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode() for n in range(20))


@pytest.mark.parametrize("rcpt", ["postmaster", "Postmaster"])
def test_postmaster_without_domain_is_accepted(server, rcpt):
    before = len(files_in(server.maildir(HOSTNAME, "postmaster") / "new"))
    with connect(server) as client:
        assert client.mail("")[0] == 250  # even from the null reverse-path
        code, text = client.rcpt(rcpt)
        assert code == 250, text
        code, text = client.data(b"Subject: for the postmaster\r\n\r\nhi\r\n")
        assert code == 250, text
    after = stored_messages(server, HOSTNAME, "postmaster")
    assert len(after) == before + 1


def test_relay_to_other_domain_refused_and_nothing_stored(server):
    before = all_stored_files(server)
    with connect(server) as client:
        assert client.mail("a@x.test")[0] == 250
        code, text = client.rcpt("victim@other.test")
        assert code == 550 and text.startswith(b"5.7.1"), (code, text)
        code, text = client.docmd("DATA")
        assert code in (503, 554), (code, text)  # no valid recipients: never 354
        assert client.rset()[0] == 250
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail("a@x.test", ["victim@other.test"], b"Subject: relay\r\n\r\nx\r\n")
        assert info.value.recipients["victim@other.test"][0] == 550
        # A mixed transaction delivers to the local recipient only.
        refused = client.sendmail(
            "a@x.test", ["victim@other.test", "mixed@localhost"], b"Subject: mixed\r\n\r\nx\r\n"
        )
        assert refused["victim@other.test"][0] == 550
    new = all_stored_files(server) - before
    assert {p.parent.parent for p in new} == {server.maildir("localhost", "mixed")}
    assert not (server.data_dir / "mail" / "other.test").exists()


def test_size_advertised_and_enforced_at_mail(server):
    with connect(server) as client:
        assert client.has_extn("size")
        limit = int(client.esmtp_features["size"])
        assert limit > 1024 * 1024
        code, text = client.mail("a@x.test", [f"SIZE={limit + 1}"])
        assert code == 552 and text.startswith(b"5.3.4"), (code, text)
        assert client.mail("a@x.test", [f"SIZE={limit}"])[0] == 250


def test_vrfy_and_expn_answer_252(server):
    with connect(server) as client:
        code, text = client.verify("u1@localhost")
        assert code == 252, text
        code, text = client.docmd("EXPN", "staff")
        assert code == 252, text
        assert client.noop()[0] == 250


def test_turn_from_unauthenticated_client_is_refused(server):
    with connect(server) as client:
        code, text = client.docmd("TURN")
        assert code == 502, text
        assert client.noop()[0] == 250  # the session carries on in the receiver role
        assert client.sendmail("a@x.test", ["afterturn@localhost"], b"Subject: t\r\n\r\nx\r\n") == {}
    assert len(stored_messages(server, "localhost", "afterturn")) == 1


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"]


@pytest.mark.parametrize(
    "fake_end", SMUGGLING, ids=lambda b: b.decode().replace("\r", "CR").replace("\n", "LF")
)
def test_smuggled_end_of_data_is_refused(server, fake_end):
    before = all_stored_files(server)
    client = RawClient(server.port)
    try:
        assert client.reply()[0] == 220
        assert client.cmd(b"EHLO client.test\r\n")[0] == 250
        assert client.cmd(b"MAIL FROM:<a@x.test>\r\n")[0] == 250
        assert client.cmd(b"RCPT TO:<victim@localhost>\r\n")[0] == 250
        assert client.cmd(b"DATA\r\n")[0] == 354
        client.sock.sendall(
            b"Subject: innocent\r\n\r\nhello"
            + fake_end
            + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<smuggled@localhost>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil\r\n"
        )
        # Nothing may come back before the real end of data.
        client.sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            client.reply()
        client.sock.settimeout(20)
        code, lines = client.cmd(b".\r\n")
        assert 500 <= code < 600, lines
        # One reply for the whole thing: the smuggled commands were body text.
        assert client.cmd(b"NOOP\r\n")[0] == 250
        assert client.cmd(b"QUIT\r\n")[0] == 221
    finally:
        client.close()
    assert all_stored_files(server) == before
    assert not server.maildir("localhost", "smuggled").exists()


# -- swaks ------------------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("pipeline", [False, True], ids=["lockstep", "pipelined"])
def test_swaks(server, tmp_path, pipeline):
    swaks = require_tool("swaks")
    user = "swakspipe" if pipeline else "swaks"
    body_text = "first line\n.leading dot\n..two dots\nlast line\n"
    body_file = tmp_path / "body.txt"
    body_file.write_text(body_text)
    args = [
        swaks,
        "--server", "127.0.0.1",
        "--port", str(server.port),
        "--ehlo", "swaks.test",
        "--from", "a@x.test",
        "--to", f"{user}@localhost",
        "--header", f"Subject: swaks {user}",
        "--body", str(body_file),
        "--timeout", "20",
    ]  # fmt: skip
    if pipeline:
        args.append("--pipeline")
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    transcript = done.stdout
    assert "PIPELINING" in transcript
    # swaks shows client lines as " -> " and server lines as "<-  ".
    lines = transcript.splitlines()
    mail_at = next(i for i, line in enumerate(lines) if line.startswith(" -> MAIL"))
    lines = lines[mail_at : mail_at + 3]
    if pipeline:  # MAIL, RCPT and DATA went out before any reply
        assert [line.split()[1] for line in lines] == ["MAIL", "RCPT", "DATA"], lines
    else:  # each command waits for its reply
        assert lines[1].startswith("<-  250"), lines
    qid = re.search(r"<-  250 2\.0\.0 Ok: queued as (\S+)", transcript).group(1)

    [raw] = stored_messages(server, "localhost", user)
    received, original = split_received(raw)
    assert f"id {qid}" in received
    assert f"for <{user}@localhost>" in received
    headers, _, body = original.partition(b"\r\n\r\n")
    assert f"Subject: swaks {user}".encode() in headers.split(b"\r\n")
    # swaks (20201014) appends two empty lines of its own after the body.
    expected = body_text.replace("\n", "\r\n").encode()
    assert body.startswith(expected) and body[len(expected) :].replace(b"\r\n", b"") == b"", body


# -- smtp-source --------------------------------------------------------------------------------


@pytest.mark.interop
def test_smtp_source_2000_messages_20_sessions(twistd_peer, capsys):
    smtp_source = require_tool("smtp-source")
    peer = twistd_peer()
    count = 2000
    start = time.monotonic()
    done = subprocess.run(
        [smtp_source, "-s", "20", "-d", "-l", "1024", "-m", str(count),
         "-f", "a@x.test", "-t", "b@localhost", f"127.0.0.1:{peer.port}"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr + peer.log()[-3000:]
    with capsys.disabled():
        print(f"\nsmtp-source: {count} messages in {elapsed:.2f}s = {count / elapsed:.0f} msg/s (fsync each)")

    maildir = peer.maildir("localhost", "b")
    assert len(files_in(maildir / "new")) == count
    assert files_in(maildir / "tmp") == []
    assert files_in(maildir / "cur") == []

    # What smtp-source sends: From/To/Date/Message-Id headers (the last two vary),
    # a blank line, then the -l body: numbered 78-character lines of X.
    header_re = re.compile(
        rb"From: <a@x\.test>\r\nTo: <b@localhost>\r\nDate: [^\r\n]+\r\n"
        rb"Message-Id: <([0-9a-f]+\.[0-9a-f]+\.[0-9a-f]+)@[^>\r\n]+>\r\n\r\n"
    )
    ids, message_ids, expected_body = set(), set(), None
    for raw in stored_messages(peer, "localhost", "b"):
        received, original = split_received(raw)
        assert received.startswith("Received: from ") and f"by {HOSTNAME} (smtppeer) with SMTP id" in received
        ids.add(received.split(" id ")[1].split()[0])
        m = header_re.match(original)
        assert m, original[:300]
        message_ids.add(m.group(1))
        body = original[m.end() :]
        if expected_body is None:
            expected_body = body
            lines = body.split(b"\r\n")
            assert lines[-1] == b"", "body must end with CRLF"
            assert all(len(line) == 78 for line in lines[:-2]), lines
            assert all(line == str((i + 1) % 10).encode() + b"X" * 77 for i, line in enumerate(lines[:-2]))
            assert set(lines[-2]) == {ord("X")}
            assert 1000 <= len(body) <= 1100
        assert body == expected_body
    assert len(ids) == count, "queue ids must be unique"
    assert len(message_ids) == count, "every message smtp-source sent arrived exactly once"


# -- process life ---------------------------------------------------------------------------------


def test_sigterm_shuts_down_cleanly(twistd_peer):
    peer = twistd_peer()
    idle = connect(peer)  # a client still connected when the signal arrives
    try:
        assert idle.sendmail("a@x.test", ["t@localhost"], b"Subject: t\r\n\r\nx\r\n") == {}
        code = peer.stop(signal.SIGTERM)
        # The server said goodbye with 421 before closing: the client reads it next.
        assert idle.noop()[0] == 421
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
            idle.noop()
    finally:
        idle.close()
    assert_clean_shutdown(code, peer.log())
    assert len(stored_messages(peer, "localhost", "t")) == 1
