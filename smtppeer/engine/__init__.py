"""The sans-IO SMTP engine: state machines that take bytes and return events.

Nothing here does I/O, reads a clock or imports Twisted, so every protocol
rule can be tested with plain bytes.  ``smtppeer.peer.protocol`` drives it over a
real connection.
"""

from .address import AddressError, Mailbox, Path, parse_path
from .limits import Limits
from .receiver import Receiver
from .replies import Reply, reply
from .sender import Envelope, Sender

__all__ = [
    "AddressError",
    "Envelope",
    "Limits",
    "Mailbox",
    "Path",
    "Receiver",
    "Reply",
    "Sender",
    "parse_path",
    "reply",
]
