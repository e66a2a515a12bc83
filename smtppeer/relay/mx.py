"""Next-hop selection for relayed mail: RFC 5321 §5.1 MX lookup with ``twisted.names``.

:class:`MXResolver` turns a recipient domain into an ordered list of
:class:`NextHop` s.  It resolves only the MX records; the connecting code
resolves each host's addresses itself (``HostnameEndpoint``), so that
a host whose first address is unreachable is tried on its others.

Outcomes, for the queue runner to map per recipient:

- MX records: sorted by preference, equal preferences in random order
  (RFC 5321 §5.1), a host listed twice kept once at its lowest preference;
- no MX record but the name exists (NOERROR, empty answer): the *implicit
  MX*, the domain itself at preference 0;
- a null MX (RFC 7505: the only MX target is ``.``): :class:`PermanentDNSError`
  with status 5.1.10;
- NXDOMAIN: :class:`PermanentDNSError` (5.1.2);
- SERVFAIL, REFUSED, timeouts, anything else: :class:`TemporaryDNSError` (4.4.3).

Address literals (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) are not looked up.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.names import client, dns, error

from smtppeer.twisted_private import ClientResolver

if TYPE_CHECKING:
    from twisted.internet.interfaces import IResolver

__all__ = [
    "ClientResolver",
    "DNSLookupError",
    "MXResolver",
    "NextHop",
    "PermanentDNSError",
    "TemporaryDNSError",
    "endpoint_description",
    "parse_address_literal",
    "resolver_from_address",
]

MAX_CNAME_CHAIN = 8


@dataclass(frozen=True)
class NextHop:
    host: str  # a host name or an IP literal (without brackets or "IPv6:")
    port: int = 25
    preference: int = 0


class DNSLookupError(Exception):
    """Routing by DNS failed; ``status`` is the RFC 3463 enhanced status code."""

    permanent = False

    def __init__(self, reason: str, status: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class PermanentDNSError(DNSLookupError):
    """The domain can never be routed (NXDOMAIN, null MX...): fail the recipient (5xx)."""

    permanent = True

    def __init__(self, reason: str, status: str = "5.1.2") -> None:
        super().__init__(reason, status)


class TemporaryDNSError(DNSLookupError):
    """DNS did not answer usefully now (SERVFAIL, timeout...): defer the recipient (4xx)."""

    def __init__(self, reason: str, status: str = "4.4.3") -> None:
        super().__init__(reason, status)


def parse_address_literal(domain: str) -> str | None:
    """The IP address in an RFC 5321 address literal, ``None`` for a domain name.

    Raises :class:`PermanentDNSError` for a malformed or general (``[tag:...]``) literal.
    """
    if not domain.startswith("["):
        return None
    if not domain.endswith("]"):
        raise PermanentDNSError(f"bad address literal {domain!r}")
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise PermanentDNSError(f"unusable address literal {domain!r}") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _escape(value: str) -> str:
    # twisted.internet.endpoints._tokenize: backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpoint_description(hop: NextHop) -> str:
    """A ``clientFromString`` description for ``hop``: ``tcp:host=...:port=...``.

    Colons of an IPv6 literal are backslash-escaped.  Note that ``tcp:`` gives a
    ``TCP4ClientEndpoint``, which resolves a *name* to IPv4 only; code that wants
    IPv6 for names uses ``HostnameEndpoint(reactor, hop.host, hop.port)`` instead.
    """
    return f"tcp:host={_escape(hop.host)}:port={int(hop.port)}"


def _ascii_name(domain: str) -> str:
    name = domain.strip().rstrip(".").lower()
    if not name or ".." in name:
        raise PermanentDNSError(f"bad domain {domain!r}")
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise PermanentDNSError(f"bad internationalised domain {domain!r}") from None
    if any(len(label) > 63 for label in name.split(".")) or len(name) > 253:
        raise PermanentDNSError(f"bad domain {domain!r}")
    return name


def _text(name: dns.Name | bytes | str) -> str:
    if isinstance(name, dns.Name):
        name = name.name
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.rstrip(".").lower()


def _classify(failure: BaseException, name: str) -> DNSLookupError:
    """Map a ``twisted.names`` failure to a permanent or temporary error.

    Careful: ``DNSServerError`` (SERVFAIL), ``DNSQueryRefusedError``... all
    *subclass* ``DomainError``; only ``DNSNameError`` (an NXDOMAIN reply),
    ``AuthoritativeDomainError`` (from an in-process authority) and a bare
    ``DomainError`` (nobody in a resolver chain knows the name) mean "no such domain".
    """
    if isinstance(failure, DNSLookupError):
        return failure
    if isinstance(failure, error.DNSNameError | error.AuthoritativeDomainError) or (
        type(failure) is error.DomainError
    ):
        return PermanentDNSError(f"{name}: domain not found (NXDOMAIN)", "5.1.2")
    if isinstance(failure, error.DNSServerError):
        why = "server failure (SERVFAIL)"
    elif isinstance(failure, error.DNSQueryRefusedError):
        why = "query refused (REFUSED)"
    elif isinstance(failure, defer.TimeoutError | TimeoutError):
        why = "DNS timeout"
    elif isinstance(failure, error.DomainError):
        why = f"DNS error {type(failure).__name__}"
    else:
        why = f"DNS lookup failed: {type(failure).__name__}: {failure}"
    return TemporaryDNSError(f"{name}: {why}", "4.4.3")


class MXResolver:
    """RFC 5321 §5.1 next-hop selection via ``twisted.names``.

    ``resolver`` is any ``IResolver`` (default: ``twisted.names.client.getResolver()``,
    the system's ``resolv.conf``, created on first use).  ``rng`` needs ``shuffle``.
    ``local_names`` are this host's names: an MX list containing one of them is
    cut before it (RFC 5321 §5.1), and fails with 5.4.6 if nothing is left.
    """

    def __init__(
        self,
        resolver: IResolver | None = None,
        port: int = 25,
        rng: Any = random,
        local_names: Iterable[str] = (),
    ) -> None:
        self._resolver = resolver
        self.port = port
        self.rng = rng
        self.local_names = frozenset(n.lower().rstrip(".") for n in local_names)

    @property
    def resolver(self) -> IResolver:
        if self._resolver is None:
            self._resolver = client.getResolver()
        return self._resolver

    def next_hops(self, domain: str) -> defer.Deferred[list[NextHop]]:
        """Fires with the hops to try in order, or fails with a :class:`DNSLookupError`."""
        try:
            literal = parse_address_literal(domain)
            if literal is not None:
                return defer.succeed([NextHop(literal, self.port, 0)])
            name = _ascii_name(domain)
        except DNSLookupError as e:
            return defer.fail(e)
        return defer.Deferred.fromCoroutine(self._resolve(name))

    async def _resolve(self, name: str) -> list[NextHop]:
        query = name
        chain: list[str] = []
        while True:
            try:
                answers, _authority, _additional = await self.resolver.lookupMailExchange(query)
            except defer.CancelledError:
                raise
            except Exception as e:
                raise _classify(e, name) from e
            owner, records = self._mx_records(query, answers)
            if records or owner == query:
                break
            # The answer was a CNAME (chain) without the target's records: ask for the target.
            chain.append(query)
            if owner in chain or len(chain) >= MAX_CNAME_CHAIN:
                raise TemporaryDNSError(f"{name}: CNAME chain too long or looping", "4.4.3")
            query = owner
        if not records:
            # RFC 5321 §5.1: implicit MX, the (canonical) name itself at preference 0.
            return [NextHop(owner, self.port, 0)]
        hosts = [(pref, host) for pref, host in records if host]
        if not hosts:
            raise PermanentDNSError(f"{name}: domain accepts no mail (null MX, RFC 7505)", "5.1.10")
        return self._order(name, hosts)

    @staticmethod
    def _mx_records(query: str, answers: Iterable[dns.RRHeader]) -> tuple[str, list[tuple[int, str]]]:
        """Follow CNAMEs in the answer from ``query``; the canonical name and its MX records."""
        cnames: dict[str, str] = {}
        mx: dict[str, list[tuple[int, str]]] = {}
        for rr in answers:
            owner = _text(rr.name)
            if rr.type == dns.CNAME:
                cnames[owner] = _text(rr.payload.name)
            elif rr.type == dns.MX:
                mx.setdefault(owner, []).append((rr.payload.preference, _text(rr.payload.name)))
        owner, seen = query, {query}
        while owner in cnames and owner not in mx:
            owner = cnames[owner]
            if owner in seen:
                break
            seen.add(owner)
        return owner, mx.get(owner, [])

    def _order(self, name: str, records: list[tuple[int, str]]) -> list[NextHop]:
        best: dict[str, int] = {}
        for pref, host in records:
            if host not in best or pref < best[host]:
                best[host] = pref
        local = [pref for host, pref in best.items() if host in self.local_names]
        if local:
            cut = min(local)
            best = {host: pref for host, pref in best.items() if pref < cut}
            if not best:
                raise PermanentDNSError(f"mail for {name} loops back to myself", "5.4.6")
        groups: dict[int, list[str]] = {}
        for host, pref in best.items():
            groups.setdefault(pref, []).append(host)
        hops: list[NextHop] = []
        for pref in sorted(groups):
            hosts = sorted(groups[pref])  # a stable start, so an injected rng is deterministic
            if len(hosts) > 1:
                self.rng.shuffle(hosts)
            hops.extend(NextHop(host, self.port, pref) for host in hosts)
        return hops


def resolver_from_address(
    host: str, port: int = 53, *, timeout: tuple[float, ...] = (1, 2, 4), reactor: Any = None
) -> ClientResolver:
    """A resolver that asks only the DNS server at ``host`` (an IP address), ``port``.

    ``/etc/resolv.conf`` is not read; ``timeout`` is the retry sequence (seconds
    per attempt; 7 s in all by default).  Call ``stop()`` when done with it.
    """
    if not _is_ip(host):
        raise ValueError(f"DNS server must be an IP address, not {host!r}")
    return ClientResolver(servers=[(host, int(port))], timeout=tuple(timeout), reactor=reactor)
