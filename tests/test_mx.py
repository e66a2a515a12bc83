"""MX next-hop selection against a real ``twisted.names`` DNS server on loopback."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.names import authority, common, dns, server
from twisted.names import error as dns_error

from smtppeer.relay.mx import (
    ClientResolver,
    MXResolver,
    NextHop,
    PermanentDNSError,
    TemporaryDNSError,
    endpoint_description,
    resolver_from_address,
)

from .conftest import wait_until_async

ZONE = b"example.test"


def mx(preference: int, host: str) -> dns.Record_MX:
    return dns.Record_MX(preference, host.encode())


RECORDS: dict[bytes, list] = {
    # Two preferences with one host each, and two hosts sharing preference 20.
    b"mx.example.test": [
        mx(30, "backup.example.test"),
        mx(20, "b.example.test"),
        mx(10, "primary.example.test"),
        mx(20, "a.example.test"),
    ],
    b"primary.example.test": [dns.Record_A("192.0.2.1")],
    b"a.example.test": [dns.Record_A("192.0.2.2")],
    b"b.example.test": [dns.Record_A("192.0.2.3")],
    b"backup.example.test": [dns.Record_A("192.0.2.4")],
    b"implicit.example.test": [dns.Record_A("192.0.2.10")],
    b"nullmx.example.test": [dns.Record_MX(0, b"")],  # RFC 7505: preference 0, target "."
    b"mixed-null.example.test": [dns.Record_MX(0, b""), mx(10, "primary.example.test")],
    b"alias.example.test": [dns.Record_CNAME(b"mx.example.test")],
    b"ipmx.example.test": [mx(10, "192.0.2.7")],
    b"dup.example.test": [mx(20, "primary.example.test"), mx(10, "primary.example.test")],
    b"xn--bcher-kva.example.test": [dns.Record_A("192.0.2.11")],
    # Too many to fit a 512-byte UDP answer: truncated, then asked again over TCP.
    b"big.example.test": [mx(i, f"host-{i:02d}-with-a-rather-long-label.example.net") for i in range(30)],
}
BROKEN_ZONE = b"broken.test"


class MemoryAuthority(authority.FileAuthority):
    """An authoritative zone built in code instead of loaded from a file."""

    def __init__(self, soa: tuple[bytes, dns.Record_SOA], records: dict[bytes, list]) -> None:
        self._zone = (soa, records)
        super().__init__(None)

    def loadFile(self, filename):
        self.soa, self.records = self._zone


class ServFail(Exception):
    """Raised by the broken zone; the server turns it into SERVFAIL."""


class BrokenAuthority(common.ResolverBase):
    """Fails every query under ``broken.test``; other names go down the chain."""

    def _lookup(self, name, cls, type, timeout):
        if dns._isSubdomainOf(name, BROKEN_ZONE):
            return defer.fail(ServFail(name))
        return defer.fail(dns_error.DomainError(name))


class RecordingServerFactory(server.DNSServerFactory):
    """Records every query, and answers ``ServFail`` with SERVFAIL without logging an error.

    Twisted's server never truncates (a decoded query has ``maxSize=0``); this one
    truncates UDP answers at 512 bytes as RFC 1035 §4.2.1 says, so a big answer
    makes the client ask again over TCP.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queries: list[tuple[str, str, int]] = []

    def handleQuery(self, message, proto, address):
        transport = "udp" if address is not None else "tcp"
        for q in message.queries:
            self.queries.append((transport, q.name.name.decode(), q.type))
        return super().handleQuery(message, proto, address)

    def sendReply(self, proto, message, address):
        if address is not None:
            message.maxSize = 512
        super().sendReply(proto, message, address)

    def gotResolverError(self, failure, proto, message, address):
        if failure.check(ServFail):
            self.sendReply(proto, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)
            return
        super().gotResolverError(failure, proto, message, address)


@dataclass
class DNSServer:
    port: int
    factory: RecordingServerFactory
    ports: list = field(default_factory=list)

    @property
    def queries(self) -> list[tuple[str, str, int]]:
        return self.factory.queries


