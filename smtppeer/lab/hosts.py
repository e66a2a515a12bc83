"""What each host of a lab is, in smtppeer's own configuration.

A topology names roles; this writes the configuration each role means, as
the TOML document a user would have written, and ``parse_config`` checks it
like any other (so a lab host is exactly a configured smtppeer).  Every
address of another host is the address of the link (a proxy of the lab's)
from this host to that one, so any path can be cut, slowed or broken.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from typing import Any

from smtppeer.relay.holds import PollMethod
from smtppeer.service.config import Config
from smtppeer.service.configfile import parse_config

from .topology import HostSpec, Role, Topology

SMTP, ODMR = "smtp", "odmr"  # the listeners a host may have

# (from host, to host, listener) -> the endpoint description to connect to
LinkAddress = Callable[[str, str, str], str]


def password(topology: Topology, dialup: str) -> str:
    """The login a dial-up host and its provider share: fixed by the lab's seed, so a
    topology gives the same passwords every run (it is a lab; loopback only)."""
    return hashlib.sha256(f"{topology.seed}:{dialup}".encode()).hexdigest()[:20]


def listeners_of(topology: Topology, name: str) -> list[str]:
    """SMTP for everyone; ODMR (ATRN) too for a relay with a customer that polls by ATRN."""
    kinds = [SMTP]
    if any(
        h.provider == name and h.poll is not None and h.poll.method == PollMethod.ATRN
        for h in topology.hosts.values()
    ):
        kinds.append(ODMR)
    return kinds


def document(topology: Topology, name: str, data_dir: str, link: LinkAddress) -> dict[str, Any]:
    """The configuration of host ``name`` as a TOML document (a dict)."""
    host = topology.hosts[name]
    doc: dict[str, Any] = {
        "hostname": host.hostname,
        "data_dir": os.path.join(data_dir, name),
        "listen": [],
        "domains": {d: {} for d in host.domains},
        "routes": {},
        "holds": {},
        "peers": {},
        "polls": [],
    }
    for kind in listeners_of(topology, name):
        listener: dict[str, Any] = {"endpoint": "tcp:0:interface=127.0.0.1", "auth_in_clear": True}
        if kind == ODMR:
            listener = {"endpoint": "tcp:0:interface=127.0.0.1", "mode": "odmr", "auth_in_clear": True}
        doc["listen"].append(listener)
    if host.role == Role.DIALUP:
        _dialup(topology, host, doc, link)
    elif host.role == Role.RELAY:
        _relay(topology, host, doc, link)
    for domain, target in host.routes.items():
        doc["routes"][domain] = link(name, target[5:], SMTP) if target.startswith("host:") else target
    _merge(doc, copy.deepcopy(host.config))
    return {key: value for key, value in doc.items() if value != {} and value != []}


def _dialup(topology: Topology, host: HostSpec, doc: dict[str, Any], link: LinkAddress) -> None:
    provider = host.provider
    assert provider is not None and host.poll is not None
    peer: dict[str, Any] = {
        "endpoint": link(host.name, provider, SMTP),
        "username": host.name,
        "password": password(topology, host.name),
        "tls": "none",
    }
    poll: dict[str, Any] = {"peer": provider, "method": str(host.poll.method), "interval": host.poll.every}
    poll["jitter"] = host.poll.jitter
    if host.poll.method == PollMethod.ATRN:
        peer["odmr_endpoint"] = link(host.name, provider, ODMR)
    doc["peers"][provider] = peer
    doc["polls"].append(poll)
    doc["routes"]["*"] = f"peer:{provider}"
    doc["relay_from"] = ["127.0.0.0/8"]  # its users submit on loopback, as a lab's tests do


def _relay(topology: Topology, host: HostSpec, doc: dict[str, Any], link: LinkAddress) -> None:
    """Hold for its own dial-up hosts; route every other domain of the lab one hop
    closer: to the host that has it, or to that dial-up host's provider."""
    for other in topology.hosts.values():
        if other.name == host.name:
            continue
        if other.role == Role.DIALUP and other.provider == host.name:
            doc["peers"][other.name] = {
                "domains": list(other.domains),
                "username": other.name,
                "password": password(topology, other.name),
                "endpoint": link(host.name, other.name, SMTP),  # where ETRN sends its mail
                "tls": "none",
            }
            for domain in other.domains:
                doc["holds"][domain] = other.name
            continue
        via = other.provider if other.role == Role.DIALUP else other.name
        for domain in other.domains:
            doc["routes"][domain] = link(host.name, via, SMTP)


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """A host's own ``config`` table laid over what its role wrote: tables merge,
    anything else replaces."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def host_config(topology: Topology, name: str, data_dir: str, link: LinkAddress) -> Config:
    """The checked configuration of one host; a mistake in its ``config`` table is
    reported against the topology file and the host."""
    return parse_config(document(topology, name, data_dir, link), f"{topology.source}: hosts.{name}")
