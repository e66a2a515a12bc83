"""Warnings about holds a peer cannot take: ``smtppeer check-config`` prints them.

A hold is mail this host keeps for a peer until it calls in; the peer should
be its destination.  When the peer does not accept a held domain itself but
routes it on (a dial-up host routes everything else back to its provider),
the mail would go round on every poll; the receiving side now refuses that
(``550 5.4.6``, ``policy/receiving.py``) and the provider bounces it, but it
is still a mistake in the configuration, and one that check-config can show
before any mail is lost to it:

* from one file: a hold beyond what the peer says it owns
  (``peers.NAME.domains``, when it says anything);
* from a pair of files (``check-config provider.toml --peer dialup.toml``):
  a domain held for the other side that the other side does not accept,
  because it routes it back (a loop) or has nowhere to put it.

These are warnings, not errors: a file alone cannot know what its peer does.
"""

from __future__ import annotations

from smtppeer.engine.address import Mailbox
from smtppeer.engine.address import Path as SMTPPath
from smtppeer.policy.routing import LOCAL, REFUSE, RELAY, Router, matches

from ..config import Config, Peer
from .errors import format_key

SAMPLE = "any-subdomain"  # stands for every subdomain of a held ``.DOMAIN``


def _sample(held: str) -> str:
    """A domain that a hold of ``DOMAIN`` or ``.DOMAIN`` (every subdomain) covers."""
    return SAMPLE + held if held.startswith(".") else held


def _what(held: str) -> str:
    """What a hold covers, as the subject of "is"/"are"."""
    return f"the subdomains of {held[1:]} are" if held.startswith(".") else f"{held} is"


def hold_warnings(config: Config) -> list[str]:
    """One file: holds that go beyond what their peer says it owns."""
    lines = []
    for held, name in config.holds.items():
        peer = config.peers.get(name)
        if peer is None or not peer.domains or matches(peer.domains, _sample(held)):
            continue
        lines.append(
            f'{format_key(("holds", held))}: held for peer "{name}", but {_what(held)} not among its '
            f"domains (peers.{name}.domains): what it does not accept itself it refuses (a routing "
            f"loop, or relaying) and the mail bounces here; hold only what it accepts, or add "
            f'"{held}" to its domains if it does accept it'
        )
    return lines


def _counterpart(config: Config, other: Config) -> Peer | None:
    """The peer in ``config`` that is the host ``other`` describes: the same login (the
    relationship's credentials are the same on both sides), else a peer owning its name."""
    logins = {p.username for p in other.peers.values() if p.username is not None}
    for peer in config.peers.values():
        if peer.username is not None and peer.username in logins:
            return peer
    for peer in config.peers.values():
        if any(matches(peer.domains, d) for d in (other.hostname, *other.domains)):
            return peer
    return None


def _decision(other: Config, domain: str):
    """What ``other`` does with mail for ``domain`` that a trusted client gives it (a peer
    that TURNs to it may not even be trusted to relay: then it is refused anyway)."""
    router = Router(other.hostname, other.domains, routes=other.routes, holds=other.holds)
    return router.decide(SMTPPath(Mailbox("postmaster", domain)), "", authenticated="check-config")


def pair_warnings(config: Config, other: Config, other_source: str) -> list[str]:
    """Holds in ``config`` for the host ``other`` describes that ``other`` does not accept."""
    peer = _counterpart(config, other)
    if peer is None:
        return []
    back = _counterpart(other, config)
    lines = []
    for held, name in config.holds.items():
        if name != peer.name:
            continue
        decision = _decision(other, _sample(held))
        if decision.kind == LOCAL:
            continue
        if back is not None and decision.target in (f"peer:{back.name}", back.name):
            kind = "routes" if decision.kind == RELAY else "holds"
            why = f"{kind} {_sample(held)} back here ({other_source}: {decision.target}): a routing loop"
        elif decision.kind == REFUSE:
            why = f"does not accept {_sample(held)} ({other_source} has no domain or route for it)"
        else:
            continue  # it relays them on: a gateway for those domains
        lines.append(
            f'{format_key(("holds", held))}: held for peer "{name}", which {why}; such mail bounces '
            f"when it calls in: hold only the domains it accepts"
        )
    return lines
