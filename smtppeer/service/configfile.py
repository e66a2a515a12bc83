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

    [tls]                               # the server certificate for STARTTLS; none: STARTTLS is not offered
    certificate = "cert.pem"            # PEM (with its chain); relative paths as data_dir (working directory)
    key = "key.pem"                     # its PEM private key (not encrypted)

    [[listen]]                          # repeatable; none given: tcp:2525:interface=127.0.0.1
    endpoint = "tcp:25"                 # a Twisted server endpoint description; for mode = "odmr"
                                        #   it may be omitted: tcp:366 (RFC 2645)
    mode = "smtp"                       # or "odmr" (RFC 2645: EHLO, AUTH, ATRN, QUIT only)
    turn = false                        # may a configured peer say TURN here? (not on odmr)
    starttls = true                     # offer STARTTLS when [tls] is set (given as true: [tls] is needed)
    require_tls = false                 # nothing but EHLO/HELO/STARTTLS/NOOP/RSET/QUIT before STARTTLS
    auth_in_clear = false               # allow AUTH PLAIN/LOGIN without TLS (a lab on loopback)
    max_auth_failures = 3               # then 421 and close (at least 1)
    processes = 1                       # >1: that many processes accept here (receive only:
                                        # no TURN/ETRN, not with turn or odmr); a busy MX port
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
    username = "dialup"                 # the credentials of the relationship, used in whichever
    password = "..."                    #   direction we connect: it logs in to us, we log in to it
    # password_hash = "SCRAM-SHA-256$4096:..."  # instead of password (smtppeer hash-password): then only
                                        #   the peer can log in to us, not we to it (and no CRAM-MD5)
    tls = "opportunistic"               # when we connect to it: "none", "opportunistic", "required"
                                        #   (any certificate) or "verify"
    ca_file = "ca.pem"                  # tls = "verify" only: its trust roots (default: the system's)
    tls_name = "mail.provider.example"  # tls = "verify" only: the name its certificate must carry
                                        #   (default: the endpoint's host)

    [users.alice]                       # may AUTH to submit (and so relay) mail; owns no domains
    password = "..."                    # or password_hash = "SCRAM-SHA-256$4096:..." (smtppeer hash-password)
                                        # a login name is one user's or one peer's username, never both;
                                        # it may be an address: [users."alice@example.org"]

    [[polls]]                           # repeatable
    peer = "provider"                   # a peer with an endpoint
    interval = "5m"                     # seconds, or "30s", "5m", "1h", "1d", "1h30m"
    jitter = 0.1                        # +/- this fraction of the interval
    method = "turn"                     # or "atrn" (RFC 2645: the peer needs username and password)
                                        #   or "etrn" (RFC 1985)
    domains = ["dialup.example"]        # atrn and etrn only: what to ask for (default: atrn without an
                                        #   argument, etrn for each local domain); etrn also takes
                                        #   "@dialup.example" (and subdomains) and "#provider" (a queue)
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

from smtppeer.engine import Limits
from smtppeer.peer.tls import endpoint_host as _endpoint_host

from .config import (
    DEFAULT_LISTEN,
    ODMR,
    ODMR_PORT,
    SMTP,
    TLS_POLICIES,
    TLS_VERIFY,
    Config,
    Listener,
    Mailbox,
    Peer,
    Poll,
    TLSFiles,
    User,
)

__all__ = ["ConfigError", "load_config", "loads_config", "parse_config"]

MODES = (SMTP, ODMR)
MAX_PROCESSES = 64
POLL_METHODS = ("turn", "atrn", "etrn")

