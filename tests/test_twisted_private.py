"""The private Twisted API smtppeer relies on, checked against the installed Twisted.

Each test names what ``smtppeer.twisted_private`` reads or overrides, so a
Twisted upgrade that changes one fails here, loudly and by name, instead of
silently disabling a fast path or leaking a UDP port per DNS query.
"""

from __future__ import annotations

import inspect
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, tcp
from twisted.names import client, dns
from twisted.protocols import tls

import twisted
from smtppeer import twisted_private
from smtppeer.twisted_private import idle_socket, parse_endpoint, parse_server_endpoint


@pytest.mark.parametrize(
    ("description", "args", "kwargs"),
    [
        ("tcp:host=mx.example:port=25", ["tcp"], {"host": "mx.example", "port": "25"}),
        ("tcp:mx.example:25", ["tcp", "mx.example", "25"], {}),
        (r"tcp:host=2001\:db8\:\:1:port=25", ["tcp"], {"host": "2001:db8::1", "port": "25"}),
        ("unix:/run/x.sock", ["unix", "/run/x.sock"], {}),
    ],
)
def test_parse_endpoint(description, args, kwargs):
    assert parse_endpoint(description) == (args, kwargs)


def test_parse_server_endpoint_checks_without_listening():
    kind, args, kwargs = parse_server_endpoint("tcp:2525:interface=127.0.0.1")
    assert (str(kind).lower(), args[0], kwargs["interface"]) == ("tcp", 2525, "127.0.0.1")
    with pytest.raises(ValueError):
        parse_server_endpoint("nosuchkind:25")


class _Quiet(protocol.Protocol):
    connected_d: defer.Deferred
    lost_d: defer.Deferred

    def connectionMade(self) -> None:
        type(self).connected_d.callback(self)

    def connectionLost(self, reason=None) -> None:
        type(self).lost_d.callback(None)


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred = defer.Deferred()

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


@defer.inlineCallbacks
def _listen_and_connect(server_protocol: type):
    """A loopback listener for ``server_protocol`` and a ``_Client`` connected to it:
    ``(port, client)``; the caller stops the port."""
    port = yield endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        protocol.Factory.forProtocol(server_protocol)
    )
    try:
        ep = endpoints.clientFromString(reactor, f"tcp:host=127.0.0.1:port={port.getHost().port}")
        client_side = yield endpoints.connectProtocol(ep, _Client())
    except Exception:
        yield port.stopListening()
        raise
    return port, client_side


@pytest_twisted.inlineCallbacks
def test_a_real_tcp_transport_has_what_idle_socket_reads():
    """``dataBuffer``, ``_tempDataBuffer``, ``_writeDisconnected``, ``TLS``,
    ``connected``, ``disconnecting`` and ``socket`` on Twisted's TCP connection."""
    _Quiet.connected_d, _Quiet.lost_d = defer.Deferred(), defer.Deferred()
    port, client_side = yield _listen_and_connect(_Quiet)
    try:
        server_side = yield _Quiet.connected_d
        transport = server_side.transport
        assert isinstance(transport, tcp.Connection)
        for name in ("dataBuffer", "_tempDataBuffer", "_writeDisconnected", "TLS", "disconnecting"):
            assert hasattr(transport, name), f"Twisted's TCP transport has no {name} any more"
        assert isinstance(idle_socket(transport), socket.socket)
        transport.write(b"x" * 100)  # buffered until the reactor's next turn
        assert idle_socket(transport) is None
        transport.loseConnection()
        yield _Quiet.lost_d
        yield client_side.lost
    finally:
        yield port.stopListening()


def test_idle_socket_refuses_what_is_not_a_plain_tcp_transport():
    assert idle_socket(object()) is None


