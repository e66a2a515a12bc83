"""The whole document: the top-level keys, each section read by its own
module, and the entry points (``load_config``, ``loads_config``,
``parse_config``, ``read_document``)."""

from __future__ import annotations

import os
import re
import socket
import tomllib
from typing import Any

from ..config import Config, Mailbox
from .domains import Domains
from .errors import ConfigError, _show
from .limits import LimitsSection
from .listeners import Listeners
from .peers import Peers
from .polls import Polls
from .values import _DOMAIN

# Keys an administrator might carry over from the command line, and where they live in the file.
_MOVED = {
    "listener": "listen",
    "domain": "domains",
    "route": "routes",
    "hold": "holds",
    "peer": "peers",
    "poll": "polls",
    "user": "users",
    "certificate": "tls.certificate",
    "key": "tls.key",
    "ignore_source_routes": "honour_source_routes (= false)",
    "max_message_size": "limits.message_size",
    "max_recipients": "limits.recipients",
    "max_connections": "limits.max_connections",
    "max_received": "limits.max_received",
    "queue_lifetime": "limits.queue_lifetime",
    "retry_interval": "limits.retry_interval",
}

_SYNTAX = re.compile(r"(?s)(.*?)\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a TOML configuration file."""
    return parse_config(read_document(path), os.fspath(path))


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML document as a dict (command-line options are laid over it before checking)."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(source, None, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(source, None, "is a directory, not a configuration file") from None
    except OSError as e:
        raise ConfigError(source, None, f"cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(source, None, f"not UTF-8 text (bad byte at offset {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(source, e) from None
    return data


def loads_document(text: str, source: str) -> dict[str, Any]:
    """TOML text as a document, with ``read_document``'s one-line syntax errors."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(source, e) from None


def loads_config(text: str, source: str = "<string>") -> Config:
    """Check a configuration given as TOML text; ``source`` names it in errors."""
    return parse_config(loads_document(text, source), source)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Check an already parsed TOML document and build the ``Config``."""
    return Reader(source).config(data)


def _syntax_error(source: str, e: tomllib.TOMLDecodeError) -> ConfigError:
    text = str(e)
    m = _SYNTAX.match(text)
    if m is None:
        return ConfigError(source, None, f"TOML syntax error: {text}")
    message, line, column = m.groups()
    where = f"line {line}, column {column}" if line else "end of file"
    return ConfigError(source, where, f"TOML syntax error: {message}")


class Reader(Listeners, Domains, Peers, Polls, LimitsSection):
    """Every section's checks, and the order in which the document is read."""

    TOP = (
        "hostname",
        "data_dir",
        "listen",
        "domains",
        "routes",
        "holds",
        "relay_from",
        "dns",
        "honour_source_routes",
        "accept_any_domain",
        "json_log",
        "metrics",
        "tls",
        "peers",
        "users",
        "polls",
        "limits",
    )

    def config(self, data: dict[str, Any]) -> Config:
        self.table(data, (), self.TOP, _MOVED)
        if "hostname" in data:
            hostname = self.string(data["hostname"], ("hostname",)).strip()
            if not _DOMAIN.fullmatch(hostname.lower().rstrip(".")):
                raise self.error(("hostname",), f"{_show(data['hostname'])} is not a host name")
        else:
            hostname = socket.gethostname()
        config = Config(hostname=hostname)
        if "data_dir" in data:
            config.data_dir = os.path.expanduser(self.string(data["data_dir"], ("data_dir",)))
        if "tls" in data:
            config.tls = self.tls(data["tls"])
        config.listeners = self.listeners(data.get("listen"), config)
        config.peers = self.peers(data.get("peers", {}))
        config.users = self.users(data.get("users", {}), config)
        if "domains" in data:
            config.domains = self.domains(data["domains"])
        else:
            names = dict.fromkeys([hostname.lower().rstrip("."), "localhost"])
            config.domains = {name: Mailbox() for name in names}
        config.holds = self.holds(data.get("holds", {}), config)
        config.routes = self.routes(data.get("routes", {}), config)
        self.check_peer_domains(config)
        config.relay_from = self.array(data.get("relay_from", []), ("relay_from",), self.network)
        if "dns" in data:
            config.dns = self.dns(data["dns"], ("dns",))
        if "honour_source_routes" in data:
            config.honour_source_routes = self.boolean(
                data["honour_source_routes"], ("honour_source_routes",)
            )
        if "json_log" in data:
            config.json_log = self.boolean(data["json_log"], ("json_log",))
        if "accept_any_domain" in data:
            config.accept_any_domain = self.boolean(data["accept_any_domain"], ("accept_any_domain",))
        if "metrics" in data:
            self.server_endpoint(data["metrics"], ("metrics",))
            config.metrics = data["metrics"]
        config.polls = self.polls(data.get("polls", []), config)
        self.odmr_routes(config)
        self.on_poll_peers(config)
        self.limits(data.get("limits", {}), config)
        return config


_MOVED.update({name: f"limits.{name}" for name in Reader.LIMITS})