Key = tuple[str | int, ...]

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

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A user's login: a name like a peer's (with "+"), or an address, as many mail setups use.
# Nothing SASL would have to escape (SCRAM's "," and "="), no spaces (CRAM-MD5).
_LOGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)?")
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
        config.polls = self.polls(data.get("polls", []), config)
        self.limits(data.get("limits", {}), config)
        return config

    LISTENER = (
        "endpoint",
        "mode",
        "turn",
        "starttls",
        "require_tls",
        "auth_in_clear",
        "max_auth_failures",
        "processes",
    )

    def listeners(self, value: Any, config: Config) -> list[Listener]:
        if value is None:
            return [Listener(DEFAULT_LISTEN)]
        listeners: list[Listener] = []
        seen: dict[tuple, int] = {}
        for i, item in enumerate(self.check(value, ("listen",), list, "an array of listeners")):
            key: Key = ("listen", i)
            ekey: Key = (*key, "endpoint")
            if isinstance(item, str):  # listen = ["tcp:25"]
                item, ekey = {"endpoint": item}, key
            self.table(item, key, self.LISTENER)
            mode = SMTP
            if "mode" in item:
                mode = self.string(item["mode"], (*key, "mode")).strip().lower()
                if mode not in MODES:
                    modes = " or ".join(f'"{m}"' for m in MODES)
                    raise self.error((*key, "mode"), f"{_show(item['mode'])} is not a mode: {modes}")
            if "endpoint" in item:
                listener = Listener(item["endpoint"], mode=mode)
                parsed = self.server_endpoint(item["endpoint"], ekey)
            elif mode == ODMR:  # RFC 2645's port
                listener, ekey = Listener(f"tcp:{ODMR_PORT}", mode=mode), key
                parsed = self.server_endpoint(listener.endpoint, ekey)
            else:
                raise self.error(key, 'missing "endpoint" (a server endpoint description such as "tcp:25")')
            if "turn" in item:
                listener.turn = self.boolean(item["turn"], (*key, "turn"))
                if listener.turn and mode == ODMR:
                    raise self.error(
                        (*key, "turn"),
                        "an odmr listener turns with ATRN, not TURN (RFC 2645): set mode or turn",
                    )
            self.listener_tls(item, key, listener, config)
            if "max_auth_failures" in item:
                listener.max_auth_failures = self.integer(
                    item["max_auth_failures"], (*key, "max_auth_failures"), 1
                )
            if "processes" in item:
                listener.processes = self.integer(item["processes"], (*key, "processes"), 1)
                if listener.processes > MAX_PROCESSES:
                    too_many = f"{listener.processes} is too many: at most {MAX_PROCESSES}"
                    raise self.error((*key, "processes"), too_many)
                if listener.processes > 1 and (mode == ODMR or listener.turn):
                    raise self.error(
                        (*key, "processes"),
                        "a listener served by several processes only receives: not with turn or odmr",
                    )
                if listener.processes > 1 and listener.endpoint.split(":")[0].lower() not in ("tcp", "tcp6"):
                    raise self.error((*key, "processes"), "several processes need a tcp or tcp6 endpoint")
            for other, j in seen.items():
                if _same_address(parsed, other):
                    previous = listeners[j].endpoint
                    also = f" ({_show(previous)})" if previous != listener.endpoint else ""
                    raise self.error(ekey, f"{_show(listener.endpoint)} duplicates listen[{j}]{also}")
            seen[parsed] = i
            listeners.append(listener)
        return listeners

    def listener_tls(self, item: dict[str, Any], key: Key, listener: Listener, config: Config) -> None:
        for name in ("starttls", "require_tls", "auth_in_clear"):
            if name in item:
                setattr(listener, name, self.boolean(item[name], (*key, name)))
        if config.tls is None:
            if listener.require_tls:
                raise self.error(
                    (*key, "require_tls"), "there is no certificate to offer STARTTLS with ([tls])"
                )
            if "starttls" in item and listener.starttls:
                raise self.error((*key, "starttls"), "there is no certificate to offer STARTTLS with ([tls])")
        if listener.require_tls and not listener.starttls:
            raise self.error((*key, "require_tls"), "TLS cannot be required where starttls = false")

    def tls(self, value: Any) -> TLSFiles:
        """The files as the service loads them: every certificate, then the key, and that they match."""
        from OpenSSL.crypto import FILETYPE_PEM  # noqa: PLC0415 -- only for files that have [tls]
        from twisted.internet.ssl import KeyPair, PrivateCertificate  # noqa: PLC0415

        key: Key = ("tls",)
        self.table(value, key, ("certificate", "key"))
        for name, what in (
            ("certificate", "the PEM certificate, with its chain"),
            ("key", "its PEM private key"),
        ):
            if name not in value:
                raise self.error(key, f'missing "{name}" ({what})')
        files = TLSFiles(
            certificate=os.path.expanduser(self.string(value["certificate"], (*key, "certificate")).strip()),
            key=os.path.expanduser(self.string(value["key"], (*key, "key")).strip()),
        )
        cert_pem = self.read_file(files.certificate, (*key, "certificate"))
        key_pem = self.read_file(files.key, (*key, "key"))
        [own, *_] = self.certificates(cert_pem, files.certificate, (*key, "certificate"), "a PEM certificate")
        if any(mark in key_pem for mark in (b"-----BEGIN ENCRYPTED", b"Proc-Type: 4,ENCRYPTED")):
            # (OpenSSL would ask for the passphrase on the terminal)
            raise self.error(
                (*key, "key"), f"{_show(files.key)} is encrypted: give the key without a passphrase"
            )
        try:
            pair = KeyPair.load(key_pem, FILETYPE_PEM)
        except Exception as e:  # noqa: BLE001 -- OpenSSL.crypto.Error
            raise self.error(
                (*key, "key"), f"{_show(files.key)} is not a PEM private key ({_ssl_why(e)})"
            ) from None
        try:  # what PrivateCertificate.loadPEM(certificate + key) does, with each file's own part
            PrivateCertificate.fromCertificateAndKeyPair(own, pair)
        except Exception as e:  # noqa: BLE001 -- VerifyError: they do not match
            raise self.error(
                (*key, "key"),
                f"{_show(files.key)} is not the key of {_show(files.certificate)} ({_ssl_why(e)})",
            ) from None
        return files

    def certificates(self, pem: bytes, path: str, key: Key, what: str) -> list:
        """Every certificate in a PEM file (twisted ``Certificate``s); at least one."""
        from twisted.internet.ssl import Certificate  # noqa: PLC0415

        end = b"-----END CERTIFICATE-----"
        blocks = [block + end + b"\n" for block in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
        if not blocks:
            raise self.error(key, f"{_show(path)} is not {what} (no -----BEGIN CERTIFICATE----- in it)")
        certificates = []
        for i, block in enumerate(blocks):
            try:
                certificates.append(Certificate.loadPEM(block))
            except Exception as e:  # noqa: BLE001 -- OpenSSL.crypto.Error
                which = (
                    f"certificate {i + 1} of {len(blocks)} in" if len(blocks) > 1 else "the certificate in"
                )
                raise self.error(key, f"{which} {_show(path)} is broken ({_ssl_why(e)})") from None
        return certificates

    def read_file(self, path: str, key: Key) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise self.error(key, f"cannot read {_show(path)}: {e.strerror or e}") from None

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

    def etrn_node(self, text: str, key: Key) -> str:
        """What ETRN may ask for (RFC 1985): ``domain``, ``@domain`` (it and its
        subdomains) or ``#queue`` (a queue by name: here, a peer's)."""
        text = text.strip()
        if text.startswith("#"):
            if not _PEER_NAME.fullmatch(text[1:]):
                raise self.error(key, f"{_show(text)} is not a queue (#NAME, NAME like a peer's)")
            return text
        if text.startswith("@"):
            return "@" + self.domain(text[1:], key)
        return self.domain(text, key)

    def peers(self, value: Any) -> dict[str, Peer]:
        self.check(value, ("peers",), dict, "a table of peers ([peers.NAME])")
        peers: dict[str, Peer] = {}
        for name, spec in value.items():
            key: Key = ("peers", name)
            if not _PEER_NAME.fullmatch(name):
                raise self.error(key, f"{_show(name)} is not a peer name (letters, digits, '.', '_', '-')")
            self.table(spec, key, self.PEER)
            peer = Peer(name)
            peer.domains = self.array(
                spec.get("domains", []), (*key, "domains"), lambda v, k: self.domain(self.string(v, k), k)
            )
            peer.addresses = self.array(spec.get("addresses", []), (*key, "addresses"), self.address)
            if "endpoint" in spec:
                peer.endpoint = self.string(spec["endpoint"], (*key, "endpoint")).strip()
                self.client_endpoint(peer.endpoint, (*key, "endpoint"))
            self.credentials(spec, key, peer)
            if "username" in spec:
                peer.username = self.string(spec["username"], (*key, "username"))
                for other in peers.values():
                    if other.username == peer.username:
                        raise self.error(
                            (*key, "username"),
                            f'{_show(peer.username)} is also peer "{other.name}"\'s: '
                            "a login name must be one peer's or one user's",
                        )
            if peer.username is None and (peer.password is not None or peer.password_hash is not None):
                given = "password" if peer.password is not None else "password_hash"
                raise self.error((*key, "username"), f"missing: {given} needs a username")
            if peer.username is not None and peer.password is None and peer.password_hash is None:
                raise self.error((*key, "password"), "missing: username needs password (or password_hash)")
            self.peer_tls(spec, key, peer)
            for i, address in enumerate(peer.addresses):
                for other in peers.values():
                    if address in other.addresses:
                        raise self.error(
                            (*key, "addresses", i),
                            f'{address} is also peer "{other.name}"\'s: a caller must be one peer',
                        )
            peers[name] = peer
        return peers

    PEER = (
        "domains",
        "addresses",
        "endpoint",
        "username",
        "password",
        "password_hash",
        "tls",
        "ca_file",
        "tls_name",
    )

    def credentials(self, spec: dict[str, Any], key: Key, who: Peer | User) -> None:
        """``password`` or ``password_hash`` (not both) into ``who``."""
        if "password" in spec and "password_hash" in spec:
            raise self.error((*key, "password_hash"), "give password or password_hash, not both")
        if "password" in spec:
            who.password = self.string(spec["password"], (*key, "password"), empty=isinstance(who, Peer))
        if "password_hash" in spec:
            from smtppeer.engine.sasl import parse_secret  # noqa: PLC0415 -- scramp only when a hash is given

            hkey: Key = (*key, "password_hash")
            who.password_hash = self.string(spec["password_hash"], hkey).strip()
            try:
                parse_secret(who.password_hash)
            except ValueError as e:
                raise self.error(hkey, f"{_why(e)} (smtppeer hash-password writes one)") from None

    def peer_tls(self, spec: dict[str, Any], key: Key, peer: Peer) -> None:
        if "tls" in spec:
            peer.tls = self.string(spec["tls"], (*key, "tls")).strip().lower()
            if peer.tls not in TLS_POLICIES:
                policies = ", ".join(f'"{p}"' for p in TLS_POLICIES[:-1]) + f' or "{TLS_POLICIES[-1]}"'
                raise self.error((*key, "tls"), f"{_show(spec['tls'])} is not a TLS policy: {policies}")
        for name in ("ca_file", "tls_name"):
            if name in spec and peer.tls != TLS_VERIFY:
                raise self.error((*key, name), f'only for tls = "verify" (this peer\'s tls is "{peer.tls}")')
        if "ca_file" in spec:
            peer.ca_file = os.path.expanduser(self.string(spec["ca_file"], (*key, "ca_file")).strip())
            self.ca_file(peer.ca_file, (*key, "ca_file"))
        if "tls_name" in spec:
            name = self.string(spec["tls_name"], (*key, "tls_name")).strip()
            try:
                name = str(ipaddress.ip_address(name))
            except ValueError:
                name = self.domain(name, (*key, "tls_name"))
            peer.tls_name = name
        elif peer.tls == TLS_VERIFY and peer.endpoint is not None and not _endpoint_host(peer.endpoint):
            raise self.error(
                (*key, "tls_name"),
                f"missing: the endpoint {_show(peer.endpoint)} names no host to verify the certificate for",
            )

    def ca_file(self, path: str, key: Key) -> None:
        self.certificates(self.read_file(path, key), path, key, "a file of PEM certificates")

    def users(self, value: Any, config: Config) -> dict[str, User]:
        self.check(value, ("users",), dict, "a table of users ([users.NAME])")
        users: dict[str, User] = {}
        logins = {p.username: p.name for p in config.peers.values() if p.username is not None}
        for name, spec in value.items():
            key: Key = ("users", name)
            if not _LOGIN_NAME.fullmatch(name):
                rule = "letters, digits, '.', '_', '+', '-'; or an address"
                raise self.error(key, f"{_show(name)} is not a login name ({rule})")
            if name in logins:
                raise self.error(
                    key,
                    f'"{name}" is also peer "{logins[name]}"\'s username: '
                    "a login name must be one peer's or one user's",
                )
            self.table(spec, key, ("password", "password_hash"))
            user = User(name)
            self.credentials(spec, key, user)
            if user.password is None and user.password_hash is None:
                raise self.error(key, 'missing "password" (or "password_hash", from smtppeer hash-password)')
            users[name] = user
        return users

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
            self.table(spec, key, ("peer", "interval", "jitter", "method", "domains", "max_backoff"))
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
                    methods = ", ".join(f'"{m}"' for m in POLL_METHODS[:-1]) + f' or "{POLL_METHODS[-1]}"'
                    raise self.error((*key, "method"), f"{_show(spec['method'])} is not a method: {methods}")
            if poll.method == "atrn":  # RFC 2645: AUTH before ATRN
                if peer.username is None:
                    raise self.error(
                        (*key, "method"),
                        f'atrn logs in (RFC 2645): peer "{peer.name}" needs a username and password',
                    )
                if peer.password is None:
                    raise self.error(
                        (*key, "method"),
                        f'atrn logs in (RFC 2645): peer "{peer.name}" needs the password itself, '
                        "not password_hash",
                    )
            if "domains" in spec:
                dkey: Key = (*key, "domains")
                if poll.method not in ("atrn", "etrn"):
                    raise self.error(
                        dkey, f'only for method = "atrn" or "etrn" ({poll.method} names no domains)'
                    )
                node = self.etrn_node if poll.method == "etrn" else self.domain
                poll.domains = self.array(
                    spec["domains"], dkey, lambda v, k, node=node: node(self.string(v, k), k)
                )
                for j, domain in enumerate(poll.domains):
                    if domain in poll.domains[:j]:
                        raise self.error((*dkey, j), f"{domain} is listed twice")
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


def _ssl_why(e: Exception) -> str:
    """OpenSSL's reasons (``Error([('PEM routines', '', 'no start line')])``) or the exception's text."""
    errors = e.args[0] if e.args and isinstance(e.args[0], list) else None
    if errors and all(isinstance(x, tuple) and len(x) == 3 for x in errors):
        return "; ".join(dict.fromkeys(str(x[2]) for x in errors if x[2])) or type(e).__name__
    return _why(e)


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
