"""Turns options into running ``twisted.application`` services."""

from __future__ import annotations

import os

from twisted.application import service, strports
from twisted.logger import Logger

from .committer import Committer
from .delivery import ReceivingPolicy
from .maildir import MaildirStore
from .options import Options
from .peer import SMTPPeerFactory
from .routing import Router

log = Logger()

__all__ = ["Options", "makeService"]


def makeService(options) -> service.MultiService:  # noqa: N802 (the name ServiceMaker looks for)
    data_dir = os.path.abspath(options["data-dir"])
    os.makedirs(os.path.join(data_dir, "mail"), mode=0o700, exist_ok=True)
    top = service.MultiService()
    committer = Committer()
    committer.setServiceParent(top)
    store = MaildirStore(os.path.join(data_dir, "mail"), committer)
    router = Router(options["hostname"], options["domain"])
    hooks = ReceivingPolicy(options["hostname"], router, store)
    factory = SMTPPeerFactory(
        options["hostname"], hooks, limits=options.limits(), max_connections=options["max-connections"]
    )
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
