"""Who exists in a local domain: a catch-all, or a list of users with aliases.

``Mailboxes.targets`` answers RCPT (an empty list: ``550 5.1.1``) and tells
delivery which Maildirs a recipient's copy goes to after aliases, so the two
can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from smtppeer.engine import Path


@dataclass
class Mailbox:
    """A local domain's mailboxes: a catch-all, or an explicit list with aliases."""

    catch_all: bool = True
    users: list[str] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # local part -> local parts or addresses


class Mailboxes:
    def __init__(
        self,
        domains: dict[str, Mailbox] | None,
        primary_domain: str,
        is_local: Callable[[str], bool],
    ) -> None:
        """``domains`` without an entry for a local domain make it a catch-all;
        ``primary_domain`` is where ``<postmaster>`` without a domain goes;
        ``is_local`` says whether an alias target's domain is one of ours."""
        self.domains = {d.lower(): box for d, box in (domains or {}).items()}
        self.primary_domain = primary_domain
        self.is_local = is_local

    def targets(self, path: Path) -> list[tuple[str, str]]:
        """``(domain, local part)`` of every Maildir a local recipient delivers to, after
        aliases; an empty list for a user that does not exist.  A target may
        also be a remote address, returned as ``("", address)``."""
        box = path.mailbox
        domain = box.domain_key or self.primary_domain
        local = "postmaster" if box.is_postmaster else box.local_unquoted.lower()
        settings = self.domains.get(domain)
        if settings is None or (settings.catch_all and local not in settings.aliases):
            return [(domain, local)]
        targets = settings.aliases.get(local)
        if targets is None:
            if local in settings.users or local == "postmaster":  # postmaster always exists
                return [(domain, local)]
            return []
        out = []
        for target in [targets] if isinstance(targets, str) else targets:
            t_local, at, t_domain = target.rpartition("@")
            if not at:
                out.append((domain, target.lower()))
            elif self.is_local(t_domain):
                out.append((t_domain.lower(), t_local.lower()))
            else:
                out.append(("", target))
        return out
