"""Command-line options of ``twistd smtppeer`` (``usage.Options``)."""

from __future__ import annotations

import socket

from twisted.internet.endpoints import _parseServer
from twisted.python import usage

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
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["domain"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on a Twisted server endpoint, e.g. tcp:25 or tcp6:2525:interface=\\:\\:1
        (repeatable) [default: tcp:2525:interface=127.0.0.1]"""
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

    def postOptions(self) -> None:
        if not self["hostname"]:
            self["hostname"] = socket.gethostname()
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self["domain"]:
            self["domain"] = list(dict.fromkeys([self["hostname"].lower(), "localhost"]))
