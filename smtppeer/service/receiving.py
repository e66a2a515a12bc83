"""The receiving side, as the service and its worker processes both build it.

Storage (committers, Maildirs, spool), routing, logins, the receiving
policy and the factory for a listener.  Both ``assembly`` (the service) and
``workers`` (receive-only processes) build one, so neither imports the
other.
"""

from __future__ import annotations

import os

from twisted.application import service

from smtppeer.activity import Activity
from smtppeer.engine.atrn import ODMR_COMMANDS, Atrn
from smtppeer.engine.auth import Auth
from smtppeer.engine.etrn import Etrn
from smtppeer.engine.extensions import EnhancedStatusCodes, Extension, default_extensions
from smtppeer.engine.starttls import StartTls
from smtppeer.peer.clients import AuthBudget
from smtppeer.peer.protocol import SMTPPeerFactory
from smtppeer.peer.tls import server_options
from smtppeer.policy.accounts import Accounts, Login
from smtppeer.policy.receiving import ReceivingPolicy
from smtppeer.policy.routing import Router
from smtppeer.store.committer import Committer
from smtppeer.store.maildir import MaildirStore
from smtppeer.store.space import FreeSpace
from smtppeer.store.spool import Spool

from .config import ODMR, Config, Listener


class Receiving:
    """The receiving side, as the service and its worker processes both build it:
    storage (committers, Maildirs, spool), routing, logins, and the factory
    for a listener.

    Maildir deliveries are committed in the disk process, the spool's inline
    (``committer.py``): a disk process can outlive its parent by one batch,
    which is harmless in a Maildir (each file appears whole or not at all)
    but could race with the spool's clean-up after a dead process."""

    def __init__(self, config: Config, parent: service.MultiService, clock=None) -> None:
        """``clock``: what the per-client AUTH budget and the free-space check read
        (the reactor unless a test gives a ``task.Clock``)."""
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415
        self.config = config
        self.clock = clock
        data_dir = os.path.abspath(config.data_dir)
        deliveries = Committer(disk_process=True)
        deliveries.setServiceParent(parent)
        spooling = Committer()
        spooling.setServiceParent(parent)
        self.store = MaildirStore(os.path.join(data_dir, "mail"), deliveries)
        self.spool = Spool(os.path.join(data_dir, "spool"), spooling)
        self.endpoints = {name: peer.endpoint for name, peer in config.peers.items()}
        routes = {
            domain: self.endpoints[target[5:]] if target.startswith("peer:") else target
            for domain, target in config.routes.items()
        }
        self.router = Router(
            config.hostname,
            config.domains,
            routes=routes,
            holds=config.holds,
            relay_from=config.relay_from,
            honour_source_routes=config.honour_source_routes,
            accept_any_domain=config.accept_any_domain,
        )
        self.accounts = Accounts(_logins(config))
        self.server_tls = server_options(config.tls.certificate, config.tls.key) if config.tls else None
        # One budget for every listener of the process: a guesser gains nothing by switching ports.
        self.auth_budget = AuthBudget(
            clock,
            failures=config.auth_failures_per_client,
            backoff=config.auth_backoff,
            backoff_max=config.auth_backoff_max,
        )

    def policy(self, runner, activity: Activity | None = None) -> ReceivingPolicy:
        """``runner``: the queue runner, or what tells it about new spool entries;
        ``activity``: told what is received and refused."""
        config = self.config
        return ReceivingPolicy(
            config.hostname,
            self.router,
            self.store,
            self.spool,
            max_received=config.max_received,
            runner=runner,
            turn_peers={name: peer.addresses for name, peer in config.peers.items()},
            mailboxes=config.domains,
            accounts=self.accounts,
            owned=_owned_domains(config),
            peer_endpoints=self.endpoints,
            activity=activity,
            free_space=self._free_space(),
        )

    def _free_space(self) -> FreeSpace | None:
        """``queue_minfree``: checked on the file systems of the Maildirs and the spool."""
        if not self.config.queue_minfree:
            return None
        return FreeSpace([self.store.root, self.spool.root], self.config.queue_minfree, self.clock)

    def factory(self, listener: Listener, hooks: ReceivingPolicy) -> SMTPPeerFactory:
        config = self.config
        tls = self.server_tls if listener.starttls else None
        return SMTPPeerFactory(
            config.hostname,
            hooks,
            limits=config.limits,
            max_connections=config.max_connections,
            max_connections_per_client=config.max_connections_per_client,
            client_ipv6_prefix_length=config.client_ipv6_prefix_length,
            auth_budget=self.auth_budget if config.auth_failures_per_client else None,
            turn_by_address=listener.turn,
            may_turn=listener.processes == 1,
            extensions=_extensions(listener, self.accounts, tls is not None),
            server_tls=tls,
            require_tls=listener.require_tls,
            only_commands=ODMR_COMMANDS if listener.mode == ODMR else None,
        )


def _extensions(listener: Listener, accounts: Accounts, tls: bool) -> list[Extension]:
    """What a listener offers: the ODMR port only what RFC 2645 needs; an SMTP
    port everything, with AUTH when there are logins and STARTTLS when there
    is a certificate."""
    auth = Auth(
        accounts.lookup,
        mechanisms=accounts.mechanisms,
        allow_clear=listener.auth_in_clear,
        max_failures=listener.max_auth_failures,
    )
    extensions: list[Extension] = [EnhancedStatusCodes()] if listener.mode == ODMR else default_extensions()
    if tls:
        extensions.append(StartTls())
    if accounts or listener.mode == ODMR:
        extensions.append(auth)
    if listener.mode == ODMR:
        extensions.append(Atrn())
    elif listener.processes == 1:  # a multi-process listener only receives
        extensions.append(Etrn())
    return extensions


def _logins(config: Config) -> list[Login]:
    """Every login of the configuration: each peer's (it is that peer) and each user's."""
    logins = [
        Login(peer.username, peer.password, peer.password_hash, peer=peer.name)
        for peer in config.peers.values()
        if peer.username is not None
    ]
    return logins + [Login(user.name, user.password, user.password_hash) for user in config.users.values()]


def _owned_domains(config: Config) -> dict[str, list[str]]:
    """A peer owns its domains and every domain held for it."""
    owned = {name: list(peer.domains) for name, peer in config.peers.items()}
    for domain, name in config.holds.items():
        if domain not in owned.setdefault(name, []):
            owned[name].append(domain)
    return owned
