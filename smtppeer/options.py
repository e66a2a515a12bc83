"""Command-line options of ``twistd smtppeer`` (``usage.Options``)."""

from __future__ import annotations

import socket

from twisted.internet.endpoints import _parseServer
from twisted.python import usage

from .engine import Limits

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run an SMTP peer that accepts mail for its local domains into Maildirs. "
        "With no options it listens on " + DEFAULT_LISTEN + " and stores mail under ./smtppeer-data."
    )
    optParameters = [
        ["hostname", None, None, "Name to greet with and to write in Received: headers [default: this host]"],
        ["data-dir", None, "./smtppeer-data", "Directory for Maildirs (mail/<domain>/<user>/)"],
        ["max-message-size", None, Limits.message_size, "Largest message accepted, in octets (SIZE)", int],
        ["max-recipients", None, Limits.recipients, "Most recipients per message (RFC 5321: >= 100)", int],
        ["max-connections", None, 200, "Concurrent sessions per listener; more get 421 4.7.0", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["domain"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted server endpoint such as tcp:25 (repeatable) [default: tcp:2525:interface=127.0.0.1]"""  # noqa: E501
        try:
            _parseServer(endpoint, None)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {endpoint!r}: not a server endpoint description ({e})") from e
        self["listen"].append(endpoint)

    def opt_domain(self, domain: str) -> None:
        """Accept mail for this domain (repeatable) [default: the hostname and localhost]"""
        domain = domain.strip().lower().rstrip(".")
        if not domain:
            raise usage.UsageError("--domain needs a domain name")
        self["domain"].append(domain)

    def limits(self) -> Limits:
        return Limits(message_size=self["max-message-size"], recipients=self["max-recipients"])

    def postOptions(self) -> None:
        if self["max-message-size"] < 1024:
            raise usage.UsageError("--max-message-size must be at least 1024 octets")
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
