"""Command-line options of ``twistd smtppeer`` (``usage.Options``).

Every option is a key of the configuration file spelt for the command line.
The options given are laid over the file's TOML document (an empty one
without ``--config``) and the result is checked by ``configfile`` alone.  So
each rule lives in one place, and an option cannot disagree with the file key
it stands for about what is valid: ``--dns ::1`` is ``dns = "::1"``,
``--queue-lifetime 5d`` is ``queue_lifetime = "5d"``.  Only the option syntax
itself (``DOMAIN=VALUE``) is checked here.

An error names the option and says what the file would say::

    --dns "x": give an IP address and optional port (HOST[:PORT])

Under ``twistd`` a broken configuration (a file or an option) prints that one
line, not twistd's usage text, and exits with status 2, as ``smtppeer
check-config`` does.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from twisted.python import usage

from smtppeer.engine import Limits

from .config import DEFAULT_LISTEN, Config, Listener
from .configfile import ConfigError, format_duration, format_size, parse_config, read_document
from .configfile.errors import Key, show_value

EXIT_CONFIG = 2  # as smtppeer check-config

# Options that stand for one key of the document.
_KEYS: dict[str, Key] = {
    "hostname": ("hostname",),
    "data-dir": ("data_dir",),
    "dns": ("dns",),
    "metrics": ("metrics",),
    "max-message-size": ("limits", "message_size"),
    "max-recipients": ("limits", "recipients"),
    "max-connections": ("limits", "max_connections"),
    "max-connections-per-client": ("limits", "max_connections_per_client"),
    "queue-minfree": ("limits", "queue_minfree"),
    "max-received": ("limits", "max_received"),
    "queue-lifetime": ("limits", "queue_lifetime"),
    "retry-interval": ("limits", "retry_interval"),
}
# Options whose text may be a number, which the file would have as an integer or a float.
_NUMERIC = {
    "max-message-size",
    "max-recipients",
    "max-connections",
    "max-connections-per-client",
    "queue-minfree",
    "max-received",
    "queue-lifetime",
    "retry-interval",
    "processes",
}
_INTEGER = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")

# The model's defaults, shown in --help (the options themselves default to "not given").
_CONFIG = Config(hostname="")
_LIMITS = Limits()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an SMTP peer: mail for its local domains goes into Maildirs, mail for routed "
        "domains is relayed (with retries and bounces) or held for a polling peer. "
        "With no options it listens on " + DEFAULT_LISTEN + " and stores mail under "
        + _CONFIG.data_dir + ". Durations are seconds or 30s, 5m, 1h, 5d; sizes octets or 512K, 50M, 1G."
    )  # fmt: skip
    optParameters = [
        ["hostname", None, None, "Name to greet with and to write in Received: headers [default: this host]"],
        ["data-dir", None, None, f"Directory for Maildirs and the spool [default: {_CONFIG.data_dir}]"],
        [
            "max-message-size",
            None,
            None,
            f"Largest message accepted (ESMTP SIZE) [default: {format_size(_LIMITS.message_size)}]",
        ],
        [
            "max-recipients",
            None,
            None,
            f"Most recipients per message (>= 100) [default: {_LIMITS.recipients}]",
        ],
        [
            "max-connections",
            None,
            None,
            f"Concurrent sessions per listener; more get 421 4.7.0 [default: {_CONFIG.max_connections}]",
        ],
        [
            "max-connections-per-client",
            None,
            None,
            "Concurrent sessions per listener from one client address, 0 for no limit "
            f"[default: {_CONFIG.max_connections_per_client}]",
        ],
        [
            "queue-minfree",
            None,
            None,
            "Free space the data directory must keep, or MAIL gets 452 4.3.1; 0: not checked "
            f"[default: {_CONFIG.queue_minfree}]",
        ],
        [
            "processes",
            None,
            None,
            f"Processes accepting on each --listen (receive only) [default: {Listener.processes}]",
        ],
        [
            "max-received",
            None,
            None,
            f"Refuse a message with more Received: headers (a loop) [default: {_CONFIG.max_received}]",
        ],
        [
            "queue-lifetime",
            None,
            None,
            f"How long to retry before mail is returned [default: {format_duration(_CONFIG.queue_lifetime)}]",
        ],
        [
            "retry-interval",
            None,
            None,
            f"First retry after this long, doubling up to retry_interval_max (1h) "
            f"[default: {format_duration(_CONFIG.retry_interval)}]",
        ],
        ["dns", None, None, "DNS server for MX routes: IP, IP:PORT or [IPv6]:PORT [default: the system's]"],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this server endpoint, such as "
            "tcp:9101:interface=127.0.0.1 [default: none]",
        ],
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
        self["route"] = []
        self["hold"] = []
        self["relay-from"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted server endpoint such as tcp:25 (repeatable) [default: tcp:2525:interface=127.0.0.1]"""  # noqa: E501
        self["listen"].append(endpoint)

    def opt_route(self, value: str) -> None:
        """DOMAIN=ENDPOINT or DOMAIN=mx: relay mail for DOMAIN (.DOMAIN: its subdomains; *: anything,
        for trusted clients only) to a client endpoint such as tcp:host=smarthost:port=25 (repeatable)"""
        self["route"].append((*_pair("--route", value), value))

    def opt_hold(self, value: str) -> None:
        """DOMAIN=PEER: keep mail for DOMAIN in PEER's hold queue until it polls (repeatable)"""
        self["hold"].append((*_pair("--hold", value), value))

    def opt_relay_from(self, network: str) -> None:
        """A client network (CIDR) allowed to relay through the * route (repeatable)"""
        self["relay-from"].append(network)

    def opt_domain(self, domain: str) -> None:
        """Accept mail for this domain (repeatable) [default: the hostname and localhost]"""
        self["domain"].append(domain)

    def parseOptions(self, options: list[str] | None = None) -> None:  # noqa: N802 -- usage.Options' name
        """A broken configuration ends the program with its one line (status 2), as
        ``check-config`` does, instead of twistd's whole usage text."""
        try:
            super().parseOptions(options)
        except ConfigError as e:
            print(e, file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        self.config: Config = self.to_config()

    def to_config(self) -> Config:
        """The file's document (if any) with the options given laid over it, checked by ``configfile``.

        Raises ``ConfigError``: for a key an option set, an ``OptionError`` naming that option.
        """
        layer = _Layer(read_document(self["config"]) if self["config"] else {})
        for option, key in _KEYS.items():
            if self[option] is not None:
                layer.put(key, option, _number(self[option]) if option in _NUMERIC else self[option])
        self._lay_listeners(layer)
        data = layer.data
        if self["domain"]:
            data["domains"] = {domain: {} for domain in self["domain"]}
            for domain in self["domain"]:
                layer.note(("domains", domain), "domain", domain)
        for domain, target, text in self["route"]:
            layer.put_domain("routes", domain, target, "route", text)
        for domain, peer, text in self["hold"]:
            layer.put_domain("holds", domain, peer, "hold", text)
            layer.hold_peer(peer, domain, text)
        if self["relay-from"]:
            data["relay_from"] = list(self["relay-from"])
            for i, network in enumerate(self["relay-from"]):
                layer.note(("relay_from", i), "relay-from", network)
        self._lay_tls(layer)
        if self["ignore-source-routes"]:
            data["honour_source_routes"] = False
        try:
            return parse_config(data, self["config"] or "command line")
        except ConfigError as e:
            raise layer.blame(e) from None

    def _lay_listeners(self, layer: _Layer) -> None:
        data = layer.data
        if self["listen"]:
            data["listen"] = list(self["listen"])
            for i, endpoint in enumerate(self["listen"]):
                layer.note(("listen", i), "listen", endpoint)
        if self["processes"] is not None:  # for each listener given as an endpoint alone
            listen = data.get("listen", [DEFAULT_LISTEN])
            if isinstance(listen, list):
                processes = _number(self["processes"])
                data["listen"] = [
                    {"endpoint": item, "processes": processes} if isinstance(item, str) else item
                    for item in listen
                ]
                for i, item in enumerate(listen):
                    if isinstance(item, str):
                        layer.note(("listen", i, "processes"), "processes", processes)

    def _lay_tls(self, layer: _Layer) -> None:
        given = [(name, self[name]) for name in ("certificate", "key") if self[name] is not None]
        if not given:
            return
        if "tls" not in layer.data:  # the table is the options' own: its errors are theirs
            layer.data["tls"] = {}
            layer.note(("tls",), *given[0])
        for name, path in given:
            layer.put(("tls", name), name, path)


class OptionError(ConfigError):
    """A ``ConfigError`` about a key that a command-line option set: it names the option."""

    def __init__(self, option: str, value: Any, message: str, path: Key) -> None:
        super().__init__("--" + option, None, message, path)
        self.option = option
        self.value = value

    def __str__(self) -> str:
        message = self.message
        if message.startswith("expected ") and ", got " in message:
            message = message.split(", got ", 1)[0]  # on the command line everything is text
        shown = show_value(self.value)
        text = (
            f"--{self.option} {message}"
            if message.startswith(shown)
            else f"--{self.option} {shown}: {message}"
        )
        return " ".join(text.split())


class _Layer:
    """The document with the options laid over it, and which option put what where."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.origins: list[tuple[Key, str, Any]] = []

    def note(self, key: Key, option: str, value: Any) -> None:
        self.origins.append((key, option, value))

    def put(self, key: Key, option: str, value: Any) -> None:
        table = self.data
        for part in key[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                return  # the file's own error about that key is the one to show
        table[key[-1]] = value
        self.note(key, option, value)

    def put_domain(self, section: str, domain: str, value: str, option: str, text: str) -> None:
        """``routes``/``holds``: the option's entry replaces the file's for the same domain."""
        table = self.data.setdefault(section, {})
        if not isinstance(table, dict):
            return
        for name in [name for name in table if _same_domain(name, domain)]:
            del table[name]
        table[domain] = value
        self.note((section, domain), option, text)

    def hold_peer(self, name: str, domain: str, text: str) -> None:
        """On the command line a hold names its peer: the peer is made if the file has none."""
        peers = self.data.setdefault("peers", {})
        if not isinstance(peers, dict):
            return
        if name not in peers:
            peers[name] = {}
            self.note(("peers", name), "hold", text)
        domains = peers[name].setdefault("domains", []) if isinstance(peers[name], dict) else None
        if isinstance(domains, list):
            domains.append(domain)
            self.note(("peers", name, "domains", len(domains) - 1), "hold", text)

    def blame(self, error: ConfigError) -> ConfigError:
        """The error as the option that set its key would name it (the most precise such
        option), or as it is when the key came from the file."""
        matches = [o for o in self.origins if error.path[: len(o[0])] == o[0]]
        if not matches:
            return error
        key, option, value = max(matches, key=lambda o: len(o[0]))
        return OptionError(option, value, error.message, error.path)


def _number(text: str) -> Any:
    """An option's text as the file would hold the same value: ``100`` an integer, ``1.5``
    a float; anything else (``50M``, ``5d``, ``abc``) stays text for the file's checks."""
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _same_domain(a: str, b: str) -> bool:
    """Whether two keys name one domain (to let an option replace the file's entry)."""
    return a.strip().lower().rstrip(".") == b.strip().lower().rstrip(".")


def _pair(option: str, value: str) -> tuple[str, str]:
    """The option syntax ``DOMAIN=VALUE``; what each side may be is the file's to check."""
    key, eq, target = value.partition("=")
    if not eq or not key.strip() or not target.strip():
        raise usage.UsageError(f"{option} {value!r}: expected DOMAIN=VALUE")
    return key, target
