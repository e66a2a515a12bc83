"""A provider and its customers as real ``twistd smtppeer --config`` processes,
with a certificate and logins: the set-up of the trust tests.

The provider (``provider.test``) holds mail for ``cust.test`` (peer ``cust``,
password ``s3cret``) and for ``other.test`` (peer ``other``, password
``0ther``); ``alice`` (password ``wonder``) is a user who may relay.  It
listens for SMTP (STARTTLS, AUTH, ETRN) and for ODMR (AUTH, ATRN).
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from smtppeer.peer.tls import make_self_signed

from .conftest import free_port

CUSTOMER_PASSWORD = "s3cret"
OTHER_PASSWORD = "0ther"
ALICE_PASSWORD = "wonder"
CAROL = "carol+mail@provider.test"  # a login that is an address
CAROL_PASSWORD = "looking-glass"

PROVIDER = """
hostname = "provider.test"
data_dir = "{{data_dir}}"

[tls]
certificate = "{cert}"
key = "{key}"

[[listen]]
endpoint = "tcp:{smtp_port}:interface=127.0.0.1"
{smtp_listener}

[[listen]]
endpoint = "tcp:{odmr_port}:interface=127.0.0.1"
mode = "odmr"

[domains."provider.test"]

[holds]
"cust.test" = "cust"
"other.test" = "other"

[peers.cust]
domains = ["cust.test"]
username = "cust"
password = "{cust_password}"
endpoint = "tcp:host=127.0.0.1:port={customer_port}"
addresses = {cust_addresses}

[peers.other]
domains = ["other.test"]
username = "other"
password = "{other_password}"

[users.alice]
password = "{alice_password}"

[users."{carol}"]
password = "{carol_password}"
{extra}
"""


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    if not cert.exists():
        make_self_signed(name, str(cert), str(key))
    return cert, key


@dataclass
class Provider:
    proc: object
    smtp_port: int
    odmr_port: int
    customer_port: int
    cert: Path

    @property
    def data_dir(self) -> Path:
        return self.proc.data_dir

    def log(self) -> str:
        return self.proc.log()

    def held(self) -> dict[str, list[str]]:
        """peer -> the recipients in its hold queue, read from the spool on disk."""
        out: dict[str, list[str]] = {}
        for path in sorted((self.data_dir / "spool" / "queue").glob("*.json")):
            try:
                envelope = json.loads(path.read_text())
            except FileNotFoundError:  # delivered and removed while we looked
                continue
            for rcpt in envelope["recipients"]:
                if rcpt["state"] == "held":
                    out.setdefault(rcpt["route"]["hold"], []).append(rcpt["address"])
        return out


def start_provider(
    twistd_config,
    tmp_path: Path,
    smtp_listener: str = "",
    customer_port: int = 0,
    cust_addresses: tuple[str, ...] = (),
    extra: str = "",
) -> Provider:
    """``smtp_listener``: more keys for the SMTP listener; ``cust_addresses``: where
    ``cust`` may ETRN/TURN from without AUTH; ``extra``: more TOML tables."""
    cert, key = make_cert(tmp_path, "provider.test")
    smtp_port, odmr_port = free_port(), free_port()
    customer_port = customer_port or free_port()
    text = PROVIDER.format(
        cert=cert,
        key=key,
        smtp_port=smtp_port,
        odmr_port=odmr_port,
        customer_port=customer_port,
        smtp_listener=smtp_listener,
        cust_addresses=json.dumps(list(cust_addresses)),
        extra=extra,
        cust_password=CUSTOMER_PASSWORD,
        other_password=OTHER_PASSWORD,
        alice_password=ALICE_PASSWORD,
        carol=CAROL,
        carol_password=CAROL_PASSWORD,
    )
    proc = twistd_config(text, smtp_port, name="provider")
    return Provider(proc, smtp_port, odmr_port, customer_port, cert)


def hold_mail(provider: Provider, *recipients: str) -> None:
    """Mail for the customers, as any sender on the Internet would send it."""
    with smtplib.SMTP("127.0.0.1", provider.smtp_port, timeout=30) as s:
        for n, rcpt in enumerate(recipients):
            s.sendmail("someone@far.test", [rcpt], f"Subject: held {n}\r\n\r\nfor {rcpt}\r\n".encode())


def insecure_context() -> ssl.SSLContext:
    """A lab client: encrypts, trusts the self-signed certificate without checking it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RawSession:
    """A line-level SMTP client on a plain socket, for what smtplib will not send:
    pipelined injections, TURN, ATRN, and acting as receiver after a turn."""

    def __init__(self, port: int, timeout: float = 20.0, source: str | None = None) -> None:
        """``source``: the loopback address to connect from (another client)."""
        where = (source, 0) if source else None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=where)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and its lines' text."""
        lines = []
        for _ in range(100):
            line = self.file.readline()
            if not line:
                raise ConnectionError(f"connection closed after {lines}")
            lines.append(line[4:].decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), lines
        raise AssertionError("reply too long")

    def command(self, line: str) -> tuple[int, list[str]]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def line(self) -> bytes:
        return self.file.readline()

    def starttls(self) -> None:
        code, _ = self.command("STARTTLS")
        assert code == 220
        self.file.close()
        self.sock = insecure_context().wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")

    def auth_plain(self, user: str, password: str) -> int:
        import base64

        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.command(f"AUTH PLAIN {token}")[0]

    def closed(self) -> bool:
        """True once the server has closed the connection (reads return EOF)."""
        try:
            return self.file.read() is not None
        except (ConnectionError, OSError):
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()
