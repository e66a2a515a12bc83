"""Baseline: a minimal aiosmtpd receiver with durable Maildir delivery.

Why: this is the "idiomatic asyncio" point of comparison for smtppeer's
receiving side.  It does the least work a correct receiver can do -- accept
any sender/recipient, and answer ``250`` to DATA only after the message is on
stable storage -- so the benchmark measures protocol handling plus one
fsync'd Maildir write per message, nothing else.

What: ``handle_DATA`` hands the blocking write + ``fsync`` + ``rename`` +
directory ``fsync`` (see ``maildir.py``) to the default executor with
``await loop.run_in_executor(None, ...)``, which is how one keeps an asyncio
server from stalling on disk I/O.  The stored file is ``Return-Path`` and
``Received`` headers followed by the message with CRLF converted to LF (the
same bytes ``baseline_twisted_mail.py`` writes).

``data_size_limit`` is disabled so ``bench_big_message.py`` can send 100 MiB.

Optional, for ``bench_tls.py`` (off by default): ``--tls-cert``/``--tls-key``
offer STARTTLS (aiosmtpd's ``tls_context``), and ``--auth-user USER:PASSWORD``
adds an authenticator for that one login (aiosmtpd's AUTH PLAIN/LOGIN, only
after STARTTLS: ``auth_require_tls`` stays at its default).  AUTH is optional
for the client, as on smtppeer's listener.

Usage::

    python bench/baseline_aiosmtpd.py --port 2525 --maildir /tmp/md
    python bench/baseline_aiosmtpd.py --port 2525 --maildir /tmp/md --auth-user bench:secret \\
        --tls-cert cert.pem --tls-key key.pem

Runs until SIGTERM or SIGINT, then closes the listener and exits with 0.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import hmac
import signal
import ssl
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from maildir import MaildirWriter

HOSTNAME = "bench.test"


class DurableMaildirHandler:
    """aiosmtpd handler: every recipient accepted, DATA stored durably."""

    def __init__(self, writer: MaildirWriter) -> None:
        self.writer = writer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        header = (
            f"Return-Path: <{envelope.mail_from}>\n"
            f"Received: from {session.host_name} ([{peer}])\n"
            f"\tby {HOSTNAME} (aiosmtpd baseline); {email.utils.formatdate()}\n"
        ).encode("utf-8", "surrogateescape")
        content = envelope.original_content or b""
        data = header + content.replace(b"\r\n", b"\n")
        name = self.writer.unique_name()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.writer.deliver, name, data)
        return "250 OK: queued as " + name


class OneLoginAuthenticator:
    """aiosmtpd authenticator: one login and its clear password (PLAIN, LOGIN)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username.encode("utf-8")
        self.password = password.encode("utf-8")

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user_ok = hmac.compare_digest(auth_data.login, self.username)
            password_ok = hmac.compare_digest(auth_data.password, self.password)
            if user_ok and password_ok:
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


def smtp_options(tls_cert: str | None, tls_key: str | None, auth_user: str | None) -> dict[str, Any]:
    """Extra ``SMTP(...)`` keyword arguments for STARTTLS and AUTH (empty: the plain baseline)."""
    options: dict[str, Any] = {}
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
        options["tls_context"] = context
    if auth_user:
        username, _, password = auth_user.partition(":")
        options["authenticator"] = OneLoginAuthenticator(username, password)
    return options


async def serve(host: str, port: int, maildir: str, options: dict[str, Any] | None = None) -> None:
    writer = MaildirWriter(maildir)
    handler = DurableMaildirHandler(writer)
    loop = asyncio.get_running_loop()
    extra = options or {}
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, data_size_limit=None, **extra),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"aiosmtpd baseline listening on {host}:{port}, maildir {writer.root}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    print("aiosmtpd baseline stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True, help="Maildir root (tmp/new/cur created)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--tls-cert", help="offer STARTTLS with this certificate (PEM; needs --tls-key)")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    parser.add_argument("--auth-user", metavar="USER:PASSWORD", help="offer AUTH for this one login")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.auth_user is not None and ":" not in args.auth_user:
        parser.error("--auth-user wants USER:PASSWORD")
    options = smtp_options(args.tls_cert, args.tls_key, args.auth_user)
    asyncio.run(serve(args.host, args.port, args.maildir, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
