"""The topology file: hosts, the links between them, and the failures to inject.

A lab is described in TOML and checked like the configuration file: every
mistake is one line naming the file and the key (``lab.toml: hosts.alpha.provider:
no host named "provder" (did you mean "provider"?)``).  ``docs/topology.rst``
has the whole format; in short::

    [lab]
    http = "tcp:0:interface=127.0.0.1"       # the HTTP API and status page
    seed = 1                                 # for faults with a probability, link jitter

    [hosts.provider]                         # role = "relay" (the default)
    domains = ["provider.test"]

    [hosts.alpha]
    role = "dialup"                          # polls its provider, sends through it
    domains = ["alpha.test"]
    provider = "provider"
    poll = { method = "turn", every = "5m" } # turn, atrn or etrn

    [links.alpha]                            # the path from alpha to provider
    from = "alpha"
    to = "provider"
    schedule = "up every 15m for 2m"
    latency = "50ms"

    [[faults]]
    host = "provider"
    phase = "rcpt"
    recipient = "busy@*"
    reply = "452 4.2.2 Mailbox full"
    times = 2

What each role means in configuration (``lab/hosts.py`` writes it): a relay
holds mail for the dial-up hosts it provides for and routes every other
host's domains to that host (or to its provider); a dial-up host sends
everything through its provider and polls it; a local host only receives.
Every connection from one host to another goes through a link (a TCP proxy
of the lab's), declared or not, so any path can be cut or slowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from smtppeer.engine.replies import Reply
from smtppeer.relay.holds import PollMethod
from smtppeer.service.configfile.errors import Key, _show, _suggest
from smtppeer.service.configfile.reader import loads_document, read_document
from smtppeer.service.configfile.values import Values


class Role(StrEnum):
    RELAY = "relay"  # receives for its domains, relays for the others, holds for its dial-up hosts
    DIALUP = "dialup"  # not always online: sends through its provider, polls it for its mail
    LOCAL = "local"  # a final destination only


class Phase(StrEnum):
    """Where in a session a fault may strike."""

    CONNECT = "connect"
    EHLO = "ehlo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the DATA command
    END_OF_DATA = "end-of-data"  # the final dot: the message is there
    TURN = "turn"
    ATRN = "atrn"
    ETRN = "etrn"


class Action(StrEnum):
    REPLY = "reply"  # answer this instead
    DELAY = "delay"  # wait, then go on as usual
    DISCONNECT = "disconnect"  # cut the connection, answering nothing
    ACCEPT_THEN_DROP = "accept-then-drop"  # end-of-data: store the message, then cut (a duplicate)


@dataclass
class PollSpec:
    method: PollMethod
    every: float
    jitter: float = 0.0


@dataclass
class HostSpec:
    name: str
    role: Role = Role.RELAY
    domains: list[str] = field(default_factory=list)
    hostname: str = ""
    provider: str | None = None
    poll: PollSpec | None = None
    routes: dict[str, str] = field(default_factory=dict)  # domain -> "host:NAME", an endpoint or "mx"
    config: dict[str, Any] = field(default_factory=dict)  # more of smtppeer's own configuration


@dataclass
class Schedule:
    """``up``, ``down``, or up for ``duration`` once every ``period`` (from ``offset``)."""

    up: bool = True
    period: float | None = None
    duration: float = 0.0
    offset: float = 0.0

    def is_up(self, elapsed: float) -> bool:
        if self.period is None:
            return self.up
        if elapsed < self.offset:
            return not self.up
        return ((elapsed - self.offset) % self.period < self.duration) == self.up

    def next_change(self, elapsed: float) -> float | None:
        """Seconds from ``elapsed`` until the state changes; None if it never does."""
        if self.period is None:
            return None
        if elapsed < self.offset:
            return self.offset - elapsed
        into = (elapsed - self.offset) % self.period
        return (self.duration - into) if into < self.duration else (self.period - into)

    def describe(self) -> str:
        if self.period is None:
            return "up" if self.up else "down"
        text = f"{'up' if self.up else 'down'} every {self.period:g}s for {self.duration:g}s"
        return text + (f" after {self.offset:g}s" if self.offset else "")


@dataclass
class Toxics:
    latency: float = 0.0  # seconds added to every chunk, each way
    jitter: float = 0.0  # ± this much more, at random (seeded)
    bandwidth: int | None = None  # octets per second, each way
    reset_after: int | None = None  # cut the connection with a reset after this many octets (both ways)
    hang: bool = False  # pass nothing on: the connection stays open and silent
    slow_close: float = 0.0  # a side that closes is closed on the other side this much later


@dataclass
class LinkSpec:
    name: str
    source: str
    target: str
    schedule: Schedule = field(default_factory=Schedule)
    toxics: Toxics = field(default_factory=Toxics)


@dataclass
class FaultSpec:
    host: str
    phase: Phase
    action: Action
    name: str = ""
    reply: Reply | None = None
    delay: float = 0.0
    sender: str | None = None  # glob patterns, case-insensitive
    recipient: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    times: int | None = None  # fire at most this many times
    nth: int | None = None  # only the nth match
    every: int | None = None  # every nth match
    rate: tuple[int, float] | None = None  # (count, seconds): fire on matches beyond count per window
    after: float | None = None  # seconds from the lab's start
    until: float | None = None
    probability: float | None = None
    seed: int | None = None


@dataclass
class Topology:
    source: str
    hosts: dict[str, HostSpec]
    links: dict[str, LinkSpec] = field(default_factory=dict)
    faults: list[FaultSpec] = field(default_factory=list)
    data_dir: str | None = None
    http: str | None = "tcp:0:interface=127.0.0.1"
    seed: int = 0


def load_topology(path: str | os.PathLike[str]) -> Topology:
    source = os.fspath(path)
    data = read_document(path)  # read as the configuration file is: the same one-line errors
    topology = TopologyReader(source).topology(data)
    if topology.data_dir is not None and not os.path.isabs(topology.data_dir):
        # relative to the file, so a lab runs the same from wherever it is started
        topology.data_dir = os.path.join(os.path.dirname(os.path.abspath(source)), topology.data_dir)
    return topology


def loads_topology(text: str, source: str = "<topology>") -> Topology:
    return TopologyReader(source).topology(loads_document(text, source))


_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
_RATE = re.compile(r"(\d+)\s*/\s*(s|m|h|sec|min|hour|second|minute)", re.IGNORECASE)
_SCHEDULE = re.compile(
    r"(?P<state>up|down)(?:\s+every\s+(?P<period>\S+)\s+for\s+(?P<duration>\S+)(?:\s+after\s+(?P<offset>\S+))?)?",
    re.IGNORECASE,
)
_PER_SECOND = re.compile(r"(.*?)\s*/\s*s", re.IGNORECASE)
_MILLISECONDS = re.compile(r"(\d+(?:\.\d*)?)\s*ms", re.IGNORECASE)
_REPLY = re.compile(r"([245]\d\d)(?:\s+([245]\.\d{1,3}\.\d{1,3}))?(?:\s+(.*))?", re.DOTALL)


class TopologyReader(Values):
    """The topology's checks, on top of the configuration file's (durations, sizes, names)."""

    TOP = ("lab", "hosts", "links", "faults")
    HOST = ("role", "domains", "hostname", "provider", "poll", "routes", "config")

    def topology(self, data: dict[str, Any]) -> Topology:
        self.table(data, (), self.TOP)
        lab = self.table(data.get("lab", {}), ("lab",), ("data_dir", "http", "seed"))
        if "hosts" not in data or not data["hosts"]:
            raise self.error(("hosts",), "a lab needs at least one [hosts.NAME] table")
        hosts = {
            name: self.host(name, spec)
            for name, spec in self.table(data["hosts"], ("hosts",), tuple(data["hosts"])).items()
        }
        self.check_hosts(hosts)
        topology = Topology(self.source, hosts)
        if "data_dir" in lab:
            topology.data_dir = self.string(lab["data_dir"], ("lab", "data_dir"))
        if "http" in lab:
            topology.http = self.http(lab["http"], ("lab", "http"))
        if "seed" in lab:
            topology.seed = self.integer(lab["seed"], ("lab", "seed"), 0)
        links = self.table(data.get("links", {}), ("links",), tuple(data.get("links", {})))
        for name, spec in links.items():
            topology.links[name] = self.link(name, spec, hosts)
        faults = data.get("faults", [])
        self.check(faults, ("faults",), list, "an array of tables ([[faults]])")
        topology.faults = [self.fault(spec, ("faults", i), hosts) for i, spec in enumerate(faults)]
        return topology

    # -- hosts ------------------------------------------------------------------

    def host(self, name: str, spec: Any) -> HostSpec:
        key: Key = ("hosts", name)
        if not _NAME.fullmatch(name):
            raise self.error(key, "a host name is lower-case letters, digits and -, up to 31")
        self.table(spec, key, self.HOST)
        host = HostSpec(name, hostname=f"{name}.test" if "." not in name else name)
        if "role" in spec:
            host.role = self.choice(spec["role"], (*key, "role"), Role)
        if "domains" in spec:
            host.domains = [
                self.domain(d, (*key, "domains", i))
                for i, d in enumerate(self.strings(spec["domains"], (*key, "domains")))
            ]
        if "hostname" in spec:
            host.hostname = self.domain(spec["hostname"], (*key, "hostname"))
        if "provider" in spec:
            host.provider = self.string(spec["provider"], (*key, "provider"))
        if "poll" in spec:
            host.poll = self.poll(spec["poll"], (*key, "poll"))
        if "routes" in spec:
            routes = self.table(spec["routes"], (*key, "routes"), tuple(spec["routes"]))
            for domain, target in routes.items():
                self.domain(domain, (*key, "routes", domain), pattern=True, star=True)
                host.routes[domain.lower()] = self.string(target, (*key, "routes", domain))
        if "config" in spec:
            host.config = self.check(spec["config"], (*key, "config"), dict, "a table")
        return host

    def poll(self, value: Any, key: Key) -> PollSpec:
        spec = self.table(value, key, ("method", "every", "jitter"))
        method = self.choice(spec.get("method", "turn"), (*key, "method"), PollMethod)
        every = self.duration(spec.get("every", "5m"), (*key, "every"))
        jitter = self.jitter(spec["jitter"], (*key, "jitter")) if "jitter" in spec else 0.0
        return PollSpec(method, every, jitter)

    def check_hosts(self, hosts: dict[str, HostSpec]) -> None:
        owner: dict[str, str] = {}
        for name, host in hosts.items():
            key: Key = ("hosts", name)
            if not host.domains:
                raise self.error((*key, "domains"), "a host needs at least one domain")
            for i, domain in enumerate(host.domains):
                if domain in owner:
                    raise self.error(
                        (*key, "domains", i), f'"{domain}" is already a domain of {owner[domain]}'
                    )
                owner[domain] = name
            if host.role == Role.DIALUP:
                if host.provider is None:
                    raise self.error(key, 'a dial-up host needs a "provider" (the host it polls)')
                if host.provider not in hosts:
                    raise self.error(
                        (*key, "provider"),
                        f"no host named {_show(host.provider)}" + _suggest(host.provider, hosts),
                    )
                if hosts[host.provider].role != Role.RELAY:
                    raise self.error((*key, "provider"), f"{host.provider} is not a relay (its role)")
                host.poll = host.poll or PollSpec(PollMethod.TURN, 300.0)
            else:
                for what in ("provider", "poll"):
                    if getattr(host, what) is not None:
                        raise self.error(
                            (*key, what), f'only for role = "dialup" (this host is a {host.role})'
                        )
            for domain, target in host.routes.items():
                if target.startswith("host:") and target[5:] not in hosts:
                    raise self.error(
                        (*key, "routes", domain),
                        f"no host named {_show(target[5:])}" + _suggest(target[5:], hosts),
                    )

    # -- links ------------------------------------------------------------------

    LINK = ("from", "to", "schedule", "latency", "jitter", "bandwidth", "reset_after", "hang", "slow_close")

    def link(self, name: str, value: Any, hosts: dict[str, HostSpec]) -> LinkSpec:
        key: Key = ("links", name)
        spec = self.table(value, key, self.LINK)
        ends = []
        for end in ("from", "to"):
            if end not in spec:
                raise self.error(key, f'missing "{end}" (a host name)')
            host = self.string(spec[end], (*key, end))
            if host not in hosts:
                raise self.error((*key, end), f"no host named {_show(host)}" + _suggest(host, hosts))
            ends.append(host)
        if ends[0] == ends[1]:
            raise self.error((*key, "to"), "a link joins two different hosts")
        link = LinkSpec(name, ends[0], ends[1])
        if "schedule" in spec:
            link.schedule = self.schedule(spec["schedule"], (*key, "schedule"))
        toxics = link.toxics
        if "latency" in spec:
            toxics.latency = self.short_duration(spec["latency"], (*key, "latency"), zero=True)
        if "jitter" in spec:
            toxics.jitter = self.short_duration(spec["jitter"], (*key, "jitter"), zero=True)
        if "bandwidth" in spec:
            toxics.bandwidth = self.bandwidth(spec["bandwidth"], (*key, "bandwidth"))
        if "reset_after" in spec:
            toxics.reset_after = self.size(spec["reset_after"], (*key, "reset_after"), 1)
        if "hang" in spec:
            toxics.hang = self.boolean(spec["hang"], (*key, "hang"))
        if "slow_close" in spec:
            toxics.slow_close = self.short_duration(spec["slow_close"], (*key, "slow_close"), zero=True)
        return link

    def schedule(self, value: Any, key: Key) -> Schedule:
        text = self.string(value, key).strip()
        m = _SCHEDULE.fullmatch(text)
        if m is None:
            raise self.error(key, f'{_show(value)} is not a schedule: "up", "down" or "up every 15m for 2m"')
        schedule = Schedule(up=m.group("state").lower() == "up")
        if m.group("period"):
            schedule.period = self.duration(m.group("period"), key)
            schedule.duration = self.duration(m.group("duration"), key)
            if schedule.duration >= schedule.period:
                raise self.error(key, f"{_show(value)}: the time up must be shorter than the period")
            if m.group("offset"):
                schedule.offset = self.duration(m.group("offset"), key, zero=True)
        return schedule

    def bandwidth(self, value: Any, key: Key) -> int:
        """Octets per second: a number, or a size per second ("64K/s", as sizes are written)."""
        if isinstance(value, str):
            m = _PER_SECOND.fullmatch(value.strip())
            if m is None:
                raise self.error(key, f'{_show(value)} is not a bandwidth (octets per second, or "64K/s")')
            value = m.group(1)
        return self.size(value, key, 1, " per second")

    # -- faults -----------------------------------------------------------------

    FAULT = (
        "name", "host", "phase", "reply", "delay", "disconnect", "accept_then_drop", "sender", "recipient",
        "min_size", "max_size", "times", "nth", "every", "rate", "after", "until", "probability", "seed",
    )  # fmt: skip

    def fault(self, value: Any, key: Key, hosts: dict[str, HostSpec] | None = None) -> FaultSpec:
        """One fault; also how the HTTP API reads one given as JSON (``hosts`` checked there)."""
        spec = self.table(value, key, self.FAULT)
        for needed in ("host", "phase"):
            if needed not in spec:
                raise self.error(key, f'missing "{needed}"')
        host = self.string(spec["host"], (*key, "host"))
        if hosts is not None and host not in hosts:
            raise self.error((*key, "host"), f"no host named {_show(host)}" + _suggest(host, hosts))
        phase = self.choice(spec["phase"], (*key, "phase"), Phase)
        actions = [a for a in ("reply", "disconnect", "accept_then_drop") if spec.get(a) not in (None, False)]
        if len(actions) > 1:
            raise self.error(key, f"one action at a time, not {' and '.join(actions)}")
        delay = self.short_duration(spec["delay"], (*key, "delay"), zero=True) if "delay" in spec else 0.0
        if not actions and not delay:
            raise self.error(key, 'say what happens: "reply", "delay", "disconnect" or "accept_then_drop"')
        action = Action(actions[0].replace("_", "-")) if actions else Action.DELAY
        fault = FaultSpec(host, phase, action, delay=delay)
        if action == Action.REPLY:
            fault.reply = self.reply(spec["reply"], (*key, "reply"))
        elif action == Action.ACCEPT_THEN_DROP and phase != Phase.END_OF_DATA:
            raise self.error((*key, "accept_then_drop"), 'only at phase = "end-of-data"')
        for flag in ("disconnect", "accept_then_drop"):
            if flag in spec:
                self.boolean(spec[flag], (*key, flag))
        fault.name = self.string(spec["name"], (*key, "name")) if "name" in spec else ""
        self.fault_matches(spec, key, fault)
        self.fault_selection(spec, key, fault)
        return fault

    def fault_matches(self, spec: dict[str, Any], key: Key, fault: FaultSpec) -> None:
        for what in ("sender", "recipient"):
            if what in spec:
                setattr(fault, what, self.string(spec[what], (*key, what), empty=True).lower())
        for what in ("min_size", "max_size"):
            if what in spec:
                setattr(fault, what, self.size(spec[what], (*key, what), 0))
        if fault.recipient is not None and fault.phase not in (Phase.RCPT,):
            raise self.error((*key, "recipient"), 'only at phase = "rcpt"')
        if fault.sender is not None and fault.phase not in (Phase.MAIL, Phase.RCPT, Phase.END_OF_DATA):
            raise self.error((*key, "sender"), 'only at phase = "mail", "rcpt" or "end-of-data"')
        if (fault.min_size, fault.max_size) != (None, None) and fault.phase != Phase.END_OF_DATA:
            raise self.error(key, 'min_size and max_size only at phase = "end-of-data"')

    def fault_selection(self, spec: dict[str, Any], key: Key, fault: FaultSpec) -> None:
        for what in ("times", "nth", "every"):
            if what in spec:
                setattr(fault, what, self.integer(spec[what], (*key, what), 1))
        if "rate" in spec:
            m = _RATE.fullmatch(self.string(spec["rate"], (*key, "rate")).strip())
            if m is None:
                raise self.error((*key, "rate"), f'{_show(spec["rate"])} is not a rate such as "10/m"')
            seconds = {"s": 1, "m": 60, "h": 3600}[m.group(2)[0].lower()]
            fault.rate = (int(m.group(1)), float(seconds))
        for what in ("after", "until"):
            if what in spec:
                setattr(fault, what, self.duration(spec[what], (*key, what), zero=True))
        if fault.after is not None and fault.until is not None and fault.until <= fault.after:
            raise self.error((*key, "until"), 'must come after "after"')
        if "probability" in spec:
            p = float(self.check(spec["probability"], (*key, "probability"), (int, float), "a number"))
            if not 0 < p <= 1:
                raise self.error(
                    (*key, "probability"), f"{_show(spec['probability'])}: must be above 0, at most 1"
                )
            fault.probability = p
        if "seed" in spec:
            if fault.probability is None:
                raise self.error((*key, "seed"), 'only with "probability"')
            fault.seed = self.integer(spec["seed"], (*key, "seed"), 0)

    # -- small values -----------------------------------------------------------

    def short_duration(self, value: Any, key: Key, *, zero: bool = False) -> float:
        """A duration as the file's, or milliseconds ("80ms"): latencies are short."""
        if isinstance(value, str) and _MILLISECONDS.fullmatch(value.strip()):
            seconds = float(_MILLISECONDS.fullmatch(value.strip()).group(1)) / 1000
            if seconds == 0 and not zero:
                raise self.error(key, f"{_show(value)}: must be more than 0 seconds")
            return seconds
        return self.duration(value, key, zero=zero)

    def choice(self, value: Any, key: Key, kind: type[StrEnum]) -> Any:
        text = self.string(value, key).strip().lower()
        names = [str(k) for k in kind]
        if text not in names:
            listed = ", ".join(f'"{n}"' for n in names)
            raise self.error(key, f"{_show(value)} is not one of {listed}")
        return kind(text)

    def reply(self, value: Any, key: Key) -> Reply:
        text = self.string(value, key).strip()
        m = _REPLY.fullmatch(text)
        if m is None or m.group(1)[0] == "2":
            raise self.error(
                key, f'{_show(value)} is not a reply such as "452 4.2.2 Mailbox full" (4xx or 5xx)'
            )
        code, enhanced, words = int(m.group(1)), m.group(2), (m.group(3) or "").strip()
        try:
            return Reply(code, (words or "Injected by the lab",), enhanced or f"{code // 100}.0.0")
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def http(self, value: Any, key: Key) -> str:
        text = self.string(value, key)
        self.server_endpoint(text, key)
        return text
