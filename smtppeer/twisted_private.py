"""Every use of Twisted's private (underscore or undocumented) API, in one place.

Twisted has no public way to parse an endpoint description without building
the endpoint (``endpoints._parse``, ``_parseServer``), to tell whether a TCP
transport has anything buffered (``dataBuffer``, ``_tempDataBuffer``,
``_writeDisconnected``), or to make a ``twisted.names`` client query
complete only once its UDP port is closed (``Resolver._query``,
``_connectedProtocol``).  ``tests/test_twisted_private.py`` checks each of
these against the installed Twisted and fails, naming the attribute, when
an upgrade removes or changes one; ``setup.cfg`` caps Twisted at the
versions that test has passed with.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import _parse, _parseServer
from twisted.names import client


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
