"""Turns options into running ``twisted.application`` services."""

from __future__ import annotations

import os

from twisted.application import service, strports
from twisted.logger import Logger

from .committer import Committer
from .delivery import ReceivingPolicy
from .maildir import MaildirStore
from .mx import MXResolver, resolver_from_address
from .options import Options
from .peer import SMTPPeerFactory
from .routing import Router
from .runner import QueueRunner, RunnerSettings
from .spool import Spool

log = Logger()

__all__ = ["Options", "makeService"]


def makeService(options) -> service.MultiService:  # noqa: N802 (the name ServiceMaker looks for)
    """Children start in order and stop in reverse: listeners stop first, the
    committer last, so everything accepted is on disk before the process ends."""
    hostname = options["hostname"]
    data_dir = os.path.abspath(options["data-dir"])
    os.makedirs(os.path.join(data_dir, "mail"), mode=0o700, exist_ok=True)
    top = service.MultiService()
    committer = Committer()
    committer.setServiceParent(top)
    store = MaildirStore(os.path.join(data_dir, "mail"), committer)
    spool = Spool(os.path.join(data_dir, "spool"), committer)
    router = Router(
        hostname,
        options["domain"],
        routes=options["route"],
        holds=options["hold"],
        relay_from=options["relay-from"],
        honour_source_routes=not options["ignore-source-routes"],
    )
    resolver = None
    if options["dns"]:
        resolver = resolver_from_address(*options["dns"])
    runner = QueueRunner(
        hostname,
        spool,
        router,
        deliver_locally=lambda rcpts, message, queue_id: _deliver_bounce(
            store, router, rcpts, message, queue_id
        ),
        resolver=MXResolver(resolver, local_names=[hostname]),
        settings=RunnerSettings(lifetime=options["queue-lifetime"], backoff_base=options["retry-interval"]),
        limits=options.limits(),
    )
    runner.setServiceParent(top)
    hooks = ReceivingPolicy(
        hostname, router, store, spool, max_received=options["max-received"], runner=runner
    )
    factory = SMTPPeerFactory(
        hostname, hooks, limits=options.limits(), max_connections=options["max-connections"]
    )
    for endpoint in options["listen"]:
        strports.service(endpoint, factory).setServiceParent(top)
    log.info(
        "smtppeer {hostname}: domains {domains}, data in {data_dir}, listening on {listen}",
        hostname=hostname,
        domains=", ".join(options["domain"]),
        data_dir=data_dir,
        listen=", ".join(options["listen"]),
    )
    return top


def _deliver_bounce(store: MaildirStore, router: Router, rcpts: list[str], message: bytes, queue_id: str):
    """A bounce for a local sender goes straight into the sender's Maildir."""
    maildirs = []
    for rcpt in rcpts:
        local, _, domain = rcpt.rpartition("@")
        maildirs.append(store.path_for(domain or router.hostname, local or rcpt))
    sink = store.new_message(maildirs, b"Return-Path: <>\r\n", queue_id)
    sink.write(message)
    return sink.finish()
