"""The TOML configuration file: ``load_config(path) -> Config``.

Every mistake raises ``ConfigError``, whose ``str()`` is one line naming the
file, the key and what is wrong::

    smtppeer.toml: routes."example.org": "tcp:nohost" is not a client endpoint description (...)

Key paths are written the way TOML spells them: dotted keys, quoted when they
are not bare keys, and ``[N]`` (counting from 0) for the N-th element of an
array such as ``[[listen]]``.

The schema (``examples/`` has annotated files for each use)::

    hostname = "mail.example.org"       # default: this machine's host name
    data_dir = "./smtppeer-data"        # relative to the working directory, as on the command line
    relay_from = ["127.0.0.0/8"]        # client networks that may use the "*" route
    dns = "127.0.0.1:53"                # HOST[:PORT] for MX routes; default: the system resolver
    honour_source_routes = true         # false: route <@a,@b:u@c> by u@c (RFC 5321)
    json_log = false

    [[listen]]                          # repeatable; none given: tcp:2525:interface=127.0.0.1
    endpoint = "tcp:25"                 # a Twisted server endpoint description
    mode = "smtp"                       # or "odmr"
    turn = false                        # may a configured peer say TURN here?
    # (``listen = ["tcp:25", ...]`` is short for smtp listeners without TURN)

    [domains."example.org"]             # a local domain; none given: the hostname and localhost
    catch_all = false                   # default: true when no users are listed
    users = ["alice", "bob"]
    aliases = { postmaster = "alice", info = ["alice", "bob@example.net"] }

    [routes]                            # DOMAIN, .DOMAIN (its subdomains) or * (anything, trusted clients)
    "partner.example" = "tcp:host=10.0.0.5:port=25"   # a Twisted client endpoint
    ".example.net" = "mx"               # the domain's MX hosts
    "*" = "peer:provider"               # through a named peer (it needs an endpoint)

    [holds]                             # DOMAIN or .DOMAIN -> the peer whose hold queue keeps its mail
    "dialup.example" = "dialup"

    [peers.dialup]                      # a host this one exchanges mail with
    domains = ["dialup.example"]
    addresses = ["192.0.2.10"]          # how it is recognised when it calls in (until AUTH)
    endpoint = "tcp:host=dialup.example:port=25"      # how to reach it (polls, routes)
    username = "dialup"                 # with password: credentials for AUTH
    password = "..."

    [[polls]]                           # repeatable
    peer = "provider"                   # a peer with an endpoint
    interval = "5m"                     # seconds, or "30s", "5m", "1h", "1d", "1h30m"
    jitter = 0.1                        # +/- this fraction of the interval
    method = "turn"
    max_backoff = "1h"                  # after failures, wait at most this long

    [limits]
    message_size = "50M"                # octets, or with a K, M or G suffix (binary)
    recipients = 1000                   # at least 100 (RFC 5321)
    command_line = 512                  # at least 512
    text_line = 1000                    # at least 1000
    bad_commands = 20
    command_timeout = "5m"
    data_timeout = "10m"
    reply_timeout = "5m"
    data_block_timeout = "3m"
    data_end_timeout = "10m"
    max_connections = 200
    max_received = 100
    queue_lifetime = "5d"
    retry_interval = "1m"

Defaults are those of ``twistd smtppeer`` with no options.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable
from typing import Any

from .config import DEFAULT_LISTEN, ODMR, SMTP, Config, Listener, Mailbox, Peer, Poll
from .engine import Limits

__all__ = ["ConfigError", "load_config", "loads_config", "parse_config"]

MODES = (SMTP, ODMR)
POLL_METHODS = ("turn",)  # "atrn" and "etrn" come with the trust issue

Key = tuple[str | int, ...]

# Keys an administrator might carry over from the command line, and where they live in the file.
_MOVED = {
    "listener": "listen",
    "domain": "domains",
    "route": "routes",
    "hold": "holds",
    "peer": "peers",
    "poll": "polls",
    "ignore_source_routes": "honour_source_routes (= false)",
    "max_message_size": "limits.message_size",
    "max_recipients": "limits.recipients",
    "max_connections": "limits.max_connections",
    "max_received": "limits.max_received",
    "queue_lifetime": "limits.queue_lifetime",
    "retry_interval": "limits.retry_interval",
}

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"(\d+)\s*(?:([KMG])(?:i?B)?|B)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_SYNTAX = re.compile(r"(?s)(.*?)\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


class ConfigError(Exception):
    """A configuration file that cannot be used; ``str()`` is one line."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message

    def __str__(self) -> str:
        text = f"{self.source}: {self.key}: {self.message}" if self.key else f"{self.source}: {self.message}"
        return re.sub(r"\s*[\r\n]+\s*", " ", text)  # one line, whatever a message carried


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


