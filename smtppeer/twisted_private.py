"""Every use of Twisted's private (underscore or undocumented) API, in one place.

Twisted has no public way to parse an endpoint description without building
the endpoint (``endpoints._parse``, ``_parseServer``), to tell whether a TCP
transport has anything buffered (``dataBuffer``, ``_tempDataBuffer``,
``_writeDisconnected``), to make a ``twisted.names`` client query
complete only once its UDP port is closed (``Resolver._query``,
``_connectedProtocol``), or to let a TLS connection half-close
(``TLSMemoryBIOProtocol._flushReceiveBIO`` and the state it keeps, and the
``protocol`` that ``startTLS`` puts on a TCP transport).
``tests/test_twisted_private.py`` checks each of these against the
installed Twisted and fails, naming the attribute, when an upgrade removes
or changes one; ``setup.cfg`` caps Twisted at the versions that test has
passed with.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import defer, tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import _parse, _parseServer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.names import client
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import alsoProvides, classImplements


def parse_endpoint(description: str) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword parts of an endpoint description
    (``tcp:host=H:port=P`` -> ``(["tcp"], {"host": "H", "port": "P"})``), with
    Twisted's quoting rules (backslash escapes), and nothing built."""
    args, kwargs = _parse(description)
    return list(args), dict(kwargs)


def parse_server_endpoint(description: str) -> tuple[Any, tuple, dict[str, Any]]:
    """``(kind, args, kwargs)`` of a server endpoint description, checked by the
    endpoint's own parser (a plugin's too) without listening."""
    return _parseServer(description, None)


def idle_socket(transport: object) -> socket.socket | None:
    """The socket of a plain (not TLS) TCP transport that is connected, not closing,
    and has nothing of its own buffered: data sent on it now cannot overtake
    anything.  None for anything else (a wrapper in front of one, which would not
    see what is sent past it, included)."""
    if not isinstance(transport, tcp.Connection):
        return None
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or getattr(transport, "TLS", True)
        or not getattr(transport, "connected", False)
        or getattr(transport, "disconnecting", True)
        or getattr(transport, "_writeDisconnected", True)
        or getattr(transport, "dataBuffer", True)
        or getattr(transport, "_tempDataBuffer", True)
    ):
        return None
    return sock


class ClientResolver(client.Resolver):
    """A ``twisted.names`` client resolver that leaves nothing behind in the reactor.

    ``client.Resolver`` opens one UDP port per query and closes it with
    ``stopListening()``, which only schedules the close (``callLater(0)``): the
    query's Deferred fires while the port still exists.  Here a query completes
    only once its port is closed.  TCP connections (opened after a truncated
    UDP answer) are kept for reuse; :meth:`stop` closes them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closing: dict[Any, list[defer.Deferred[None]]] = {}

    def _query(self, *args: Any) -> defer.Deferred[Any]:
        address = args[0]
        protocol = self._connectedProtocol(interface="::" if isIPv6Address(address[0]) else "")
        d = protocol.query(*args)

        def closed(result: Any) -> Any:
            stopped = protocol.transport.stopListening()
            if stopped is None:
                return result
            return stopped.addCallback(lambda _: result)

        return d.addBoth(closed)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        for d in self._closing.pop(protocol, []):
            d.callback(None)

    def stop(self) -> defer.Deferred[None]:
        """Close the TCP connections; fires when they are gone."""
        waits = []
        for protocol in list(self.connections):
            d: defer.Deferred[None] = defer.Deferred()
            self._closing.setdefault(protocol, []).append(d)
            waits.append(d)
            protocol.transport.loseConnection()
        return defer.gatherResults(waits).addCallback(lambda _: None)


class HalfCloseableTLS:
    """Twisted's TLS layer, except that the end of the peer's side is a half-close.

    ``TLSMemoryBIOProtocol`` answers the peer's ``close_notify`` with its own and
    closes the connection at once, and a FIN closes it too: whatever the
    protocol inside still had to say is dropped.  An SMTP client may end its
    side right after ``QUIT`` and still read the replies (Exim does, in clear
    with a FIN), so here the protocol inside, if it is an
    ``IHalfCloseableProtocol``, is told ``readConnectionLost`` instead, and may
    go on writing; its ``loseConnection`` then sends our ``close_notify`` and
    closes the TCP connection (without waiting for a ``close_notify`` that a
    peer which only sent a FIN will never send).  ``_flushReceiveBIO`` is
    Twisted's loop with that one branch changed.

    A mixin, put in front of whichever ``TLSMemoryBIOProtocol`` subclass
    ``startTLS`` chose (``BufferingTLSTransport`` since Twisted 22.8).
    """

    _input_ended = False  # the peer's close_notify or FIN has come: it sends nothing more

    def _flushReceiveBIO(self) -> None:
        while not self._lostTLSConnection and not self._input_ended:
            try:
                data = self._tlsConnection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                self._peer_ended(close_notify=True)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def readConnectionLost(self) -> None:
        """The TCP connection's read side ended (``IHalfCloseableProtocol``)."""
        if not self._input_ended and not self._lostTLSConnection:
            self._peer_ended(close_notify=False)
        elif self.disconnecting:
            self.transport.loseConnection()  # our close_notify is out; theirs will not come

    def writeConnectionLost(self) -> None:
        inner = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if inner is not None:
            inner.writeConnectionLost()

    def _peer_ended(self, close_notify: bool) -> None:
        self._input_ended = True
        inner = IHalfCloseableProtocol(self.wrappedProtocol, None)
        if self.disconnecting or inner is None:
            # Our close_notify went first (or the protocol cannot half-close): what
            # Twisted does, which ends the connection.
            if close_notify:
                self._shutdownTLS()
            self._tlsShutdownFinished(None)
            return
        inner.readConnectionLost()

    def _shutdownTLS(self) -> None:
        super()._shutdownTLS()
        if self._input_ended:
            # The peer sends nothing more, so it will not answer our close_notify: close now.
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._input_ended = True  # nothing more is read, and nobody is told twice
        super().connectionLost(reason)


@functools.cache
def _half_closeable(layer_class: type) -> type:
    made = type(f"HalfCloseable{layer_class.__name__}", (HalfCloseableTLS, layer_class), {})
    classImplements(made, IHalfCloseableProtocol)
    return made


def start_tls(transport: Any, creator: object) -> None:
    """``transport.startTLS(creator)``, with the TLS layer it installs made half-closeable
    (``HalfCloseableTLS``).  A transport whose TLS layer is not Twisted's
    ``TLSMemoryBIOProtocol`` keeps it, and with it Twisted's own behaviour."""
    transport.startTLS(creator)
    layer = getattr(transport, "protocol", None)
    if isinstance(layer, TLSMemoryBIOProtocol) and not isinstance(layer, HalfCloseableTLS):
        layer.__class__ = _half_closeable(type(layer))
        # The layer copies the transport's interfaces onto itself, which pins the old class's.
        alsoProvides(layer, IHalfCloseableProtocol)
