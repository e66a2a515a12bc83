"""``[domains]``, ``[routes]`` and ``[holds]``: where mail for each domain goes."""

from __future__ import annotations

from typing import Any

from ..config import Config, Mailbox
from .errors import Key, _show
from .values import _DOMAIN, Values


class Domains(Values):
    def domains(self, value: Any) -> dict[str, Mailbox]:
        self.check(value, ("domains",), dict, 'a table of domains ([domains."example.org"])')
        domains: dict[str, Mailbox] = {}
        for name, spec in value.items():
            key: Key = ("domains", name)
            domain = self.domain(name, key)
            if domain in domains:
                raise self.error(key, f"{domain} is given twice")
            domains[domain] = self.mailbox(spec, key)
        return domains

    def mailbox(self, spec: Any, key: Key) -> Mailbox:
        self.table(spec, key, ("catch_all", "users", "aliases"))
        users = self.array(spec.get("users", []), (*key, "users"), self.local_part)
        for i, user in enumerate(users):
            if user in users[:i]:
                raise self.error((*key, "users", i), f"{_show(user)} is listed twice")
        catch_all = self.boolean(spec["catch_all"], (*key, "catch_all")) if "catch_all" in spec else not users
        aliases: dict[str, list[str]] = {}
        raw = self.check(spec.get("aliases", {}), (*key, "aliases"), dict, "a table of aliases")
        for name, targets in raw.items():
            akey: Key = (*key, "aliases", name)
            self.local_part(name, akey)
            if name in users:
                raise self.error(akey, f'"{name}" is also a user; a name is either a user or an alias')
            if isinstance(targets, str):
                targets = [targets]
            expected = "an address, a local part or an array of them"
            targets = self.check(targets, akey, list, expected)
            if not targets:
                raise self.error(akey, "an alias needs at least one target")
            aliases[name] = [self.alias_target(t, (*akey, i)) for i, t in enumerate(targets)]
        if not catch_all:
            if not users and not aliases:
                raise self.error(key, "no mailboxes: list users (or aliases), or set catch_all = true")
            for name, targets in aliases.items():
                for i, target in enumerate(targets):
                    if "@" not in target and target not in users and target not in aliases:
                        raise self.error(
                            (*key, "aliases", name, i),
                            f"{_show(target)} is neither a user nor an alias of this domain",
                        )
        return Mailbox(catch_all=catch_all, users=users, aliases=aliases)

    def alias_target(self, value: Any, key: Key) -> str:
        self.string(value, key)
        local, at, domain = value.strip().rpartition("@")
        if not at:
            return self.local_part(value.strip(), key)
        if not local or any(c.isspace() for c in local) or not _DOMAIN.fullmatch(domain.lower().rstrip(".")):
            raise self.error(key, f"{_show(value)} is not an address (local@domain) or a local part")
        return value.strip()

    def holds(self, value: Any, config: Config) -> dict[str, str]:
        self.check(value, ("holds",), dict, "a table (DOMAIN = PEER)")
        holds: dict[str, str] = {}
        for name, target in value.items():
            key: Key = ("holds", name)
            domain = self.domain(name, key, pattern=True)
            self.not_local(domain, key, config, "held")
            if domain in holds:
                raise self.error(key, f"{domain} is given twice")
            holds[domain] = self.peer_name(target, key, config).name
        return holds

    def routes(self, value: Any, config: Config) -> dict[str, str]:
        self.check(value, ("routes",), dict, "a table (DOMAIN = ENDPOINT, mx or peer:NAME)")
        routes: dict[str, str] = {}
        for name, target in value.items():
            key: Key = ("routes", name)
            domain = self.domain(name, key, pattern=True, star=True)
            self.not_local(domain, key, config, "routed")
            if domain in config.holds:
                raise self.error(key, f'{domain} is also held for peer "{config.holds[domain]}" ([holds])')
            if domain in routes:
                raise self.error(key, f"{domain} is given twice")
            target = self.string(target, key).strip()
            if target.lower() == "mx":
                target = "mx"
            elif target.lower().startswith("peer:"):
                peer = self.peer_name(target[5:], key, config)
                if peer.endpoint is None:
                    raise self.error(
                        key,
                        f'peer "{peer.name}" has no endpoint to relay through '
                        "(to keep mail until it calls in, use [holds])",
                    )
                target = "peer:" + peer.name
            else:
                self.client_endpoint(target, key)
            routes[domain] = target
        return routes

    def not_local(self, domain: str, key: Key, config: Config, what: str) -> None:
        if domain in config.domains:
            raise self.error(
                key, f"{domain} is a local domain ([domains]): its mail is delivered here, not {what}"
            )

    def check_peer_domains(self, config: Config) -> None:
        for name, peer in config.peers.items():
            for i, domain in enumerate(peer.domains):
                key: Key = ("peers", name, "domains", i)
                self.not_local(domain, key, config, "the peer's")
                held = config.holds.get(domain)
                if held is not None and held != name:
                    raise self.error(key, f'{domain} is held for another peer, "{held}" ([holds])')
