"""Command-line options of ``twistd smtppeer`` (``usage.Options``)."""

from __future__ import annotations

import ipaddress
import socket
import sys

from twisted.internet.endpoints import _parseServer, clientFromString
from twisted.python import usage

from smtppeer.engine import Limits

from .config import DEFAULT_LISTEN, Config
from .configfile import ConfigError, parse_config, read_document


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an SMTP peer: mail for its local domains goes into Maildirs, mail for routed "
        "domains is relayed (with retries and bounces) or held for a polling peer. "
        "With no options it listens on " + DEFAULT_LISTEN + " and stores mail under ./smtppeer-data."
    )
    optParameters = [
        ["hostname", None, None, "Name to greet with and to write in Received: headers [default: this host]"],
        ["data-dir", None, "./smtppeer-data", "Directory for Maildirs (mail/<domain>/<user>/)"],
        ["max-message-size", None, Limits.message_size, "Largest message accepted, in octets (SIZE)", int],
        ["max-recipients", None, Limits.recipients, "Most recipients per message (RFC 5321: >= 100)", int],
        ["max-connections", None, 200, "Concurrent sessions per listener; more get 421 4.7.0", int],
        ["processes", None, 1, "Processes accepting on each --listen (receive only: no TURN/ETRN)", int],
        ["max-received", None, 100, "Refuse a message with more Received: headers (554 5.4.6, a loop)", int],
        ["queue-lifetime", None, 5 * 86400.0, "Seconds before undeliverable mail is returned", float],
        ["retry-interval", None, 60.0, "First retry after this many seconds, doubling up to an hour", float],
        ["dns", None, None, "DNS server for MX routes, HOST or HOST:PORT [default: system resolver]"],
        ["certificate", None, None, "The server certificate for STARTTLS (PEM, with its chain); needs --key"],
        ["key", None, None, "The certificate's private key (PEM, not encrypted); needs --certificate"],
        ["config", "c", None, "A TOML configuration file (see examples/); options given here override it"],
    ]
    optFlags = [
        ["ignore-source-routes", None, "Route by the final mailbox, ignoring <@A,@B:u@c> (RFC 5321)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["domain"] = []
        self["route"] = {}
        self["hold"] = {}
        self["relay-from"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted server endpoint such as tcp:25 (repeatable) [default: tcp:2525:interface=127.0.0.1]"""  # noqa: E501
        try:
            _parseServer(endpoint, None)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {endpoint!r}: not a server endpoint description ({e})") from e
        self["listen"].append(endpoint)

    def opt_route(self, value: str) -> None:
        """DOMAIN=ENDPOINT or DOMAIN=mx: relay mail for DOMAIN (.DOMAIN: its subdomains; *: anything,
        for trusted clients only) to a client endpoint such as tcp:host=smarthost:port=25 (repeatable)"""
        domain, target = _pair("--route", value)
        if target.lower() == "mx":
            target = "mx"
        elif not target.startswith("peer:"):  # a named peer is checked with the configuration
            try:
                from twisted.internet import reactor  # noqa: PLC0415

                clientFromString(reactor, target)
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--route {value!r}: not a client endpoint ({e})") from e
        self["route"][domain] = target

    def opt_hold(self, value: str) -> None:
        """DOMAIN=PEER: keep mail for DOMAIN in PEER's hold queue until it polls (repeatable)"""
        domain, peer = _pair("--hold", value)
        self["hold"][domain] = peer

    def opt_relay_from(self, network: str) -> None:
        """A client network (CIDR) allowed to relay through the * route (repeatable)"""
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            raise usage.UsageError(f"--relay-from {network!r}: {e}") from e
        self["relay-from"].append(network)

    def opt_domain(self, domain: str) -> None:
        """Accept mail for this domain (repeatable) [default: the hostname and localhost]"""
        domain = domain.strip().lower().rstrip(".")
        if not domain:
            raise usage.UsageError("--domain needs a domain name")
        self["domain"].append(domain)

    def parseOptions(self, options=None) -> None:
        """Remember which options were given, so that only those override ``--config``."""
        args = sys.argv[1:] if options is None else options
        self.given = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}
        if "-c" in args:
            self.given.add("config")
        super().parseOptions(options)

    def limits(self) -> Limits:
        return Limits(message_size=self["max-message-size"], recipients=self["max-recipients"])

    def postOptions(self) -> None:
        if self["max-message-size"] < 1024:
            raise usage.UsageError("--max-message-size must be at least 1024 octets")
        if self["dns"]:
            text = self["dns"]
            host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
            try:
                ipaddress.ip_address(host)
                self["dns"] = (host, int(port or 53))
            except ValueError as e:
                raise usage.UsageError(f"--dns {text!r}: give an IP address and optional port") from e
        if bool(self["certificate"]) != bool(self["key"]):
            raise usage.UsageError("--certificate and --key go together (the [tls] of a configuration file)")
        if self["max-connections"] < 1:
            raise usage.UsageError("--max-connections must be at least 1")
        if self["max-recipients"] < 100:
            raise usage.UsageError("--max-recipients must be at least 100 (RFC 5321 §4.5.3.1.8)")
        if not self["hostname"]:
            self["hostname"] = socket.gethostname()
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self["domain"]:
            self["domain"] = list(dict.fromkeys([self["hostname"].lower(), "localhost"]))
        try:
            self.config: Config = self.to_config()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def to_config(self) -> Config:
        """The file's settings (if any) with the options given on the command line laid over them.

        Both go through the same checks (``configfile``), so an option and the
        file key it overrides can never disagree about what is valid.
        """
        given = getattr(self, "given", set())
        data = read_document(self["config"]) if self["config"] else {}
        if "hostname" in given:
            data["hostname"] = self["hostname"]
        if "data-dir" in given:
            data["data_dir"] = self["data-dir"]
        if "listen" in given:
            data["listen"] = list(self["listen"])
        if "processes" in given:  # for every listener that may have them
            data["listen"] = [
                {"endpoint": item, "processes": self["processes"]} if isinstance(item, str) else item
                for item in data.get("listen", [DEFAULT_LISTEN])
            ]
        if "domain" in given:
            data["domains"] = {d: {} for d in self["domain"]}
        if "route" in given:
            data["routes"] = {**data.get("routes", {}), **self["route"]}
        if "hold" in given:
            data["holds"] = {**data.get("holds", {}), **self["hold"]}
            peers = data.setdefault("peers", {})
            for domain, name in self["hold"].items():  # on the command line a hold names its peer
                peers.setdefault(name, {}).setdefault("domains", []).append(domain)
        if "relay-from" in given:
            data["relay_from"] = list(self["relay-from"])
        if "certificate" in given or "key" in given:
            data["tls"] = {**data.get("tls", {}), "certificate": self["certificate"], "key": self["key"]}
        if "dns" in given:
            data["dns"] = "{}:{}".format(*self["dns"])
        if "ignore-source-routes" in given:
            data["honour_source_routes"] = False
        limits = {
            "max-message-size": "message_size",
            "max-recipients": "recipients",
            "max-connections": "max_connections",
            "max-received": "max_received",
            "queue-lifetime": "queue_lifetime",
            "retry-interval": "retry_interval",
        }
        for option, key in limits.items():
            if option in given:
                data.setdefault("limits", {})[key] = self[option]
        return parse_config(data, self["config"] or "command line")


def _pair(option: str, value: str) -> tuple[str, str]:
    key, eq, target = value.partition("=")
    key = key.strip().lower().rstrip(".")
    if not eq or not key or not target:
        raise usage.UsageError(f"{option} {value!r}: expected DOMAIN=VALUE")
    return key, target