@pytest_twisted.async_yield_fixture
async def dns_server():
    soa = dns.Record_SOA(
        mname=b"ns.example.test", rname=b"hostmaster.example.test", serial=1, minimum=60, expire=60
    )
    zone = MemoryAuthority((ZONE, soa), RECORDS)
    factory = RecordingServerFactory(authorities=[BrokenAuthority(), zone])
    factory.noisy = False
    # UDP and TCP on the same free port number (a client falls back to TCP on the same server).
    for _ in range(50):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except error.CannotListenError:
            await udp.stopListening()
            continue
        break
    else:
        pytest.fail("no free port pair for the DNS server")
    srv = DNSServer(port, factory, [udp, tcp])
    try:
        yield srv
    finally:
        for p in srv.ports:
            await p.stopListening()
        for conn in list(factory.connections):
            conn.transport.loseConnection()
        await wait_until_async(lambda: not factory.connections, what="the DNS server's connections to close")


class RecordingReactor:
    """The real reactor, noting where the resolver sends datagrams and opens connections."""

    def __init__(self) -> None:
        self.udp_to: set[tuple[str, int]] = set()
        self.tcp_to: set[tuple[str, int]] = set()

    def __getattr__(self, name):
        return getattr(reactor, name)

    def listenUDP(self, port, proto, interface="", maxPacketSize=8192):
        listening = reactor.listenUDP(port, proto, interface, maxPacketSize)
        original_write = listening.write

        def write(datagram, addr=None):
            self.udp_to.add(addr)
            return original_write(datagram, addr)

        listening.write = write
        return listening

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        self.tcp_to.add((host, port))
        return reactor.connectTCP(host, port, factory, timeout, bindAddress)


@pytest.fixture
def recording_reactor() -> RecordingReactor:
    return RecordingReactor()


@pytest_twisted.async_yield_fixture
async def resolver(dns_server, recording_reactor):
    r = resolver_from_address("127.0.0.1", dns_server.port, timeout=(1, 2), reactor=recording_reactor)
    try:
        yield r
    finally:
        await r.stop()


