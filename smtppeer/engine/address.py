"""RFC 5321 §4.1.2 paths: mailboxes, the null path, source routes, parameters.

Parsing is strict about the grammar (a relay that "fixes" addresses corrupts
them) but lenient about the one deviation every real client makes: a space
between ``FROM:``/``TO:`` and the ``<``.  Non-ASCII is accepted only when the
caller says SMTPUTF8 is in force (RFC 6531 §3.3).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .replies import printable

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # §4.5.3.1.2
MAX_PATH = 256  # §4.5.3.1.3

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_U = "\u0080-\U0010ffff"  # UTF8-non-ascii, allowed only under SMTPUTF8


def _patterns(utf8: bool) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    u = _U if utf8 else ""
    atom = f"[{_ATEXT}{u}]+"
    dot_string = f"{atom}(?:\\.{atom})*"
    quoted = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{u}]|\\\\[\\x20-\\x7e])*"'
    local = re.compile(f"(?:{dot_string}|{quoted})")
    let_dig = f"[A-Za-z0-9{u}]"
    sub = f"{let_dig}(?:[A-Za-z0-9\\-{u}]*{let_dig})?"
    domain = re.compile(f"{sub}(?:\\.{sub})*")
    general_lit = re.compile(r"\[(?:[A-Za-z0-9-]*[A-Za-z0-9]:)?[\x21-\x5a\x5e-\x7e]+\]")
    return local, domain, general_lit


_ASCII = _patterns(False)
_UTF8 = _patterns(True)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")


class AddressError(ValueError):
    """A path or parameter that does not match the RFC 5321 grammar.

    Its text goes into a reply, so what it quotes of the input is escaped and
    cut (``_shown``): a client never gets its NULs or escape sequences back.
    """


def _shown(text: str) -> str:
    return f"'{printable(text, 64)}'"


@dataclass(frozen=True)
class Mailbox:
    """``local@domain``; ``local`` is kept exactly as sent (quotes included).

    ``domain`` is a domain name or an address literal in brackets; it is the
    empty string only for the special ``<postmaster>`` recipient.
    """

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def is_postmaster(self) -> bool:
        return self.local_unquoted.lower() == "postmaster"

    @property
    def local_unquoted(self) -> str:
        if self.local.startswith('"'):
            return re.sub(r"\\(.)", r"\1", self.local[1:-1])
        return self.local

    @property
    def domain_key(self) -> str:
        """The domain in the form used for routing decisions (case-folded)."""
        return self.domain.lower().rstrip(".")


@dataclass(frozen=True)
class Path:
    """A reverse- or forward-path: ``None`` mailbox is the null path ``<>``.

    ``route`` keeps the RFC 821 source route hosts (``<@A,@B:u@C>`` gives
    ``("A", "B")``) so that the relay can honour or strip it.
    """

    mailbox: Mailbox | None
    route: tuple[str, ...] = field(default=())

    @property
    def is_null(self) -> bool:
        return self.mailbox is None

    def __str__(self) -> str:
        if self.mailbox is None:
            return "<>"
        route = ",".join("@" + h for h in self.route)
        return f"<{route + ':' if route else ''}{self.mailbox}>"


def _check_domain(text: str, utf8: bool) -> str:
    local_re, domain_re, general_re = _UTF8 if utf8 else _ASCII
    if text.startswith("["):
        if not general_re.fullmatch(text):
            raise AddressError(f"bad address literal {_shown(text)}")
        inner = text[1:-1]
        try:
            if inner.upper().startswith("IPV6:"):
                ipaddress.IPv6Address(inner[5:])
            elif ":" not in inner:
                ipaddress.IPv4Address(inner)
        except ValueError as e:
            raise AddressError(f"bad address literal {_shown(text)}") from e
        return text
    if not domain_re.fullmatch(text):
        raise AddressError(f"bad domain {_shown(text)}")
    if len(text.encode()) > MAX_DOMAIN:
        raise AddressError("domain too long")
    return text


def parse_mailbox(text: str, *, utf8: bool = False, allow_bare_postmaster: bool = False) -> Mailbox:
    local_re, _, _ = _UTF8 if utf8 else _ASCII
    m = local_re.match(text)
    if not m:
        raise AddressError(f"bad local part in {_shown(text)}")
    local = m.group(0)
    rest = text[m.end() :]
    if not rest and allow_bare_postmaster and local.lower() == "postmaster":
        return Mailbox("postmaster", "")
    if not rest.startswith("@"):
        raise AddressError(f"missing @domain in {_shown(text)}")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    return Mailbox(local, _check_domain(rest[1:], utf8))


def parse_path(text: str, *, reverse: bool, utf8: bool = False) -> tuple[Path, str]:
    """Parse a path at the start of ``text``; return it and the remainder.

    ``reverse`` admits ``<>``; a forward path admits ``<postmaster>``.
    """
    if not text.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    end = _find_path_end(text)
    inner = text[1:end]
    rest = text[end + 1 :]
    if len(inner.encode()) + 2 > MAX_PATH:
        raise AddressError("path too long")
    if inner == "":
        if not reverse:
            raise AddressError("null path not allowed here")
        return Path(None), rest
    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        adl, sep, inner = inner.partition(":")
        if not sep:
            raise AddressError("source route without ':'")
        hosts = []
        for part in adl.split(","):
            if not part.startswith("@"):
                raise AddressError(f"bad source route {_shown(adl)}")
            hosts.append(_check_domain(part[1:], utf8))
        route = tuple(hosts)
    mailbox = parse_mailbox(inner, utf8=utf8, allow_bare_postmaster=not reverse and not route)
    return Path(mailbox, route), rest


def _find_path_end(text: str) -> int:
    """Index of the ``>`` closing the path, skipping quoted strings."""
    i, n, quoted = 1, len(text), False
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return i
        i += 1
    raise AddressError("unterminated path")


def parse_params(text: str) -> dict[str, str | None]:
    """``KEY=VALUE KEY2`` → ``{"KEY": "VALUE", "KEY2": None}`` (keys upper-cased)."""
    params: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise AddressError(f"bad parameter {_shown(item)}")
        if key.upper() in params:
            raise AddressError(f"duplicate parameter {_shown(key)}")
        params[key.upper()] = value if eq else None
    return params


def split_mail_argument(arg: str, prefix: str) -> tuple[str, dict[str, str | None]]:
    """Split ``FROM:<path> params`` (or ``TO:``) into the path text and parameters.

    The path is parsed separately because whether it may hold UTF-8 depends
    on the parameters (SMTPUTF8 on MAIL) and on the transaction (RCPT).
    """
    if arg[: len(prefix)].upper() != prefix:
        raise AddressError(f"expected {prefix}")
    text = arg[len(prefix) :].lstrip(" ")
    if not text.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    end = _find_path_end(text)
    tail = text[end + 1 :]
    if tail and not tail.startswith(" "):
        raise AddressError("junk after path")
    return text[: end + 1], parse_params(tail)


def is_domain(text: str) -> bool:
    """A plain (ASCII, not literal) domain, as ETRN and ATRN name them."""
    return bool(_ASCII[1].fullmatch(text)) and len(text) <= MAX_DOMAIN


def address_literal(host: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` for an IP; the name otherwise."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"
