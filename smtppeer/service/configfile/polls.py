"""``[[polls]]``: the schedules on which this host calls its peers."""

from __future__ import annotations

from typing import Any

from smtppeer.relay.holds import PollMethod

from ..config import ODMR_PORT, Config, Peer, Poll, SendMode
from .errors import Key, _show
from .values import _PEER_NAME, Values, endpoint_port

POLL_METHODS = tuple(PollMethod)


class Polls(Values):
    def etrn_node(self, text: str, key: Key) -> str:
        """What ETRN may ask for (RFC 1985): ``domain``, ``@domain`` (it and its
        subdomains) or ``#queue`` (a queue by name: here, a peer's)."""
        text = text.strip()
        if text.startswith("#"):
            if not _PEER_NAME.fullmatch(text[1:]):
                raise self.error(key, f"{_show(text)} is not a queue (#NAME, NAME like a peer's)")
            return text
        if text.startswith("@"):
            return "@" + self.domain(text[1:], key)
        return self.domain(text, key)

    def polls(self, value: Any, config: Config) -> list[Poll]:
        polls: list[Poll] = []
        for i, spec in enumerate(self.check(value, ("polls",), list, "an array of tables ([[polls]])")):
            key: Key = ("polls", i)
            self.table(spec, key, ("peer", "interval", "jitter", "method", "domains", "max_backoff"))
            if "peer" not in spec:
                raise self.error(key, 'missing "peer" (the name of a [peers.NAME] to poll)')
            peer = self.peer_name(spec["peer"], (*key, "peer"), config)
            for j, other in enumerate(polls):
                if other.peer == peer.name:
                    raise self.error((*key, "peer"), f'peer "{peer.name}" is already polled by polls[{j}]')
            poll = self.poll(spec, key, peer)
            if peer.poll_endpoint(poll.method) is None:
                where = "endpoint or odmr_endpoint" if poll.method == PollMethod.ATRN else "endpoint"
                raise self.error(
                    (*key, "peer"), f'peer "{peer.name}" has no {where} to poll (peers.{peer.name})'
                )
            polls.append(poll)
        return polls

    def on_poll_peers(self, config: Config) -> None:
        """``send = "on-poll"`` leaves mail for the peer's polls: it needs polls that can send
        it, or it would wait for nothing until the queue lifetime bounces it."""
        polled = {p.peer: p for p in config.polls}
        for peer in config.peers.values():
            if peer.send != SendMode.ON_POLL:
                continue
            key: Key = ("peers", peer.name, "send")
            if peer.endpoint is None:
                raise self.error(key, f'"on-poll": peer "{peer.name}" has no endpoint to send its mail to')
            poll = polled.get(peer.name)
            if poll is None:
                raise self.error(key, f'"on-poll" waits for polls of "{peer.name}": no [[polls]] polls it')
            if poll.method == PollMethod.ATRN and peer.odmr_endpoint is None:
                raise self.error(
                    key,
                    f'"on-poll": peer "{peer.name}" is polled by ATRN at its endpoint, an ODMR port, which '
                    "takes no mail (RFC 2645): give the ODMR port as odmr_endpoint",
                )

    def odmr_routes(self, config: Config) -> None:
        """A route through a peer whose endpoint is an ODMR port is mail that can never be
        sent (RFC 2645: that port takes no MAIL); refuse it here rather than bounce it."""
        atrn_only = {p.peer for p in config.polls if p.method == PollMethod.ATRN}
        for domain, target in config.routes.items():
            if not target.startswith("peer:"):
                continue
            peer = config.peers[target[5:]]
            if endpoint_port(peer.endpoint or "") == ODMR_PORT:
                why = f"has port {ODMR_PORT} as its endpoint, the ODMR port"
            elif peer.endpoint == peer.odmr_endpoint:
                why = "has its odmr_endpoint as its endpoint, an ODMR port"
            elif peer.name in atrn_only and peer.odmr_endpoint is None:
                why = "is polled by ATRN at its endpoint, an ODMR port"
            else:
                continue
            raise self.error(
                ("routes", domain),
                f'peer "{peer.name}" {why}, which takes no mail (RFC 2645): give its SMTP port as '
                "endpoint and the ODMR port as odmr_endpoint",
            )

    def poll(self, spec: dict[str, Any], key: Key, peer: Peer) -> Poll:
        """One ``[[polls]]`` table, for a peer that has an endpoint."""
        poll = Poll(peer.name)
        if "interval" in spec:
            poll.interval = self.duration(spec["interval"], (*key, "interval"))
        if "jitter" in spec:
            poll.jitter = self.jitter(spec["jitter"], (*key, "jitter"))
        if "method" in spec:
            text = self.string(spec["method"], (*key, "method")).strip().lower()
            if text not in POLL_METHODS:
                methods = ", ".join(f'"{m}"' for m in POLL_METHODS[:-1]) + f' or "{POLL_METHODS[-1]}"'
                raise self.error((*key, "method"), f"{_show(spec['method'])} is not a method: {methods}")
            poll.method = PollMethod(text)
        if poll.method == PollMethod.ATRN:  # RFC 2645: AUTH before ATRN
            self.atrn_login(peer, (*key, "method"))
        if "domains" in spec:
            poll.domains = self.poll_domains(spec["domains"], (*key, "domains"), poll.method)
        if "max_backoff" in spec:
            poll.max_backoff = self.duration(spec["max_backoff"], (*key, "max_backoff"))
        else:  # at least the interval: backing off never polls more often
            poll.max_backoff = max(poll.max_backoff, poll.interval)
        if poll.max_backoff < poll.interval:
            raise self.error(
                (*key, "max_backoff"),
                f"{poll.max_backoff:g} s is shorter than the interval ({poll.interval:g} s)",
            )
        return poll

    def atrn_login(self, peer: Peer, key: Key) -> None:
        if peer.username is None:
            raise self.error(
                key, f'atrn logs in (RFC 2645): peer "{peer.name}" needs a username and password'
            )
        if peer.password is None:
            raise self.error(
                key,
                f'atrn logs in (RFC 2645): peer "{peer.name}" needs the password itself, not password_hash',
            )

    def poll_domains(self, value: Any, key: Key, method: str) -> list[str]:
        if method not in (PollMethod.ATRN, PollMethod.ETRN):
            raise self.error(key, f'only for method = "atrn" or "etrn" ({method} names no domains)')
        node = self.etrn_node if method == PollMethod.ETRN else self.domain
        domains = self.array(value, key, lambda v, k, node=node: node(self.string(v, k), k))
        for j, domain in enumerate(domains):
            if domain in domains[:j]:
                raise self.error((*key, j), f"{domain} is listed twice")
        return domains