class ReversingRNG:
    """A deterministic ``rng``: ``shuffle`` reverses, and remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def shuffle(self, items: list) -> None:
        self.calls.append(list(items))
        items.reverse()


async def failure_of(d: defer.Deferred) -> BaseException:
    try:
        result = await d
    except Exception as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


# ---------------------------------------------------------------------------------------------------
# Through the loopback DNS server


@pytest_twisted.ensureDeferred
async def test_mx_sorted_by_preference_equal_preferences_shuffled(resolver, dns_server):
    rng = ReversingRNG()
    hops = await MXResolver(resolver, rng=rng).next_hops("mx.example.test")
    assert hops == [
        NextHop("primary.example.test", 25, 10),
        NextHop("b.example.test", 25, 20),
        NextHop("a.example.test", 25, 20),
        NextHop("backup.example.test", 25, 30),
    ]
    assert rng.calls == [["a.example.test", "b.example.test"]]  # only the tied group is shuffled
    assert dns_server.queries == [("udp", "mx.example.test", dns.MX)]  # no A/AAAA lookups


@pytest_twisted.ensureDeferred
async def test_equal_preference_order_is_random_but_seedable(resolver):
    orders = set()
    for seed in range(16):
        hops = await MXResolver(resolver, rng=random.Random(seed)).next_hops("mx.example.test")
        again = await MXResolver(resolver, rng=random.Random(seed)).next_hops("mx.example.test")
        assert hops == again  # the same seed gives the same order
        assert [h.preference for h in hops] == [10, 20, 20, 30]
        assert (hops[0].host, hops[3].host) == ("primary.example.test", "backup.example.test")
        orders.add((hops[1].host, hops[2].host))
    assert orders == {("a.example.test", "b.example.test"), ("b.example.test", "a.example.test")}


@pytest_twisted.ensureDeferred
async def test_port_and_name_normalisation(resolver):
    hops = await MXResolver(resolver, port=2525, rng=ReversingRNG()).next_hops("MX.Example.TEST.")
    assert [h.port for h in hops] == [2525] * 4
    assert hops[0] == NextHop("primary.example.test", 2525, 10)


@pytest_twisted.ensureDeferred
async def test_no_mx_but_domain_exists_gives_implicit_mx(resolver, dns_server):
    hops = await MXResolver(resolver).next_hops("implicit.example.test")
    assert hops == [NextHop("implicit.example.test", 25, 0)]
    assert dns_server.queries == [("udp", "implicit.example.test", dns.MX)]


@pytest_twisted.ensureDeferred
async def test_internationalised_domain_is_looked_up_as_a_label(resolver, dns_server):
    hops = await MXResolver(resolver).next_hops("bücher.example.test")
    assert hops == [NextHop("xn--bcher-kva.example.test", 25, 0)]


@pytest_twisted.ensureDeferred
async def test_null_mx_fails_permanently_with_5_1_10(resolver):
    e = await failure_of(MXResolver(resolver).next_hops("nullmx.example.test"))
    assert isinstance(e, PermanentDNSError)
    assert e.status == "5.1.10"
    assert "null MX" in e.reason


@pytest_twisted.ensureDeferred
async def test_root_target_beside_real_mx_is_ignored(resolver):
    hops = await MXResolver(resolver).next_hops("mixed-null.example.test")
    assert hops == [NextHop("primary.example.test", 25, 10)]


@pytest_twisted.ensureDeferred
async def test_nxdomain_fails_permanently(resolver, dns_server):
    e = await failure_of(MXResolver(resolver).next_hops("missing.example.test"))
    assert isinstance(e, PermanentDNSError)
    assert e.status == "5.1.2"
    assert "NXDOMAIN" in e.reason
    assert isinstance(e.__cause__, dns_error.DNSNameError)


@pytest_twisted.ensureDeferred
async def test_servfail_fails_temporarily(resolver, dns_server):
    e = await failure_of(MXResolver(resolver).next_hops("mail.broken.test"))
    assert isinstance(e, TemporaryDNSError)
    assert e.status == "4.4.3"
    assert "SERVFAIL" in e.reason
    # DNSServerError subclasses DomainError, the NXDOMAIN base class: it must not be taken for one.
    assert isinstance(e.__cause__, dns_error.DNSServerError)
    assert isinstance(e.__cause__, dns_error.DomainError)
    assert dns_server.queries == [("udp", "mail.broken.test", dns.MX)]


@pytest_twisted.ensureDeferred
async def test_cname_is_followed(resolver, dns_server):
    hops = await MXResolver(resolver, rng=ReversingRNG()).next_hops("alias.example.test")
    assert [h.host for h in hops] == [
        "primary.example.test",
        "b.example.test",
        "a.example.test",
        "backup.example.test",
    ]
    assert [q[1] for q in dns_server.queries] == ["alias.example.test", "mx.example.test"]


@pytest_twisted.ensureDeferred
async def test_ip_literal_mx_target_is_accepted(resolver):
    hops = await MXResolver(resolver).next_hops("ipmx.example.test")
    assert hops == [NextHop("192.0.2.7", 25, 10)]


@pytest_twisted.ensureDeferred
async def test_host_listed_twice_is_kept_once_at_its_best_preference(resolver):
    hops = await MXResolver(resolver).next_hops("dup.example.test")
    assert hops == [NextHop("primary.example.test", 25, 10)]


@pytest_twisted.ensureDeferred
async def test_local_host_in_the_mx_list_cuts_it(resolver):
    hops = await MXResolver(resolver, rng=ReversingRNG(), local_names=["B.example.test."]).next_hops(
        "mx.example.test"
    )
    assert hops == [NextHop("primary.example.test", 25, 10)]
    e = await failure_of(
        MXResolver(resolver, local_names=["primary.example.test"]).next_hops("mx.example.test")
    )
    assert isinstance(e, PermanentDNSError)
    assert e.status == "5.4.6"


@pytest_twisted.ensureDeferred
async def test_truncated_answer_is_retried_over_tcp(resolver, dns_server):
    hops = await MXResolver(resolver).next_hops("big.example.test")
    assert [h.preference for h in hops] == list(range(30))
    assert hops[0].host == "host-00-with-a-rather-long-label.example.net"
    assert dns_server.queries == [("udp", "big.example.test", dns.MX), ("tcp", "big.example.test", dns.MX)]
    assert len(resolver.connections) == 1  # kept for reuse until resolver.stop()


@pytest_twisted.ensureDeferred
async def test_queries_go_only_to_the_configured_server(resolver, dns_server, recording_reactor):
    assert resolver.resolv is None  # /etc/resolv.conf is never read
    assert resolver.servers == [("127.0.0.1", dns_server.port)]
    mx_resolver = MXResolver(resolver)
    for domain in ("mx.example.test", "implicit.example.test", "alias.example.test", "big.example.test"):
        await mx_resolver.next_hops(domain)
    for domain in ("nullmx.example.test", "missing.example.test", "mail.broken.test"):
        await failure_of(mx_resolver.next_hops(domain))
    assert recording_reactor.udp_to == {("127.0.0.1", dns_server.port)}
    assert recording_reactor.tcp_to == {("127.0.0.1", dns_server.port)}
    assert len(dns_server.queries) == 9  # alias asks twice, big asks over UDP then TCP


@pytest_twisted.ensureDeferred
async def test_a_query_leaves_no_port_or_call_behind(resolver):
    """``client.Resolver`` closes its per-query UDP port one reactor turn late; ours does not."""
    before_readers = set(reactor.getReaders())
    await MXResolver(resolver).next_hops("mx.example.test")
    assert set(reactor.getReaders()) <= before_readers
    assert not [c for c in reactor.getDelayedCalls() if c.active()]


class BlackHole(protocol.DatagramProtocol):
    def datagramReceived(self, datagram, addr):
        self.received = getattr(self, "received", 0) + 1


@pytest_twisted.ensureDeferred
async def test_timeout_fails_temporarily():
    hole = BlackHole()
    port = reactor.listenUDP(0, hole, interface="127.0.0.1")
    r = resolver_from_address("127.0.0.1", port.getHost().port, timeout=(0.05, 0.1))
    try:
        e = await failure_of(MXResolver(r).next_hops("mx.example.test"))
    finally:
        await r.stop()
        await port.stopListening()
    assert isinstance(e, TemporaryDNSError)
    assert e.status == "4.4.3"
    assert "timeout" in e.reason
    assert hole.received == 2  # one query per timeout step


# ---------------------------------------------------------------------------------------------------
# Without a network


class FailingResolver:
    """An ``IResolver`` stand-in whose MX lookups fail with a given exception (or must not happen)."""

    def __init__(self, exc: Exception | None = None) -> None:
        self.exc = exc

    def lookupMailExchange(self, name, timeout=None):
        if self.exc is None:
            raise AssertionError(f"unexpected DNS query for {name!r}")
        return defer.fail(self.exc)


@pytest.mark.parametrize(
    "exc, kind",
    [
        (dns_error.DNSNameError("x"), PermanentDNSError),
        (dns_error.AuthoritativeDomainError("x"), PermanentDNSError),
        (dns_error.DomainError("x"), PermanentDNSError),
        (dns_error.DNSServerError("x"), TemporaryDNSError),
        (dns_error.DNSQueryRefusedError("x"), TemporaryDNSError),
        (dns_error.DNSFormatError("x"), TemporaryDNSError),
        (dns_error.DNSNotImplementedError("x"), TemporaryDNSError),
        (dns_error.DNSUnknownError("x"), TemporaryDNSError),
        (dns_error.DNSQueryTimeoutError(1), TemporaryDNSError),
        (defer.TimeoutError(), TemporaryDNSError),
        (OSError("network unreachable"), TemporaryDNSError),
    ],
)
@pytest_twisted.ensureDeferred
async def test_error_classification(exc, kind):
    e = await failure_of(MXResolver(FailingResolver(exc)).next_hops("example.test"))
    assert type(e) is kind
    assert e.status == ("5.1.2" if kind is PermanentDNSError else "4.4.3")
    assert e.__cause__ is exc


@pytest.mark.parametrize(
    "literal, host",
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:DB8::1]", "2001:db8::1"),
        ("[ipv6:::1]", "::1"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_address_literal_is_not_looked_up(literal, host):
    hops = await MXResolver(FailingResolver(), port=587).next_hops(literal)
    assert hops == [NextHop(host, 587, 0)]


@pytest.mark.parametrize("literal", ["[999.0.0.1]", "[IPv6:zz::1]", "[x-tag:content]", "[192.0.2.1", "[]"])
@pytest_twisted.ensureDeferred
async def test_unusable_address_literal_fails_permanently(literal):
    e = await failure_of(MXResolver(FailingResolver()).next_hops(literal))
    assert isinstance(e, PermanentDNSError)
    assert e.status == "5.1.2"


@pytest.mark.parametrize("domain", ["", ".", "a..b", "x" * 64 + ".test"])
@pytest_twisted.ensureDeferred
async def test_bad_domain_fails_permanently_without_a_query(domain):
    e = await failure_of(MXResolver(FailingResolver()).next_hops(domain))
    assert isinstance(e, PermanentDNSError)


def test_exceptions_carry_reason_and_status():
    e = PermanentDNSError("gone")
    assert (e.reason, e.status, e.permanent, str(e)) == ("gone", "5.1.2", True, "5.1.2 gone")
    t = TemporaryDNSError("later")
    assert (t.reason, t.status, t.permanent) == ("later", "4.4.3", False)
    assert PermanentDNSError("null", "5.1.10").status == "5.1.10"


def test_resolver_from_address_needs_an_ip():
    with pytest.raises(ValueError):
        resolver_from_address("localhost", 53)
    r = resolver_from_address("::1", 5353)
    assert isinstance(r, ClientResolver)
    assert r.servers == [("::1", 5353)]
    assert r.timeout == (1, 2, 4)


# ---------------------------------------------------------------------------------------------------
# endpoint_description


@pytest.mark.parametrize(
    "hop, description, host",
    [
        (NextHop("mx.example.test", 25), "tcp:host=mx.example.test:port=25", "mx.example.test"),
        (NextHop("192.0.2.1", 2525), "tcp:host=192.0.2.1:port=2525", "192.0.2.1"),
        (NextHop("2001:db8::1", 25), "tcp:host=2001\\:db8\\:\\:1:port=25", "2001:db8::1"),
        (NextHop("::ffff:192.0.2.1", 587), "tcp:host=\\:\\:ffff\\:192.0.2.1:port=587", "::ffff:192.0.2.1"),
    ],
)
def test_endpoint_description_parses_back(hop, description, host):
    assert endpoint_description(hop) == description
    endpoint = clientFromString(reactor, endpoint_description(hop))
    assert isinstance(endpoint, TCP4ClientEndpoint)
    assert (endpoint._host, endpoint._port) == (host, hop.port)


class Closer(protocol.Protocol):
    def connectionMade(self):
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.factory.lost += 1


@pytest.mark.parametrize("interface", ["127.0.0.1", "::1"])
@pytest_twisted.ensureDeferred
async def test_endpoint_description_connects(interface):
    server_factory = protocol.Factory.forProtocol(Closer)
    server_factory.lost = 0
    try:
        listening = reactor.listenTCP(0, server_factory, interface=interface)
    except error.CannotListenError:
        pytest.skip(f"cannot listen on {interface}")
    try:
        endpoint = clientFromString(
            reactor, endpoint_description(NextHop(interface, listening.getHost().port))
        )
        lost: defer.Deferred = defer.Deferred()

        class Client(protocol.Protocol):
            def connectionLost(self, reason):
                lost.callback(None)

        await endpoint.connect(protocol.Factory.forProtocol(Client))
        await lost
        await wait_until_async(lambda: server_factory.lost == 1, what="the server to see the connection lost")
    finally:
        await listening.stopListening()
