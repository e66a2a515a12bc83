"""What one client address may take of the service: sessions, and failed logins.

A limit per session does not hold against a client that opens many: 200
sessions from one address held every slot of a listener (``max_connections``)
and 50 sessions tried 150 passwords in 0.2 s (issue 13, items 2 and 3).  So
both are also counted per client address, across sessions:

* ``SMTPPeerFactory`` counts each address's sessions on its listener (Postfix's
  ``smtpd_client_connection_count_limit``) with ``client_key``;
* ``AuthBudget`` counts each address's failed AUTHs across the sessions and
  listeners of the process, and refuses AUTH for a growing time after too many
  (the engine's ``auth_gate`` asks it).  It reads time from the injected clock
  only; the engine, which has none, is told its verdict.

An address is counted as the client's IP address, an IPv4-mapped IPv6 address
(``::ffff:192.0.2.1``, a dual-stack listener) as the IPv4 address it is.  An
IPv6 client is counted as its network of ``client_ipv6_prefix_length`` bits
(default 84, Postfix's ``smtpd_client_ipv6_prefix_length``): one host given a
/64 has 2**64 addresses to open sessions from.  A client of a UNIX socket has
no address and is not counted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from twisted.internet import interfaces
from twisted.logger import Logger

from smtppeer.engine import Reply, reply

log = Logger()


def client_key(host: str | None, ipv6_prefix: int = 128) -> str | None:
    """The address a client is counted as, or None (not an IP address: a UNIX socket):
    an IPv6 client as its network of ``ipv6_prefix`` bits (``2001:db8::/84``).

    Twisted gives IPv4 addresses in dotted form already, so they are taken as they
    are; only an IPv6 address is parsed (one parse per connection)."""
    if not host:
        return None
    if ":" not in host:
        return host if host[0].isdigit() else None
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return None
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    if ipv6_prefix >= 128:
        return str(address)
    return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))


@dataclass
class _Failures:
    count: int = 0  # failed AUTHs since the last success (or since forgotten)
    last: float = 0.0  # when the last one was
    until: float = 0.0  # AUTH is refused until then
    refused: int = 0  # AUTHs refused in the current back-off
    cut_off: bool = False  # past the hard limit in this back-off (logged once)


class AuthBudget:
    """Failed AUTHs per client address, shared by every session of the service.

    After ``failures`` failed attempts from one address, AUTH from it is
    refused (``454 4.7.0``) for ``backoff`` seconds; each failure after that
    (one attempt gets through when a back-off ends) doubles the time, up to
    ``backoff_max``.  A client that keeps asking while refused is past the
    hard limit after another ``failures`` refusals: each further AUTH from it
    gets ``421 4.7.0`` and its session is closed, until the back-off ends.  A
    success forgets the address; so does ``backoff_max`` without a failure.

    Each back-off and each cut-off is logged once, in one line; the refused
    attempts themselves are not (a client that ignores 454 would fill the log).
    """

    SWEEP = 4096  # addresses remembered before forgotten ones are swept out

    def __init__(
        self,
        clock: interfaces.IReactorTime,
        *,
        failures: int = 10,
        backoff: float = 60.0,
        backoff_max: float = 3600.0,
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._clients: dict[str, _Failures] = {}
        self._sweep_at = self.SWEEP

    def check(self, key: str | None, hostname: str) -> Reply | None:
        """None if ``key`` may try AUTH now; else the reply that refuses it."""
        record = self._clients.get(key) if key is not None else None
        if record is None:
            return None
        now = self.clock.seconds()
        if now >= record.until:
            if self._stale(record, now):
                del self._clients[key]
            return None
        record.refused += 1
        if record.refused <= self.failures:
            return reply(454, "4.7.0", "Too many failed authentications from your address; try again later")
        if not record.cut_off:
            record.cut_off = True
            log.warn(
                "{line}",
                line=f"AUTH from {key}: {record.refused} attempts while refused; closing its sessions "
                f"at AUTH (421) for {record.until - now:.0f}s",
                client=key,
            )
        return reply(421, "4.7.0", f"{hostname} Too many failed authentications, closing connection")

    def failed(self, key: str | None) -> None:
        """A wrong password (or other failed credentials) from ``key``."""
        if key is None or self.failures <= 0:
            return
        now = self.clock.seconds()
        record = self._clients.get(key)
        if record is None or self._stale(record, now):
            if len(self._clients) >= self._sweep_at:
                self._sweep(now)
            record = self._clients[key] = _Failures()
        record.count += 1
        record.last = now
        over = record.count - self.failures
        if over < 0:
            return
        delay = min(self.backoff * 2 ** min(over, 32), self.backoff_max)
        record.until, record.refused, record.cut_off = now + delay, 0, False
        log.warn(
            "{line}",
            line=f"AUTH from {key}: {record.count} failures; refusing its AUTH (454) for {delay:.0f}s",
            client=key,
        )

    def succeeded(self, key: str | None) -> None:
        if key is not None:
            self._clients.pop(key, None)

    def _stale(self, record: _Failures, now: float) -> bool:
        """Out of back-off and quiet for ``backoff_max``: forgotten."""
        return now >= record.until and now - record.last >= self.backoff_max

    def _sweep(self, now: float) -> None:
        """Drop forgotten addresses, so that many addresses failing once each cannot
        grow the table without bound; sweep again when it has doubled."""
        for key in [k for k, r in self._clients.items() if self._stale(r, now)]:
            del self._clients[key]
        self._sweep_at = max(self.SWEEP, 2 * len(self._clients))
