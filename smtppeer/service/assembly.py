"""Turns the configuration into running ``twisted.application`` services."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from smtppeer.activity import Activity
from smtppeer.engine.sender import TLS_OPPORTUNISTIC, ClientSecurity
from smtppeer.peer.hooks import ReceiverHooks
from smtppeer.peer.protocol import SMTPPeerFactory
from smtppeer.peer.tls import client_options, endpoint_host
from smtppeer.policy.receiving import ReceivingPolicy
from smtppeer.policy.routing import Router
from smtppeer.relay.holds import PollMethod
from smtppeer.relay.mx import MXResolver, resolver_from_address
from smtppeer.relay.poller import Poller, Schedule
from smtppeer.relay.queue import RunnerSettings
from smtppeer.relay.scheduler import QueueRunner
from smtppeer.store.maildir import MaildirStore

from .config import TLS_NONE, TLS_VERIFY, Config, Peer
from .control import ControlFactory, ControlService
from .logs import JSONLogFile, json_log_path
from .options import Options
from .receiving import Receiving
from .startup import DataDirectory, fail, twistd_owner

log = Logger()

__all__ = ["Assembly", "Options", "assemble", "build_service", "makeService"]


def makeService(options: Options) -> service.MultiService:  # noqa: N802 (the name ServiceMaker looks for)
    return build_service(options.config, owner=twistd_owner(options))


@dataclass
class Assembly:
    """One configured service and the parts a lab (or a test) drives directly."""

    service: service.MultiService
    config: Config
    receiving: Receiving
    runner: QueueRunner
    hooks: ReceiverHooks
    listeners: list[ListeningService]
    poller: Poller | None
    activity: Activity


def build_service(config: Config, owner: tuple[int, int] | None = None) -> service.MultiService:
    return assemble(config, owner).service


def assemble(
    config: Config,
    owner: tuple[int, int] | None = None,
    *,
    activity: Activity | None = None,
    wrap_hooks: Callable[[ReceivingPolicy], ReceiverHooks] | None = None,
    screen: frozenset[str] = frozenset(),
    wrap_listener: Callable[[SMTPPeerFactory], IProtocolFactory] | None = None,
    control: bool = True,
) -> Assembly:
    """Children start in order and stop in reverse: listeners and polls stop
    first, the committer last, so everything accepted is on disk at the end.

    ``owner``: the uid and gid twistd switches to after ``privilegedStartService``
    (``--uid``/``--gid``); the data directory is handed to them before that.
    ``activity`` is told what happens to mail; ``wrap_hooks`` may put something
    (the lab's failures) between the listeners and the receiving policy, and
    ``screen`` names commands those hooks see before they run; ``wrap_listener``
    may put a factory of its own (a lab's transcripts) in front of each listener's.
    Without ``control`` there is no control socket (a lab is driven by its own API)."""
    top = service.MultiService()
    data_dir = os.path.abspath(config.data_dir)
    DataDirectory(data_dir, owner).setServiceParent(top)  # first: locked before anything in it is touched
    os.makedirs(os.path.join(data_dir, "mail"), mode=0o700, exist_ok=True)
    if config.json_log:
        JSONLogFile(json_log_path(data_dir)).setServiceParent(top)
    side = Receiving(config, top)
    swept = side.store.sweep_tmp()
    if swept:
        log.info("removed {n} stale files from Maildir tmp/ directories", n=swept)
    resolver = resolver_from_address(*config.dns) if config.dns else None
    activity = activity or Activity()
    runner = QueueRunner(
        config.hostname,
        side.spool,
        side.router,
        deliver_locally=functools.partial(_deliver_bounce, side.store, side.router),
        resolver=MXResolver(resolver, local_names=[config.hostname]),
        settings=RunnerSettings(
            lifetime=config.queue_lifetime,
            backoff_base=config.retry_interval,
            backoff_max=config.retry_interval_max,
            max_connections=config.outgoing_connections,
            per_destination=config.outgoing_connections_per_destination,
            messages_per_connection=config.messages_per_connection,
            connect_timeout=config.connect_timeout,
            on_poll=frozenset(config.on_poll_relays()),
        ),
        limits=config.limits,
        security=_client_security(config),
        activity=activity,
    )
    runner.setServiceParent(top)
    policy = side.policy(runner, activity)
    hooks: ReceiverHooks = wrap_hooks(policy) if wrap_hooks is not None else policy
    listeners: list[ListeningService] = []
    for index, listener in enumerate(config.listeners):
        factory = side.factory(listener, hooks)
        if screen:
            factory.peer_options["screen"] = screen
        if listener.processes > 1:
            from .workers import SharedListener  # noqa: PLC0415 - only for multi-process listeners

            SharedListener(config, index, factory, runner).setServiceParent(top)
        else:
            served = ListeningService(listener.endpoint, factory, wrap_listener)
            served.setServiceParent(top)
            listeners.append(served)
    poller = None
    poll_now = None
    if config.polls:
        schedules = [Schedule(p.peer, p.interval, p.jitter, p.max_backoff) for p in config.polls]
        polls = {p.peer: p for p in config.polls}
        poller = Poller(schedules, lambda name: _poll(runner, policy, config, polls[name], wrap_hooks))
        poller.setServiceParent(top)
        poll_now = poller.poll_now
    if control:
        ControlService(data_dir, ControlFactory(runner, policy, poll_now)).setServiceParent(top)
    if config.metrics:
        from .metrics import Metrics, MetricsService  # noqa: PLC0415 -- prometheus_client only when asked

        metrics = Metrics()
        metrics.watch(config.hostname, activity, runner)
        MetricsService(config.metrics, metrics).setServiceParent(top)
    log.info(
        "smtppeer {hostname}: domains {domains}, data in {data_dir}, listening on {listen}",
        hostname=config.hostname,
        domains=", ".join(config.domains),
        data_dir=data_dir,
        listen=", ".join(listener.endpoint for listener in config.listeners),
    )
    return Assembly(top, config, side, runner, hooks, listeners, poller, activity)


def _client_security(config: Config):
    """How the runner secures a connection to an endpoint: a peer's policy and
    credentials when the endpoint is a peer's, opportunistic TLS otherwise."""
    by_endpoint: dict[str, tuple[ClientSecurity, object | None]] = {}
    for peer in config.peers.values():
        for endpoint in (peer.endpoint, peer.odmr_endpoint):
            if endpoint is not None:
                by_endpoint[endpoint] = _peer_security(peer, endpoint)
    default = (ClientSecurity(tls=TLS_OPPORTUNISTIC), None)
    return lambda endpoint: by_endpoint.get(endpoint, default)


def _peer_security(peer: Peer, endpoint: str) -> tuple[ClientSecurity, object | None]:
    creator = None
    if peer.tls == TLS_VERIFY:
        creator = client_options(peer.tls_name or endpoint_host(endpoint), peer.ca_file)
    security = ClientSecurity(tls=peer.tls)
    if peer.username is not None and peer.password is not None:  # a hash cannot log in anywhere
        security.username, security.password = peer.username, peer.password
        security.allow_clear = peer.tls == TLS_NONE  # said so: no TLS, so AUTH goes in clear
    return security, creator


def _poll(
    runner: QueueRunner,
    policy: ReceivingPolicy,
    config: Config,
    poll,
    wrap_hooks: Callable[[ReceivingPolicy], ReceiverHooks] | None = None,
):
    """One poll of ``poll.peer`` by its method: TURN (send, then receive on the same
    connection), ATRN (log in and receive; RFC 2645's port takes no mail, so what is
    queued for the peer goes to its ``endpoint`` first when it has an ``odmr_endpoint``
    beside it) or ETRN (send, then ask the peer to connect back).  Whatever comes
    back over a turned connection comes from that peer (``ReceivingPolicy.polling``),
    and meets what ``wrap_hooks`` puts in front of the policy (a lab's faults)."""
    hooks = policy.polling(poll.peer)
    if wrap_hooks is not None:
        hooks = wrap_hooks(hooks)
    peer = config.peers[poll.peer]
    endpoint = peer.poll_endpoint(poll.method)
    if poll.method == PollMethod.ATRN:
        command = "ATRN " + ",".join(poll.domains) if poll.domains else "ATRN"
        send_to = peer.endpoint if endpoint != peer.endpoint else None
        return runner.poll(
            poll.peer, endpoint, hooks, command, send_queued=False, send_to=send_to, method=PollMethod.ATRN
        )
    if poll.method == PollMethod.ETRN:
        requests = [f"ETRN {d}" for d in poll.domains or config.domains]
        return runner.poll(poll.peer, endpoint, hooks, "QUIT", requests=requests, method=PollMethod.ETRN)
    return runner.poll(poll.peer, endpoint, hooks)


class ListeningService(service.Service):
    """A listening endpoint whose stop also closes its sessions (421 4.3.2), so a
    SIGTERM never leaves a client waiting on a half-finished exchange.

    It listens in ``privilegedStartService`` (before twistd drops privileges:
    port 25), and keeps the listening port, whose address a lab reports."""

    def __init__(
        self,
        endpoint: str,
        factory: SMTPPeerFactory,
        wrap: Callable[[SMTPPeerFactory], IProtocolFactory] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.serving: IProtocolFactory = wrap(factory) if wrap is not None else factory
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        from twisted.internet import reactor  # noqa: PLC0415

        outcome: list = []
        serverFromString(reactor, self.endpoint).listen(self.serving).addBoth(outcome.append)
        result = outcome[0] if outcome else None  # stream endpoints listen at once
        if isinstance(result, Failure):
            cause = result.value.socketError if result.check(CannotListenError) else result.value
            # in use, or a privileged port without the privilege
            fail(f"cannot listen on {self.endpoint}: {getattr(cause, 'strerror', None) or cause}")
        self.port = result

    def startService(self) -> None:
        self.privilegedStartService()  # a service started without twistd (a lab, a test)
        super().startService()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        port, self.port = self.port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
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
