"""Routing decisions, and the rules that keep the peer from being an open relay."""

from __future__ import annotations

import pytest
from twisted.internet import endpoints, reactor

from smtppeer.engine import parse_path
from smtppeer.policy.routing import HOLD, LOCAL, MX, REFUSE, RELAY, Router


def router(**kw) -> Router:
    defaults = dict(
        hostname="peer.test",
        local_domains=["peer.test", "localhost"],
        routes={"partner.test": "tcp:host=127.0.0.1:port=2600", ".corp.test": MX},
        holds={"dialup.test": "dialup", ".dial.test": "dialup2"},
        relay_from=["127.0.0.0/8", "::1/128"],
    )
    defaults.update(kw)
    return Router(**defaults)


def decide(r: Router, address: str, client: str = "192.0.2.7", auth: str | None = None):
    path, _ = parse_path(address, reverse=False)
    return r.decide(path, client, auth)


@pytest.mark.parametrize(
    ("address", "kind", "target"),
    [
        ("<u@peer.test>", LOCAL, None),
        ("<u@LOCALHOST>", LOCAL, None),
        ("<postmaster>", LOCAL, None),
        ("<u@dialup.test>", HOLD, "dialup"),
        ("<u@a.dial.test>", HOLD, "dialup2"),
        ("<u@partner.test>", RELAY, "tcp:host=127.0.0.1:port=2600"),
        ("<u@x.corp.test>", RELAY, MX),
        ("<u@corp.test>", REFUSE, None),  # ".corp.test" is subdomains only
        ("<u@elsewhere.test>", REFUSE, None),
    ],
)
def test_destinations_anyone_may_send_to(address, kind, target):
    d = decide(router(), address)
    assert (d.kind, d.target) == (kind, target)
    if kind == REFUSE:
        assert (d.reply.code, d.reply.enhanced) == (550, "5.7.1")


def test_never_an_open_relay_without_a_catch_all_route():
    r = router()
    for client in ("192.0.2.7", "127.0.0.1", "::1"):
        assert decide(r, "<u@elsewhere.test>", client).kind == REFUSE


def test_the_catch_all_route_is_only_for_trusted_or_authenticated_clients():
    r = router(routes={"*": "tcp:host=smarthost.test:port=25"})
    assert decide(r, "<u@elsewhere.test>", "192.0.2.7").kind == REFUSE
    assert decide(r, "<u@elsewhere.test>", "10.1.2.3").kind == REFUSE
    for client in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        d = decide(r, "<u@elsewhere.test>", client)
        assert (d.kind, d.target) == (RELAY, "tcp:host=smarthost.test:port=25"), client
    assert decide(r, "<u@elsewhere.test>", "192.0.2.7", auth="alice").kind == RELAY
    assert decide(r, "<u@elsewhere.test>", "not-an-ip").kind == REFUSE


def test_source_route_through_this_peer_is_shortened_and_relayed():
    r = router()
    d = decide(r, "<@peer.test,@partner.test:joe@three.test>", "192.0.2.7")
    assert (d.kind, d.target, d.domain) == (RELAY, "tcp:host=127.0.0.1:port=2600", "partner.test")
    assert str(d.path) == "<@partner.test:joe@three.test>"


def test_source_route_to_an_unrouted_host_needs_relay_rights():
    r = router()
    assert decide(r, "<@peer.test,@evil.test:joe@three.test>", "192.0.2.7").kind == REFUSE
    d = decide(r, "<@peer.test,@next.test:joe@three.test>", "127.0.0.1")
    assert (d.kind, d.target, str(d.path)) == (RELAY, MX, "<@next.test:joe@three.test>")


def test_source_route_whose_last_hop_is_us_routes_by_the_mailbox():
    r = router()
    d = decide(r, "<@peer.test:joe@peer.test>")
    assert d.kind == LOCAL and str(d.path) == "<joe@peer.test>"
    assert decide(r, "<@peer.test:joe@elsewhere.test>").kind == REFUSE


def test_rfc5321_mode_ignores_source_routes():
    r = router(honour_source_routes=False)
    d = decide(r, "<@partner.test,@x.test:joe@peer.test>")
    assert d.kind == LOCAL and str(d.path) == "<joe@peer.test>"


def test_address_literals():
    r = router(local_domains=["peer.test", "[127.0.0.1]"])
    assert decide(r, "<u@[127.0.0.1]>").kind == LOCAL
    assert decide(r, "<u@[192.0.2.1]>", "192.0.2.7").kind == REFUSE
    d = decide(r, "<u@[IPv6:2001:db8::1]>", "127.0.0.1")
    assert d.kind == RELAY
    endpoint = endpoints.clientFromString(reactor, d.target)  # a valid endpoint description
    assert (endpoint._host, endpoint._port) == ("2001:db8::1", 25)
    assert decide(r, "<u@[192.0.2.1]>", "127.0.0.1").target == "tcp:host=192.0.2.1:port=25"


def test_accept_any_domain_makes_every_unrouted_domain_local_but_keeps_routes_and_holds():
    router = Router(
        "capture.test",
        ["capture.test"],
        routes={"far.test": "tcp:host=127.0.0.1:port=9"},
        holds={"held.test": "peer"},
        accept_any_domain=True,
    )

    def kind(r: Router, address: str):
        return r.decide(parse_path(f"<{address}>", reverse=False)[0], "192.0.2.1").kind

    assert kind(router, "u@anything.example") == LOCAL
    assert kind(router, "u@far.test") == RELAY
    assert kind(router, "u@held.test") == HOLD
    assert kind(Router("a.test", ["a.test"]), "u@anything.example") == REFUSE
