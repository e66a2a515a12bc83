"""Baseline: a minimal ``twisted.mail.smtp`` ESMTP receiver with durable Maildir delivery.

Why: smtppeer is built on Twisted, so the stock ``twisted.mail.smtp.ESMTP``
server is the most direct point of comparison -- same reactor, same process
model, same language -- showing what smtppeer's own receiving code costs or
saves relative to the library it could have used as is.

What: an ``SMTPFactory`` whose protocol is ``ESMTP`` and whose
``IMessageDelivery`` accepts every sender and recipient.  ``validateTo``
returns a factory of an ``IMessage`` that collects the lines in a list; on
``eomReceived`` the message (the ``Received`` header Twisted asks for via
``receivedHeader``, preceded by ``Return-Path``, then the body, LF line ends)
is written with the same durable sequence as the aiosmtpd baseline (tmp
write, ``fsync``, ``rename`` into ``new/``, ``fsync`` of ``new/``; see
``maildir.py``) in the reactor thread pool via ``deferToThread``; the ``250``
is only sent when that Deferred fires.

Usage::

    python bench/baseline_twisted_mail.py --port 2525 --maildir /tmp/md

Runs until SIGTERM or SIGINT (the reactor's own signal handlers stop it) and
exits with 0.
"""

from __future__ import annotations

import argparse
import sys

from maildir import MaildirWriter
from twisted.internet import endpoints, reactor, threads
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.mail import smtp
from zope.interface import implementer

HOSTNAME = b"bench.test"


@implementer(smtp.IMessage)
class MaildirMessage:
    """Collect the DATA lines; store them durably on end of message."""

    def __init__(self, writer: MaildirWriter, return_path: bytes) -> None:
        self.writer = writer
        self.lines: list[bytes] | None = [b"Return-Path: <" + return_path + b">"]

    def lineReceived(self, line: bytes) -> None:
        assert self.lines is not None
        self.lines.append(line)

    def eomReceived(self) -> Deferred:
        assert self.lines is not None
        self.lines.append(b"")
        data = b"\n".join(self.lines)
        self.lines = None
        name = self.writer.unique_name()
        return threads.deferToThread(self.writer.deliver, name, data)

    def connectionLost(self) -> None:
        self.lines = None


@implementer(smtp.IMessageDelivery)
class MaildirDelivery:
    """Accept any sender and any recipient; every message goes to one Maildir."""

    def __init__(self, writer: MaildirWriter) -> None:
        self.writer = writer

    def receivedHeader(self, helo, origin, recipients) -> bytes:
        helo_name = helo[0] or b"unknown"
        peer = helo[1].encode("ascii") if isinstance(helo[1], str) else helo[1]
        return (
            b"Received: from "
            + helo_name
            + b" (["
            + peer
            + b"])\n\tby "
            + HOSTNAME
            + b" (twisted.mail baseline); "
            + smtp.rfc822date()
        )

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return_path = str(user.orig).encode("utf-8", "surrogateescape")
        writer = self.writer
        return lambda: MaildirMessage(writer, return_path)


class MaildirESMTPFactory(smtp.SMTPFactory):
    protocol = smtp.ESMTP
    domain = HOSTNAME

    def __init__(self, delivery: MaildirDelivery) -> None:
        super().__init__()
        self.delivery = delivery

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        p.delivery = self.delivery
        return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True, help="Maildir root (tmp/new/cur created)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    args = parser.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    writer = MaildirWriter(args.maildir)
    factory = MaildirESMTPFactory(MaildirDelivery(writer))
    factory.noisy = False
    endpoint = endpoints.TCP4ServerEndpoint(reactor, args.port, interface=args.host)

    def listening(port):
        print(
            f"twisted.mail baseline listening on {args.host}:{args.port}, maildir {writer.root}",
            flush=True,
        )

    def failed(failure):
        print(f"listen failed: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()
        exit_code[0] = 1

    exit_code = [0]
    reactor.callWhenRunning(lambda: endpoint.listen(factory).addCallbacks(listening, failed))
    reactor.run()
    print("twisted.mail baseline stopped", flush=True)
    return exit_code[0]


if __name__ == "__main__":
    sys.exit(main())
