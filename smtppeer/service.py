"""Turns the configuration into running ``twisted.application`` services."""

from __future__ import annotations

import functools
import os

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger

from .committer import Committer
from .config import ODMR, Config
from .control import ControlFactory
from .control import endpoint_description as control_endpoint
from .delivery import ReceivingPolicy
from .logs import JSONLogFile, json_log_path
from .maildir import MaildirStore
from .mx import MXResolver, resolver_from_address
from .options import Options
from .peer import SMTPPeerFactory
from .poller import Poller, Schedule
from .routing import Router
from .runner import QueueRunner, RunnerSettings
from .spool import Spool
from .staging import Staging

log = Logger()

__all__ = ["Options", "makeService", "build_service"]


def makeService(options: Options) -> service.MultiService:  # noqa: N802 (the name ServiceMaker looks for)
    return build_service(options.config)


def build_service(config: Config) -> service.MultiService:
    """Children start in order and stop in reverse: listeners and polls stop
    first, the committer last, so everything accepted is on disk at the end."""
    if any(listener.mode == ODMR for listener in config.listeners):
        raise ValueError("odmr listeners are not available yet (they come with AUTH and ATRN)")
    hostname = config.hostname
    data_dir = os.path.abspath(config.data_dir)
    os.makedirs(os.path.join(data_dir, "mail"), mode=0o700, exist_ok=True)
    top = service.MultiService()
    if config.json_log:
        JSONLogFile(json_log_path(data_dir)).setServiceParent(top)
    committer = Committer()
    committer.setServiceParent(top)
    staging = Staging(os.path.join(data_dir, "mail", ".staging"))  # same file system as the Maildirs
    staging.setServiceParent(top)
    store = MaildirStore(os.path.join(data_dir, "mail"), committer, staging)
    swept = store.sweep_tmp()
    if swept:
        log.info("removed {n} stale files from Maildir tmp/ directories", n=swept)
    spool = Spool(os.path.join(data_dir, "spool"), committer)
    endpoints = {name: peer.endpoint for name, peer in config.peers.items()}
    routes = {
        domain: endpoints[target[5:]] if target.startswith("peer:") else target
        for domain, target in config.routes.items()
    }
    router = Router(
        hostname,
        config.domains,
        routes=routes,
        holds=config.holds,
        relay_from=config.relay_from,
        honour_source_routes=config.honour_source_routes,
    )
    resolver = resolver_from_address(*config.dns) if config.dns else None
    runner = QueueRunner(
        hostname,
        spool,
        router,
        deliver_locally=functools.partial(_deliver_bounce, store, router),
        resolver=MXResolver(resolver, local_names=[hostname]),
        settings=RunnerSettings(lifetime=config.queue_lifetime, backoff_base=config.retry_interval),
        limits=config.limits,
    )
    runner.setServiceParent(top)
    hooks = ReceivingPolicy(
        hostname,
        router,
        store,
        spool,
        max_received=config.max_received,
        runner=runner,
        turn_peers={name: peer.addresses for name, peer in config.peers.items()},
        mailboxes=config.domains,
    )
    for listener in config.listeners:
        factory = SMTPPeerFactory(
            hostname,
            hooks,
            limits=config.limits,
            max_connections=config.max_connections,
            accepts_turn=listener.turn,
        )
        _Listener(listener.endpoint, factory).setServiceParent(top)
    poll_now = None
    if config.polls:
        schedules = [Schedule(p.peer, p.interval, p.jitter, p.max_backoff) for p in config.polls]
        poller = Poller(schedules, lambda name: runner.poll(name, endpoints[name], hooks))
        poller.setServiceParent(top)
        poll_now = poller.poll_now
    control = ControlFactory(runner, hooks, poll_now)
    strports.service(control_endpoint(data_dir), control).setServiceParent(top)
    log.info(
        "smtppeer {hostname}: domains {domains}, data in {data_dir}, listening on {listen}",
        hostname=hostname,
        domains=", ".join(config.domains),
        data_dir=data_dir,
        listen=", ".join(listener.endpoint for listener in config.listeners),
    )
    return top


class _Listener(service.MultiService):
    """A listening endpoint whose stop also closes its sessions (421 4.3.2), so a
    SIGTERM never leaves a client waiting on a half-finished exchange."""

    def __init__(self, endpoint: str, factory: SMTPPeerFactory) -> None:
        super().__init__()
        self.factory = factory
        strports.service(endpoint, factory).setServiceParent(self)

    def stopService(self):
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.factory.shutdown())
        return d


def _deliver_bounce(store: MaildirStore, router: Router, rcpts: list[str], message: bytes, queue_id: str):
    """A bounce for a local sender goes straight into the sender's Maildir."""
    maildirs = []
    for rcpt in rcpts:
        local, _, domain = rcpt.rpartition("@")
        maildirs.append(store.path_for(domain or router.hostname, local or rcpt))
    sink = store.new_message(maildirs, b"Return-Path: <>\r\n", queue_id)
    sink.write(message)
    return sink.finish()
