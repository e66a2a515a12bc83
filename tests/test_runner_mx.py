"""The queue runner routing by MX, against a DNS server the test runs on loopback."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.names import dns

from smtppeer.policy.routing import MX
from smtppeer.relay.mx import MXResolver, resolver_from_address
from smtppeer.store.spool import PENDING, Envelope, Recipient

from .peerutil import Listener, MemoryHooks
from .test_mx import MemoryAuthority, RecordingServerFactory, mx
from .test_runner import Harness


def zone() -> MemoryAuthority:
    soa = dns.Record_SOA(mname=b"ns.mx.test", rname=b"hostmaster.mx.test", serial=1, minimum=60, expire=60)
    records = {
        # the preferred exchanger is down; the second one (our listener) takes the mail
        b"dest.mx.test": [mx(10, "127.0.0.2"), mx(20, "127.0.0.1")],
        b"nullmx.mx.test": [dns.Record_MX(0, b"")],
    }
    return MemoryAuthority((b"mx.test", soa), records)


@pytest_twisted.inlineCallbacks
def test_mx_route_tries_exchangers_in_order_and_null_mx_fails(spool):
    factory = RecordingServerFactory(authorities=[zone()])
    factory.noisy = False
    udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    hooks = MemoryHooks()
    listener = Listener("dest.mx.test", hooks)
    port = yield listener.start()
    resolver = resolver_from_address("127.0.0.1", udp.getHost().port)
    h = Harness(spool, port, resolver=MXResolver(resolver, port=port))
    try:
        for queue_id, address in (("M1", "u@dest.mx.test"), ("M2", "u@nullmx.mx.test")):
            domain = address.split("@")[1]
            env = Envelope(
                queue_id,
                "a@peer.test",
                [Recipient(address, PENDING, {"relay": MX, "domain": domain})],
                arrival=h.clock.seconds(),
            )
            sink = spool.new_message(env, b"")
            sink.write(b"Subject: mx\r\n\r\nx\r\n")
            yield sink.finish()
        h.runner.startService()
        yield h.run()
        assert [s.recipients for s in hooks.stored] == [["u@dest.mx.test"]]
        assert "M1" not in spool.ids()
        assert {q[1] for q in factory.queries} == {"dest.mx.test", "nullmx.mx.test"}
        # the null MX domain failed for good (RFC 7505) and was bounced to the local sender
        [(rcpts, dsn)] = h.local
        assert b"5.1.10" in dsn
        for peer in listener.peers:
            yield peer.done
    finally:
        h.runner.stopService()
        yield resolver.stop()
        yield udp.stopListening()
        yield listener.stop()
