"""The checks every section shares: types, durations, sizes, domain names,
endpoints, addresses, and references to a ``[peers.NAME]``.

``Values`` is the base of each section's reader class; ``reader.Reader``
inherits them all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from smtppeer.twisted_private import parse_endpoint, parse_server_endpoint

from ..config import Config, Peer
from .errors import ConfigError, Key, _got, _show, _suggest, _why, format_key

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw])", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"(\d+)\s*(?:([KMG])(?:i?B)?|B)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def endpoint_port(description: str) -> int | None:
    """The TCP port a client endpoint description connects to (``tcp:host=H:port=P``,
    ``tcp:H:P``), or None (a UNIX socket, no port given)."""
    args, kwargs = parse_endpoint(description)
    port = kwargs.get("port", args[2] if len(args) > 2 else None)
    try:
        return int(port) if port is not None else None
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    """Seconds as the file and the options spell them: ``432000`` -> ``5d``, ``90`` -> ``90s``."""
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def format_size(octets: int) -> str:
    """Octets as the file and the options spell them: ``52428800`` -> ``50M``."""
    for unit in ("G", "M", "K"):
        size = _SIZE_UNITS[unit]
        if octets >= size and octets % size == 0:
            return f"{octets // size}{unit}"
    return str(octets)


class Values:
    """The reader's shared checks; ``source`` names the file (or the command line) in errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: Key, message: str) -> ConfigError:
        return ConfigError(self.source, format_key(key) or None, message, key)

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

    def jitter(self, value: Any, key: Key) -> float:
        """A fraction of an interval to vary it by, from 0 up to (not) 1."""
        fraction = float(self.check(value, key, (int, float), "a number"))
        if not 0 <= fraction < 1:
            raise self.error(key, f"{_show(value)}: must be from 0 up to (not) 1")
        return fraction

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
        self.string(value, key)
        try:
            parsed = parse_server_endpoint(value)
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

    def peer_name(self, value: Any, key: Key, config: Config) -> Peer:
        name = self.string(value, key).strip()
        if name not in config.peers:
            hint = _suggest(name, list(config.peers))
            if not hint:
                known = ", ".join(f'"{p}"' for p in config.peers)
                hint = f" (the peers are: {known})" if known else " (there is no [peers.NAME] table)"
            raise self.error(key, f"no peer named {_show(name)}{hint}")
        return config.peers[name]

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
