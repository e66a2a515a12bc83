"""The configuration model: everything the service needs, from options or a TOML file.

``twistd smtppeer`` options and ``--config FILE`` both produce a ``Config``;
options given on the command line override the file.  The model is plain
data so that ``smtppeer check-config`` can validate a file without starting
anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from smtppeer.engine import Limits
from smtppeer.engine.sender import TLS_NONE as TLS_NONE  # re-exported: the file's names for them
from smtppeer.engine.sender import TLS_OPPORTUNISTIC as TLS_OPPORTUNISTIC
from smtppeer.engine.sender import TLS_REQUIRED as TLS_REQUIRED
from smtppeer.engine.sender import TLS_VERIFY as TLS_VERIFY
from smtppeer.engine.sender import TlsPolicy
from smtppeer.policy.mailboxes import Mailbox
from smtppeer.relay.holds import PollMethod

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"


class ListenerMode(StrEnum):
    SMTP = "smtp"  # ordinary SMTP; TURN only for peers that the listener admits
    ODMR = "odmr"  # RFC 2645 On-Demand Mail Relay (the trust issue)


SMTP, ODMR = ListenerMode


class SendMode(StrEnum):
    """When mail routed through a peer ("peer:NAME") is sent."""

    NOW = "now"  # at once, over a connection of its own (an always-online peer)
    ON_POLL = "on-poll"  # on the next poll of the peer: a dial-up host sends only when it calls


# Client-side TLS policies for a peer (``Peer.tls``): the engine's, defined there once.
TLS_POLICIES = tuple(TlsPolicy)

ODMR_PORT = 366  # RFC 2645


@dataclass
class Listener:
    endpoint: str  # a Twisted server endpoint description
    mode: ListenerMode = SMTP
    turn: bool = False  # may a configured peer say TURN here? (AUTH as that peer always may)
    starttls: bool = True  # offer STARTTLS (when the service has a certificate)
    require_tls: bool = False  # nothing but EHLO/HELO/STARTTLS/NOOP/RSET/QUIT before STARTTLS
    auth_in_clear: bool = False  # allow AUTH PLAIN/LOGIN without TLS (a lab on loopback)
    max_auth_failures: int = 3  # then 421 and close
    # Processes accepting on this listener: the service and processes - 1 receive-only
    # workers sharing its socket.  Such a listener never turns (no TURN, ATRN or ETRN).
    processes: int = 1


@dataclass
class TLSFiles:
    """The server certificate (PEM, with its chain) and its private key (PEM)."""

    certificate: str
    key: str


@dataclass
class User:
    """Someone who may AUTH to submit (and so relay) mail, but owns no domains."""

    name: str
    password: str | None = None  # clear text: every mechanism, CRAM-MD5 included
    password_hash: str | None = None  # RFC 5803 SCRAM-SHA-256: PLAIN, LOGIN, SCRAM-SHA-256 only


@dataclass
class Peer:
    """A host this one exchanges mail with.

    ``addresses`` identify it when it connects to us (on ``turn`` listeners;
    AUTH is the stronger identity); ``endpoint`` is how we reach it (mail
    for it, TURN and ETRN polls); ``odmr_endpoint`` its On-Demand Mail Relay
    port (RFC 2645), where ATRN polls go: that port takes no mail, so a peer
    polled by ATRN sends and receives over two ports.  ``domains`` are the
    domains it owns (its hold queue, what TURN, ATRN and ETRN may release to
    it).

    ``username`` and ``password`` are the credentials of the relationship,
    used in whichever direction the connection goes: the peer logs in to us
    with them (and is then known as this peer), and we log in to it with them
    when we connect (polls, routes).  ``password_hash`` (RFC 5803
    SCRAM-SHA-256) may replace the password on the side that only checks it.
    """

    name: str
    domains: list[str] = field(default_factory=list)
    endpoint: str | None = None
    odmr_endpoint: str | None = None  # where ATRN polls go (RFC 2645's port 366); default: endpoint
    addresses: list[str] = field(default_factory=list)
    username: str | None = None
    password: str | None = None
    password_hash: str | None = None
    tls: TlsPolicy = TLS_OPPORTUNISTIC  # when we connect to it
    ca_file: str | None = None  # trust roots for tls = "verify"
    tls_name: str | None = None  # the name its certificate must carry; default: the endpoint's host
    send: SendMode = SendMode.NOW  # mail routed through it: at once, or on the next poll of it

    def poll_endpoint(self, method: PollMethod) -> str | None:
        """Where a poll by ``method`` connects: ATRN to the ODMR port when there is one
        (RFC 2645), every other poll (and ATRN without one) to ``endpoint``."""
        if method == PollMethod.ATRN and self.odmr_endpoint is not None:
            return self.odmr_endpoint
        return self.endpoint


@dataclass
class Poll:
    """A schedule: connect to ``peer``, send what is queued for it, then turn."""

    peer: str
    interval: float = 300.0
    jitter: float = 0.1  # ± fraction of the interval
    method: PollMethod = PollMethod.TURN
    max_backoff: float = 3600.0
    # ATRN/ETRN: the domains to ask for; empty: ATRN without argument (all the
    # provider holds for us), ETRN for each of this host's local domains
    domains: list[str] = field(default_factory=list)


@dataclass
class Config:
    hostname: str
    data_dir: str = "./smtppeer-data"
    listeners: list[Listener] = field(default_factory=list)
    domains: dict[str, Mailbox] = field(default_factory=dict)  # local domain -> its mailboxes
    routes: dict[str, str] = field(default_factory=dict)  # domain -> endpoint, "mx" or "peer:NAME"
    holds: dict[str, str] = field(default_factory=dict)  # domain -> peer name
    relay_from: list[str] = field(default_factory=list)
    peers: dict[str, Peer] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    tls: TLSFiles | None = None
    polls: list[Poll] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 200
    # Sessions one client address may hold on a listener (0: no limit); see README "Trust".
    max_connections_per_client: int = 20
    # An IPv6 client is counted (sessions, failed AUTHs) as its network of this many bits.
    client_ipv6_prefix_length: int = 84
    # Failed AUTHs from one address (all its sessions) before its AUTH gets 454 for
    # auth_backoff, doubled with each further failure up to auth_backoff_max (0: no budget).
    auth_failures_per_client: int = 10
    auth_backoff: float = 60.0
    auth_backoff_max: float = 3600.0
    queue_minfree: int = 0  # octets free below which MAIL gets 452 4.3.1 (0: not checked)
    max_received: int = 100
    queue_lifetime: float = 5 * 86400.0
    retry_interval: float = 60.0  # the first retry; each further one waits twice as long ...
    retry_interval_max: float = 3600.0  # ... up to this
    # Sending: sessions open at once in all, to one destination (an endpoint, or a
    # domain's MX hosts), messages sent over one before it is closed, and how long a
    # connection may take to open.
    outgoing_connections: int = 20
    outgoing_connections_per_destination: int = 4
    messages_per_connection: int = 100
    connect_timeout: float = 30.0
    dns: tuple[str, int] | None = None
    honour_source_routes: bool = True
    accept_any_domain: bool = False  # every domain not routed or held is local (a capturing test server)
    json_log: bool = False
    metrics: str | None = None  # a server endpoint serving Prometheus metrics at /metrics

    def on_poll_relays(self) -> dict[str, str]:
        """The relays whose mail waits for a poll of their peer (``send = "on-poll"``),
        each to the peer's name: its endpoint (what routes through it are resolved
        to) and ``peer:NAME``."""
        waits: dict[str, str] = {}
        for peer in self.peers.values():
            if peer.send == SendMode.ON_POLL and peer.endpoint is not None:
                waits[peer.endpoint] = waits[f"peer:{peer.name}"] = peer.name
        return waits
