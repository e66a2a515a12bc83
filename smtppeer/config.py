"""The configuration model: everything the service needs, from options or a TOML file.

``twistd smtppeer`` options and ``--config FILE`` both produce a ``Config``;
options given on the command line override the file.  The model is plain
data so that ``smtppeer check-config`` can validate a file without starting
anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine import Limits

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"

# Listener modes
SMTP = "smtp"  # ordinary SMTP; TURN only for peers that the listener admits
ODMR = "odmr"  # RFC 2645 On-Demand Mail Relay (the trust issue)


@dataclass
class Listener:
    endpoint: str  # a Twisted server endpoint description
    mode: str = SMTP
    turn: bool = False  # may a configured peer say TURN here?


@dataclass
class Mailbox:
    """A local domain's mailboxes: a catch-all, or an explicit list with aliases."""

    catch_all: bool = True
    users: list[str] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # local part -> local parts or addresses


@dataclass
class Peer:
    """A host this one exchanges mail with.

    ``addresses`` identify it when it connects to us (until AUTH gives a
    stronger identity); ``endpoint`` is how we reach it; ``domains`` are the
    domains it owns (its hold queue, what TURN may release to it).
    """

    name: str
    domains: list[str] = field(default_factory=list)
    endpoint: str | None = None
    addresses: list[str] = field(default_factory=list)
    username: str | None = None
    password: str | None = None


@dataclass
class Poll:
    """A schedule: connect to ``peer``, send what is queued for it, then turn."""

    peer: str
    interval: float = 300.0
    jitter: float = 0.1  # ± fraction of the interval
    method: str = "turn"  # "turn" now; "atrn" and "etrn" with the trust issue
    max_backoff: float = 3600.0


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
    polls: list[Poll] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 200
    max_received: int = 100
    queue_lifetime: float = 5 * 86400.0
    retry_interval: float = 60.0
    dns: tuple[str, int] | None = None
    honour_source_routes: bool = True
    json_log: bool = False
