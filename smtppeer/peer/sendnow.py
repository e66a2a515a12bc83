"""Send a short reply at once instead of at the reactor's next turn.

Twisted's TCP transport buffers every ``write`` until the next reactor
iteration: it registers for writability (an ``epoll_ctl``), the next poll
reports it, ``doWrite`` sends, and it unregisters (another ``epoll_ctl``).
An SMTP receiver writes one short reply per command, usually into an empty
socket buffer, so that round costs more than the send itself (the
instruction counts are in ``docs/benchmarks.rst``).

So :func:`send_now` hands the kernel what it takes at once, and returns the
rest for ``transport.write``.  It does so only where that cannot reorder
or lose anything: a plain (not TLS) TCP transport, connected, not closing,
with nothing buffered of its own; in every other case, and on any socket
error, the whole of ``data`` goes the usual way and Twisted deals with it.
The checks read undocumented attributes of Twisted's TCP transport
(``twisted_private.idle_socket``); a transport without them simply never
takes the shortcut.
"""

from __future__ import annotations

from smtppeer.twisted_private import idle_socket


def send_now(transport: object, data: bytes) -> bytes:
    """Send as much of ``data`` as the socket takes without blocking; return the rest."""
    sock = idle_socket(transport)
    if sock is None:
        return data
    try:
        sent = sock.send(data)
    except OSError:  # full (EAGAIN), or broken: Twisted's own write path handles both
        return data
    return data[sent:]
