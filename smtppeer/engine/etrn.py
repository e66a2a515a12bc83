"""ETRN (RFC 1985), server side: ask the server to start delivering what it
holds for a node, over a new connection.  The engine checks the syntax; who
may ask and what gets started is the adapter's decision."""

from __future__ import annotations

from . import events as ev
from .address import is_domain
from .extensions import Extension, ExtensionHost
from .replies import Reply, reply

_QUEUE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def parse_node(argument: str) -> tuple[str, str] | None:
    """``(node, kind)`` for ``domain``, ``@domain`` or ``#queue``; None if malformed."""
    if argument.startswith("#"):
        name = argument[1:]
        if name and len(name) <= 255 and set(name) <= _QUEUE_NAME_CHARS:
            return name, "queue"
        return None
    if argument.startswith("@"):
        return (argument[1:].lower(), "subdomains") if is_domain(argument[1:]) else None
    return (argument.lower(), "domain") if is_domain(argument) else None


class Etrn(Extension):
    keyword = "ETRN"

    @staticmethod
    def _etrn(receiver: ExtensionHost, arg: str) -> Reply | ev.Event:
        if receiver.helo_name is None:
            return reply(503, "5.5.1", "Send EHLO first")
        if receiver.in_transaction:
            return reply(503, "5.5.1", "ETRN is not allowed inside a mail transaction")
        node = parse_node(arg.strip())
        if node is None:
            return reply(501, "5.5.4", "Syntax: ETRN domain, ETRN @domain or ETRN #queue")
        return ev.QueueStartRequested(*node)

    commands = {"ETRN": _etrn}