def test_the_resolver_methods_clientresolver_overrides_are_still_there():
    """``ClientResolver`` overrides ``_query`` and calls ``_connectedProtocol(interface=...)``;
    ``connections`` and ``connectionLost`` are how it closes TCP connections."""
    assert list(inspect.signature(client.Resolver._query).parameters) == ["self", "args"]
    query = inspect.signature(dns.DNSDatagramProtocol.query)
    assert list(query.parameters)[:5] == ["self", "address", "queries", "timeout", "id"]
    connected = inspect.signature(client.Resolver._connectedProtocol)
    assert "interface" in connected.parameters
    assert callable(client.Resolver.connectionLost)
    resolver = twisted_private.ClientResolver(servers=[("127.0.0.1", 53)])
    assert isinstance(resolver.connections, list)


def test_the_tls_loop_halfcloseabletls_replaces_is_the_one_it_copied():
    """``HalfCloseableTLS._flushReceiveBIO`` is Twisted's loop with the
    ``ZeroReturnError`` branch changed: the original must still be that loop, over
    the same state (``_tlsConnection``, ``_lostTLSConnection``, ``_aborted``), and
    the methods it calls must still be there."""
    source = inspect.getsource(tls.TLSMemoryBIOProtocol._flushReceiveBIO)
    for needle in (
        "while not self._lostTLSConnection",
        "self._tlsConnection.recv(",
        "except WantReadError",
        "except ZeroReturnError",
        "self._shutdownTLS()",
        "self._tlsShutdownFinished(None)",
        "except Error",
        "if not self._aborted",
        "ProtocolWrapper.dataReceived(self, bytes)",
        "self._flushSendBIO()",
    ):
        assert needle in source, f"TLSMemoryBIOProtocol._flushReceiveBIO no longer has {needle!r}"
    for name in ("_shutdownTLS", "_tlsShutdownFinished", "_flushSendBIO", "_lostTLSConnection", "_aborted"):
        assert hasattr(tls.TLSMemoryBIOProtocol, name), f"TLSMemoryBIOProtocol has no {name} any more"
    assert issubclass(tls.TLSMemoryBIOFactory.protocol, tls.TLSMemoryBIOProtocol)


class _StartsTLS(protocol.Protocol):
    started: defer.Deferred
    lost: defer.Deferred

    def connectionMade(self) -> None:
        from smtppeer.peer.tls import server_options

        cert, key = type(self).paths
        twisted_private.start_tls(self.transport, server_options(cert, key))
        type(self).started.callback(self.transport)

    def connectionLost(self, reason=None) -> None:
        type(self).lost.callback(None)


@pytest_twisted.inlineCallbacks
def test_start_tls_makes_the_layer_startTLS_installs_half_closeable(tmp_path):
    """``startTLS`` on a TCP transport puts Twisted's TLS layer in ``transport.protocol``;
    ``start_tls`` makes that layer an ``IHalfCloseableProtocol`` (so the TCP
    transport reports a FIN to it) that still wraps the same protocol."""
    from twisted.internet.interfaces import IHalfCloseableProtocol

    from smtppeer.peer.tls import make_self_signed

    make_self_signed("x.test", str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    _StartsTLS.paths = (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    _StartsTLS.started, _StartsTLS.lost = defer.Deferred(), defer.Deferred()
    port, client_side = yield _listen_and_connect(_StartsTLS)
    try:
        transport = yield _StartsTLS.started
        layer = transport.protocol
        assert isinstance(layer, tls.TLSMemoryBIOProtocol)
        assert isinstance(layer, twisted_private.HalfCloseableTLS)
        assert IHalfCloseableProtocol(layer, None) is layer
        assert isinstance(layer.wrappedProtocol, _StartsTLS)
        client_side.transport.loseConnection()  # a FIN mid-handshake: the server side closes too
        yield client_side.lost
        yield _StartsTLS.lost
    finally:
        yield port.stopListening()


def test_twisted_is_within_the_tested_range():
    """setup.cfg's bound must cover the Twisted these tests just passed with."""
    major = int(twisted.__version__.split(".")[0])
    assert 23 <= major < 27, f"Twisted {twisted.__version__}: check twisted_private, then move the bound"
