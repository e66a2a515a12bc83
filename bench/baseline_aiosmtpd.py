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

Usage::

    python bench/baseline_aiosmtpd.py --port 2525 --maildir /tmp/md

Runs until SIGTERM or SIGINT, then closes the listener and exits with 0.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import signal
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session
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


async def serve(host: str, port: int, maildir: str) -> None:
    writer = MaildirWriter(maildir)
    handler = DurableMaildirHandler(writer)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, data_size_limit=None),
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
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.maildir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