def loads_config(text: str, source: str = "<string>") -> Config:
    """Check a configuration given as TOML text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(source, e) from None
    return parse_config(data, source)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Check an already parsed TOML document and build the ``Config``."""
    return _Reader(source).config(data)


def _syntax_error(source: str, e: tomllib.TOMLDecodeError) -> ConfigError:
    text = str(e)
    m = _SYNTAX.match(text)
    if m is None:
        return ConfigError(source, None, f"TOML syntax error: {text}")
    message, line, column = m.groups()
    where = f"line {line}, column {column}" if line else "end of file"
    return ConfigError(source, where, f"TOML syntax error: {message}")


def format_key(key: Key) -> str:
    """``("routes", "example.org")`` -> ``routes."example.org"``; ints are array indices."""
    out = ""
    for part in key:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


def _show(value: Any) -> str:
    """A value as TOML would spell it, short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list):
        return "an array"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:76] + '..."'


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _got(value: Any) -> str:
    """What a value of the wrong type is: ``a string ("x")``, ``an array``."""
    if isinstance(value, dict | list):
        return _type_name(value)
    return f"{_type_name(value)} ({_show(value)})"


def _suggest(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.7)
    if not close:
        close = difflib.get_close_matches(word.lower().replace("-", "_"), sorted(choices), n=1, cutoff=0.7)
    return f' (did you mean "{close[0]}"?)' if close else ""


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: Key, message: str) -> ConfigError:
        return ConfigError(self.source, format_key(key) or None, message)

    # -- shapes and types -------------------------------------------------

    def table(self, value: Any, key: Key, allowed: tuple[str, ...], moved: dict[str, str] | None = None):
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_got(value)}")
        for name in value:
            if name not in allowed:
                hint = (moved or {}).get(name.replace("-", "_"))
                if hint:
                    raise self.error((*key, name), f'unknown key (in this file it is "{hint}")')
                raise self.error((*key, name), "unknown key" + _suggest(name, allowed))
        return value

    def check(self, value: Any, key: Key, kinds: type | tuple[type, ...], what: str) -> Any:
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            raise self.error(key, f"expected {what}, got {_got(value)}")
        return value

    def string(self, value: Any, key: Key, *, empty: bool = False) -> str:
        self.check(value, key, str, "a string")
        if not empty and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, value: Any, key: Key) -> bool:
        return self.check(value, key, bool, "true or false")

    def integer(self, value: Any, key: Key, minimum: int, why: str = "") -> int:
        self.check(value, key, int, "an integer")
        if value < minimum:
            raise self.error(key, f"{value} is too small: at least {minimum}{why}")
        return value

    def array(self, value: Any, key: Key, item: Callable[[Any, Key], Any]) -> list:
        self.check(value, key, list, "an array")
        return [item(v, (*key, i)) for i, v in enumerate(value)]

    def strings(self, value: Any, key: Key) -> list[str]:
        return self.array(value, key, lambda v, k: self.string(v, k))

    def duration(self, value: Any, key: Key, *, zero: bool = False) -> float:
        """Seconds as a number, or a string such as "30s", "5m", "1h", "1d", "1h30m"."""
        expected = 'a duration (seconds, or a string such as "30s", "5m", "1h", "1d")'
        self.check(value, key, (int, float, str), expected)
        if isinstance(value, str):
            text = value.strip().replace(" ", "")
            parts = _DURATION_PART.findall(text)
            if not text or "".join(n + u for n, u in parts) != text:
                try:
                    seconds = float(text)
                except ValueError:
                    raise self.error(key, f"{_show(value)} is not {expected}") from None
            else:
                seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
        else:
            seconds = float(value)
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise self.error(key, f"{_show(value)} is not a finite duration")
        if seconds < 0 or (seconds == 0 and not zero):
            raise self.error(key, f"{_show(value)}: must be more than 0 seconds")
        return seconds

    def size(self, value: Any, key: Key, minimum: int, why: str = "") -> int:
        """Octets as an integer, or a string such as "512K", "50M", "1G" (binary multiples)."""
        expected = 'a size (octets, or a string such as "512K", "50M", "1G")'
        self.check(value, key, (int, str), expected)
        if isinstance(value, str):
            m = _SIZE.fullmatch(value.strip())
            if m is None:
                raise self.error(key, f"{_show(value)} is not {expected}")
            octets = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper() if m.group(2) else None]
        else:
            octets = value
        if octets < minimum:
            raise self.error(key, f"{_show(value)} is too small: at least {minimum} octets{why}")
        return octets

    def domain(self, value: str, key: Key, *, pattern: bool = False, star: bool = False) -> str:
        """A domain name, lower case without a trailing dot; ``pattern``: also ``.DOMAIN``."""
        text = value.strip().lower()
        if star and text == "*":
            return text
        dot = pattern and text.startswith(".")
        body = (text[1:] if dot else text).rstrip(".")
        if not _DOMAIN.fullmatch(body) or len(body) > 253:
            kinds = "a domain name"
            if pattern:
                kinds += ', ".DOMAIN" (its subdomains)'
            if star:
                kinds += ' or "*" (anything else)'
            raise self.error(key, f"{_show(value)} is not {kinds}")
        return "." + body if dot else body

    def local_part(self, value: Any, key: Key) -> str:
        self.string(value, key)
        if "@" in value or any(c.isspace() or ord(c) < 32 for c in value):
            raise self.error(key, f"{_show(value)} is not a local part (no @, spaces or control characters)")
        return value

    def server_endpoint(self, value: Any, key: Key) -> tuple:
        from twisted.internet.endpoints import _parseServer  # noqa: PLC0415

        self.string(value, key)
        try:
            parsed = _parseServer(value, None)
        except Exception as e:  # noqa: BLE001 -- plugins raise anything (a missing key file: OSError)
            raise self.error(
                key, f"{_show(value)} is not a server endpoint description ({_why(e)})"
            ) from None
        kind, args, kwargs = parsed
        kind = kind if isinstance(kind, str) else type(kind).__name__
        return (kind, tuple(map(str, args[:1])), tuple(sorted((k, str(v)) for k, v in kwargs.items())))

    def client_endpoint(self, value: str, key: Key) -> None:
        from twisted.internet import reactor  # noqa: PLC0415  (building an endpoint does no I/O)
        from twisted.internet.endpoints import clientFromString  # noqa: PLC0415

        try:
            clientFromString(reactor, value)
        except Exception as e:  # noqa: BLE001 -- plugins raise anything
            raise self.error(
                key, f"{_show(value)} is not a client endpoint description ({_why(e)})"
            ) from None

    # -- the document -----------------------------------------------------

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
        "json_log",
        "peers",
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
        config.listeners = self.listeners(data.get("listen"))
        config.peers = self.peers(data.get("peers", {}))
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
        config.polls = self.polls(data.get("polls", []), config)
        self.limits(data.get("limits", {}), config)
        return config

    def listeners(self, value: Any) -> list[Listener]:
        if value is None:
            return [Listener(DEFAULT_LISTEN)]
        listeners: list[Listener] = []
        seen: dict[tuple, int] = {}
        for i, item in enumerate(self.check(value, ("listen",), list, "an array of listeners")):
            key: Key = ("listen", i)
            ekey: Key = (*key, "endpoint")
            if isinstance(item, str):  # listen = ["tcp:25"]
                item, ekey = {"endpoint": item}, key
            self.table(item, key, ("endpoint", "mode", "turn"))
            if "endpoint" not in item:
                raise self.error(key, 'missing "endpoint" (a server endpoint description such as "tcp:25")')
            listener = Listener(item["endpoint"])
            parsed = self.server_endpoint(item["endpoint"], ekey)
            if "mode" in item:
                listener.mode = self.string(item["mode"], (*key, "mode")).strip().lower()
                if listener.mode not in MODES:
                    modes = " or ".join(f'"{m}"' for m in MODES)
                    raise self.error((*key, "mode"), f"{_show(item['mode'])} is not a mode: {modes}")
            if "turn" in item:
                listener.turn = self.boolean(item["turn"], (*key, "turn"))
            for other, j in seen.items():
                if _same_address(parsed, other):
                    previous = listeners[j].endpoint
                    also = f" ({_show(previous)})" if previous != listener.endpoint else ""
                    raise self.error(ekey, f"{_show(listener.endpoint)} duplicates listen[{j}]{also}")
            seen[parsed] = i
            listeners.append(listener)
        return listeners

    def domains(self, value: Any) -> dict[str, Mailbox]:
        self.check(value, ("domains",), dict, 'a table of domains ([domains."example.org"])')
        domains: dict[str, Mailbox] = {}
        for name, spec in value.items():
            key: Key = ("domains", name)
            domain = self.domain(name, key)
            if domain in domains:
                raise self.error(key, f"{domain} is given twice")
            domains[domain] = self.mailbox(spec, key)
        return domains

    def mailbox(self, spec: Any, key: Key) -> Mailbox:
        self.table(spec, key, ("catch_all", "users", "aliases"))
        users = self.array(spec.get("users", []), (*key, "users"), self.local_part)
        for i, user in enumerate(users):
            if user in users[:i]:
                raise self.error((*key, "users", i), f"{_show(user)} is listed twice")
        catch_all = self.boolean(spec["catch_all"], (*key, "catch_all")) if "catch_all" in spec else not users
        aliases: dict[str, list[str]] = {}
        raw = self.check(spec.get("aliases", {}), (*key, "aliases"), dict, "a table of aliases")
        for name, targets in raw.items():
            akey: Key = (*key, "aliases", name)
            self.local_part(name, akey)
            if name in users:
                raise self.error(akey, f'"{name}" is also a user; a name is either a user or an alias')
            if isinstance(targets, str):
                targets = [targets]
            expected = "an address, a local part or an array of them"
            targets = self.check(targets, akey, list, expected)
            if not targets:
                raise self.error(akey, "an alias needs at least one target")
            aliases[name] = [self.alias_target(t, (*akey, i)) for i, t in enumerate(targets)]
        if not catch_all:
            if not users and not aliases:
                raise self.error(key, "no mailboxes: list users (or aliases), or set catch_all = true")
            for name, targets in aliases.items():
                for i, target in enumerate(targets):
                    if "@" not in target and target not in users and target not in aliases:
                        raise self.error(
                            (*key, "aliases", name, i),
                            f"{_show(target)} is neither a user nor an alias of this domain",
                        )
        return Mailbox(catch_all=catch_all, users=users, aliases=aliases)

    def alias_target(self, value: Any, key: Key) -> str:
        self.string(value, key)
        local, at, domain = value.strip().rpartition("@")
        if not at:
            return self.local_part(value.strip(), key)
        if not local or any(c.isspace() for c in local) or not _DOMAIN.fullmatch(domain.lower().rstrip(".")):
            raise self.error(key, f"{_show(value)} is not an address (local@domain) or a local part")
        return value.strip()

    def peers(self, value: Any) -> dict[str, Peer]:
        self.check(value, ("peers",), dict, "a table of peers ([peers.NAME])")
        peers: dict[str, Peer] = {}
        for name, spec in value.items():
            key: Key = ("peers", name)
            if not _PEER_NAME.fullmatch(name):
                raise self.error(key, f"{_show(name)} is not a peer name (letters, digits, '.', '_', '-')")
            self.table(spec, key, ("domains", "addresses", "endpoint", "username", "password"))
            peer = Peer(name)
            peer.domains = self.array(
                spec.get("domains", []), (*key, "domains"), lambda v, k: self.domain(self.string(v, k), k)
            )
            peer.addresses = self.array(spec.get("addresses", []), (*key, "addresses"), self.address)
            if "endpoint" in spec:
                peer.endpoint = self.string(spec["endpoint"], (*key, "endpoint")).strip()
                self.client_endpoint(peer.endpoint, (*key, "endpoint"))
            if "username" in spec:
                peer.username = self.string(spec["username"], (*key, "username"))
            if "password" in spec:
                peer.password = self.string(spec["password"], (*key, "password"), empty=True)
            if (peer.username is None) != (peer.password is None):
                missing = "password" if peer.password is None else "username"
                raise self.error((*key, missing), "missing: username and password go together")
            for i, address in enumerate(peer.addresses):
                for other in peers.values():
                    if address in other.addresses:
                        raise self.error(
                            (*key, "addresses", i),
                            f'{address} is also peer "{other.name}"\'s: a caller must be one peer',
                        )
            peers[name] = peer
        return peers

    def peer_name(self, value: Any, key: Key, config: Config) -> Peer:
        name = self.string(value, key).strip()
        if name not in config.peers:
            hint = _suggest(name, list(config.peers))
            if not hint:
                known = ", ".join(f'"{p}"' for p in config.peers)
                hint = f" (the peers are: {known})" if known else " (there is no [peers.NAME] table)"
            raise self.error(key, f"no peer named {_show(name)}{hint}")
        return config.peers[name]

    def holds(self, value: Any, config: Config) -> dict[str, str]:
        self.check(value, ("holds",), dict, "a table (DOMAIN = PEER)")
        holds: dict[str, str] = {}
        for name, target in value.items():
            key: Key = ("holds", name)
            domain = self.domain(name, key, pattern=True)
            self.not_local(domain, key, config, "held")
            if domain in holds:
                raise self.error(key, f"{domain} is given twice")
            holds[domain] = self.peer_name(target, key, config).name
        return holds

    def routes(self, value: Any, config: Config) -> dict[str, str]:
        self.check(value, ("routes",), dict, "a table (DOMAIN = ENDPOINT, mx or peer:NAME)")
        routes: dict[str, str] = {}
        for name, target in value.items():
            key: Key = ("routes", name)
            domain = self.domain(name, key, pattern=True, star=True)
            self.not_local(domain, key, config, "routed")
            if domain in config.holds:
                raise self.error(key, f'{domain} is also held for peer "{config.holds[domain]}" ([holds])')
            if domain in routes:
                raise self.error(key, f"{domain} is given twice")
            target = self.string(target, key).strip()
            if target.lower() == "mx":
                target = "mx"
            elif target.lower().startswith("peer:"):
                peer = self.peer_name(target[5:], key, config)
                if peer.endpoint is None:
                    raise self.error(
                        key,
                        f'peer "{peer.name}" has no endpoint to relay through '
                        "(to keep mail until it calls in, use [holds])",
                    )
                target = "peer:" + peer.name
            else:
                self.client_endpoint(target, key)
            routes[domain] = target
        return routes

    def not_local(self, domain: str, key: Key, config: Config, what: str) -> None:
        if domain in config.domains:
            raise self.error(
                key, f"{domain} is a local domain ([domains]): its mail is delivered here, not {what}"
            )

    def check_peer_domains(self, config: Config) -> None:
        for name, peer in config.peers.items():
            for i, domain in enumerate(peer.domains):
                key: Key = ("peers", name, "domains", i)
                self.not_local(domain, key, config, "the peer's")
                held = config.holds.get(domain)
                if held is not None and held != name:
                    raise self.error(key, f'{domain} is held for another peer, "{held}" ([holds])')

    def network(self, value: Any, key: Key) -> str:
        self.string(value, key)
        try:
            ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise self.error(key, f"{_show(value)} is not a network (CIDR such as 192.0.2.0/24)") from None
        return value.strip()

    def address(self, value: Any, key: Key) -> str:
        self.string(value, key)
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise self.error(key, f"{_show(value)} is not an IP address") from None

    def dns(self, value: Any, key: Key) -> tuple[str, int]:
        text = self.string(value, key).strip()
        host, port = text, "53"
        m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
        if m:
            host, port = m.group(1), m.group(2) or "53"
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        try:
            ipaddress.ip_address(host)
            number = int(port)
            if not 0 < number < 65536:
                raise ValueError(port)
        except ValueError:
            raise self.error(
                key, f"{_show(value)}: give an IP address and optional port (HOST[:PORT])"
            ) from None
        return host, number

    def polls(self, value: Any, config: Config) -> list[Poll]:
        polls: list[Poll] = []
        for i, spec in enumerate(self.check(value, ("polls",), list, "an array of tables ([[polls]])")):
            key: Key = ("polls", i)
            self.table(spec, key, ("peer", "interval", "jitter", "method", "max_backoff"))
            if "peer" not in spec:
                raise self.error(key, 'missing "peer" (the name of a [peers.NAME] to poll)')
            peer = self.peer_name(spec["peer"], (*key, "peer"), config)
            if peer.endpoint is None:
                raise self.error(
                    (*key, "peer"), f'peer "{peer.name}" has no endpoint to poll (peers.{peer.name})'
                )
            for j, other in enumerate(polls):
                if other.peer == peer.name:
                    raise self.error((*key, "peer"), f'peer "{peer.name}" is already polled by polls[{j}]')
            poll = Poll(peer.name)
            if "interval" in spec:
                poll.interval = self.duration(spec["interval"], (*key, "interval"))
            if "jitter" in spec:
                poll.jitter = float(self.check(spec["jitter"], (*key, "jitter"), (int, float), "a number"))
                if not 0 <= poll.jitter < 1:
                    raise self.error(
                        (*key, "jitter"), f"{_show(spec['jitter'])}: must be from 0 up to (not) 1"
                    )
            if "method" in spec:
                poll.method = self.string(spec["method"], (*key, "method")).strip().lower()
                if poll.method not in POLL_METHODS:
                    methods = " or ".join(f'"{m}"' for m in POLL_METHODS)
                    raise self.error((*key, "method"), f"{_show(spec['method'])} is not a method: {methods}")
            if "max_backoff" in spec:
                poll.max_backoff = self.duration(spec["max_backoff"], (*key, "max_backoff"))
            else:  # at least the interval: backing off never polls more often
                poll.max_backoff = max(poll.max_backoff, poll.interval)
            if poll.max_backoff < poll.interval:
                raise self.error(
                    (*key, "max_backoff"),
                    f"{poll.max_backoff:g} s is shorter than the interval ({poll.interval:g} s)",
                )
            polls.append(poll)
        return polls

    LIMITS = tuple(f.name for f in dataclasses.fields(Limits)) + (
        "max_connections",
        "max_received",
        "queue_lifetime",
        "retry_interval",
    )

    def limits(self, value: Any, config: Config) -> None:
        self.table(
            value,
            ("limits",),
            self.LIMITS,
            {"max_message_size": "message_size", "max_recipients": "recipients"},
        )
        values: dict[str, Any] = {}
        for name, raw in value.items():
            key: Key = ("limits", name)
            if name == "message_size":
                values[name] = self.size(raw, key, 1024)
            elif name == "command_line":
                values[name] = self.size(raw, key, 512, " (RFC 5321 §4.5.3.1.4)")
            elif name == "text_line":
                values[name] = self.size(raw, key, 1000, " (RFC 5321 §4.5.3.1.6)")
            elif name == "recipients":
                values[name] = self.integer(raw, key, 100, " (RFC 5321 §4.5.3.1.8)")
            elif name in ("bad_commands", "max_connections", "max_received"):
                values[name] = self.integer(raw, key, 1)
            else:  # the timeouts, queue_lifetime, retry_interval
                values[name] = self.duration(raw, key)
        for name in ("max_connections", "max_received", "queue_lifetime", "retry_interval"):
            if name in values:
                setattr(config, name, values.pop(name))
        config.limits = Limits(**values)


def _why(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return " ".join(text.split())


def _same_address(a: tuple, b: tuple) -> bool:
    """Two parsed server endpoints that cannot both listen (identical, or TCP on one port with a wildcard)."""
    if a == b:
        return a[1] != ("0",)  # port 0: each gets a port of its own
    kind_a, args_a, kw_a = a
    kind_b, args_b, kw_b = b
    if kind_a != "TCP" or kind_b != "TCP" or args_a != args_b or args_a == ("0",):
        return False
    iface_a, iface_b = dict(kw_a).get("interface", ""), dict(kw_b).get("interface", "")
    return iface_a == iface_b or "" in (iface_a, iface_b) or "0.0.0.0" in (iface_a, iface_b)


_MOVED.update({name: f"limits.{name}" for name in _Reader.LIMITS})
