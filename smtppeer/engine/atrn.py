"""ATRN (RFC 2645, On-Demand Mail Relay), provider side.

ATRN is TURN made safe: it needs a successful AUTH first (530 otherwise),
and it names the domains whose mail the client wants (none: all of its
own).  Whether the identity owns them, and whether there is mail, is the
adapter's decision (450, 451, 453 or 250 and turn).
"""

from __future__ import annotations

from . import events as ev
from .address import is_domain
from .extensions import Extension, ExtensionHost
from .replies import Reply, reply

# RFC 2645 §4: the provider may answer anything else with 502 on the ODMR port.
ODMR_COMMANDS = frozenset({"EHLO", "AUTH", "ATRN", "QUIT", "STARTTLS", "NOOP", "RSET", "HELP"})


def parse_domains(argument: str) -> list[str] | None:
    """``dom1,dom2`` (RFC 2645 §5: ``ATRN [SP domain *("," domain)]``); None if malformed."""
    if not argument:
        return []
    domains = [d.strip().lower() for d in argument.split(",")]
    return domains if all(is_domain(d) for d in domains) else None


class Atrn(Extension):
    keyword = "ATRN"

    @staticmethod
    def _atrn(receiver: ExtensionHost, arg: str) -> Reply | ev.Event:
        if receiver.helo_name is None or not receiver.esmtp:
            return reply(503, "5.5.1", "Send EHLO first")
        if receiver.in_transaction:
            return reply(503, "5.5.1", "ATRN is not allowed inside a mail transaction")
        if receiver.authenticated is None:
            return reply(530, "5.7.0", "Authentication required")
        domains = parse_domains(arg.strip())
        if domains is None:
            return reply(501, "5.5.4", "Syntax: ATRN [domain[,domain...]]")
        return ev.TurnRequested("ATRN", domains)

    commands = {"ATRN": _atrn}
