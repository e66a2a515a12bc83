"""Turns options into running ``twisted.application`` services."""

from __future__ import annotations

import os

from twisted.application import service, strports
from twisted.logger import Logger

from .delivery import LocalDelivery
from .maildir import MaildirStore
from .options import Options
from .peer import SMTPPeerFactory

log = Logger()

__all__ = ["Options", "makeService"]

# Disk waits (fsync) run in the reactor's thread pool; enough threads that
# concurrent sessions' fsyncs overlap.
THREADS = 32


class ThreadPoolSizer(service.Service):
    def startService(self) -> None:
        from twisted.internet import reactor  # noqa: PLC0415

        reactor.suggestThreadPoolSize(THREADS)
        super().startService()


def makeService(options) -> service.MultiService:  # noqa: N802 (the name ServiceMaker looks for)
    data_dir = os.path.abspath(options["data-dir"])
    os.makedirs(os.path.join(data_dir, "mail"), mode=0o700, exist_ok=True)
    store = MaildirStore(os.path.join(data_dir, "mail"))
    hooks = LocalDelivery(options["hostname"], options["domain"], store)
    factory = SMTPPeerFactory(
        options["hostname"], hooks, limits=options.limits(), max_connections=options["max-connections"]
    )
    top = service.MultiService()
    ThreadPoolSizer().setServiceParent(top)
    for endpoint in options["listen"]:
        strports.service(endpoint, factory).setServiceParent(top)
    log.info(
        "smtppeer {hostname}: domains {domains}, mail in {data_dir}, listening on {listen}",
        hostname=options["hostname"],
        domains=", ".join(options["domain"]),
        data_dir=data_dir,
        listen=", ".join(options["listen"]),
    )
    return top
