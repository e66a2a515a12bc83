"""Routing: for each recipient, one decision — local, relay, hold for a peer, or refuse.

Who may send where (never an open relay):

* local domains and held domains are destinations of this peer: anyone may
  send to them;
* a route for a named domain makes this peer that domain's relay (like
  Postfix's ``relay_domains``): anyone may send to it;
* the catch-all route ``*`` (a smarthost, or MX lookup) is relaying to the
  world: only for clients in a trusted network, or authenticated ones;
* everything else gets ``550 5.7.1``.

Domains match exactly, or by a leading-dot pattern (``.example.org`` is every
subdomain of example.org); the most specific match wins.

Source routes (RFC 821 §3.6): a forward-path ``<@ONE,@TWO:joe@THREE>`` whose
first hop is this peer is routed to ``TWO`` (the rest of the route is kept for
it) under the same authorisation rules as any relaying.  With
``honour_source_routes=False`` (RFC 5321 §C) the route is ignored and the
final mailbox's domain decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from smtppeer.engine import Path, Reply, reply


class RouteKind(StrEnum):
    """What happens to one recipient."""

    LOCAL = "local"  # into a Maildir here
    RELAY = "relay"  # to a next hop (an endpoint, or the domain's MX hosts)
    HOLD = "hold"  # kept for a peer until it calls in
    REFUSE = "refuse"


LOCAL, RELAY, HOLD, REFUSE = RouteKind
MX = "mx"  # a relay target meaning "look up the domain's MX records"


@dataclass(frozen=True)
class Decision:
    kind: RouteKind
    target: str | None = None  # RELAY: endpoint string or "mx"; HOLD: peer name
    domain: str | None = None  # the domain the next hop is for (MX lookups, source routes)
    path: Path | None = None  # the forward-path to use onward (a source route shortened)
    reply: Reply | None = None  # REFUSE: what to answer

    @property
    def accepted(self) -> bool:
        return self.kind != REFUSE


DENIED = Decision(REFUSE, reply=reply(550, "5.7.1", "Relaying denied"))


class Router:
    def __init__(
        self,
        hostname: str,
        local_domains: Iterable[str],
        routes: dict[str, str] | None = None,
        holds: dict[str, str] | None = None,
        relay_from: Iterable[str] = (),
        honour_source_routes: bool = True,
        accept_any_domain: bool = False,
    ) -> None:
        """``accept_any_domain``: every domain that is not routed or held is local (a
        capturing server for tests keeps everything it is sent)."""
        self.accept_any_domain = accept_any_domain
        self.hostname = hostname.lower().rstrip(".")
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self.routes = {k.lower(): v for k, v in (routes or {}).items()}
        self.holds = {k.lower(): v for k, v in (holds or {}).items()}
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in relay_from]
        self.honour_source_routes = honour_source_routes

    def is_trusted(self, client_ip: str, authenticated: str | None = None) -> bool:
        if authenticated:
            return True
        try:
            ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted)

    def is_me(self, domain: str) -> bool:
        d = domain.lower().rstrip(".")
        return d == self.hostname or d in self.local_domains

    def decide(self, path: Path, client_ip: str, authenticated: str | None = None) -> Decision:
        box = path.mailbox
        if box is None:
            return DENIED
        if path.route and self.honour_source_routes:
            return self._source_route(path, client_ip, authenticated)
        if not box.domain:  # <postmaster>
            return Decision(LOCAL, domain="")
        domain = box.domain_key
        if domain.startswith("["):
            return self._literal(path, domain, client_ip, authenticated)
        if domain in self.local_domains:
            return Decision(LOCAL, domain=domain, path=_plain(path))
        peer = _lookup(self.holds, domain)
        if peer is not None:
            return Decision(HOLD, peer, domain=domain, path=_plain(path))
        target = _lookup(self.routes, domain)
        if target is not None:
            return Decision(RELAY, target, domain=domain, path=_plain(path))
        if self.accept_any_domain:
            return Decision(LOCAL, domain=domain, path=_plain(path))
        target = self.routes.get("*")
        if target is not None and self.is_trusted(client_ip, authenticated):
            return Decision(RELAY, target, domain=domain, path=_plain(path))
        return DENIED

    def _source_route(self, path: Path, client_ip: str, authenticated: str | None) -> Decision:
        first, *rest = path.route
        if not self.is_me(first):
            # Not addressed to us first: that is asking us to relay to ``first``.
            rest = list(path.route)
        if not rest:
            return self.decide(Path(path.mailbox), client_ip, authenticated)
        onward = Path(path.mailbox, tuple(rest))
        next_host = rest[0].lower().rstrip(".")
        target = _lookup(self.routes, next_host)
        if target is None:
            if not self.is_trusted(client_ip, authenticated):
                return DENIED
            target = self.routes.get("*", MX)
        return Decision(RELAY, target, domain=next_host, path=onward)

    def _literal(self, path: Path, domain: str, client_ip: str, authenticated: str | None) -> Decision:
        if domain in self.local_domains:
            return Decision(LOCAL, domain=domain, path=_plain(path))
        if not self.is_trusted(client_ip, authenticated):
            return DENIED
        address = domain[1:-1]
        if address.upper().startswith("IPV6:"):
            address = address[5:]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return Decision(REFUSE, reply=reply(550, "5.1.2", "Cannot route to that address literal"))
        host = str(ip).replace(":", "\\:")  # endpoint strings escape colons
        return Decision(RELAY, f"tcp:host={host}:port=25", domain=domain, path=path)


def _plain(path: Path) -> Path:
    return Path(path.mailbox) if path.route else path


def matches(patterns: list[str], domain: str) -> bool:
    """Is ``domain`` one of ``patterns`` (``DOMAIN``, or ``.DOMAIN`` for its subdomains)?"""
    return _lookup(dict.fromkeys(patterns, ""), domain.lower()) is not None


def _lookup(table: dict[str, str], domain: str) -> str | None:
    """Exact match first, then ``.parent`` patterns from the most specific up."""
    if domain in table:
        return table[domain]
    parts = domain.split(".")
    for i in range(1, len(parts)):
        pattern = "." + ".".join(parts[i:])
        if pattern in table:
            return table[pattern]
    return None
