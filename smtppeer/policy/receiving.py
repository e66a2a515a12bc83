"""The receiving policy: who may send to whom, and where an accepted message goes.

Each recipient gets one routing decision (``routing.Router``) at RCPT time:
local recipients are written to their Maildirs; recipients to relay or to
hold for a polling peer go into the spool with that decision recorded.  A
message with both kinds is written to both, and the ``250`` waits for both
to be durable.  Without a spool (no queue runner configured) only local
recipients are accepted.

Role reversal is decided here too: TURN and ATRN release a peer's hold
queue over the same connection, ETRN starts it over a new one, and all
three only for the identity that owns the mail (see ``turn_identity``).

Loops (RFC 5321 §6.3: "servers MUST contain provisions for detecting and
stopping trivial loops").  The trivial one here is two peers that each
route a domain to the other: a provider holding a domain for a dial-up
host that the dial-up host does not accept but routes back.  So mail that
comes *from* a peer (its AUTH login; its address on a ``turn`` listener; the
turned connection of our own poll of it, see ``polling``) is refused at RCPT
with ``550 5.4.6`` when it would go straight back to that peer (relayed to
its endpoint, or held for it): this host is not its destination, and the
sender's side bounces it at once instead of passing it round on every poll.

Every hop adds a ``Received:`` header; a message that already carries more
than ``max_received`` of them is refused with ``554 5.4.6`` (a routing loop,
RFC 5321 §6.3) rather than passed round again.  That count is the backstop
for loops through hosts this one cannot see, and it stays at 100, the
threshold §6.3 asks for ("normally at least 100"): a lower one (Postfix's
50) would stop such a loop sooner but refuse legitimate mail that went
through many relays and list expansions, and the loops of a peer
relationship are caught on their first round by the rule above.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Callable

from twisted.internet import defer, interfaces
from twisted.logger import Logger

from smtppeer.activity import Activity, Kind
from smtppeer.engine import Path, Reply, reply
from smtppeer.engine.address import parse_mailbox
from smtppeer.engine.framing import message_problem
from smtppeer.peer.hooks import MessageSink, ReceiverHooks, SenderJob, Session, Transaction
from smtppeer.store.ids import new_queue_id
from smtppeer.store.maildir import MaildirStore
from smtppeer.store.space import FreeSpace, out_of_room
from smtppeer.store.spool import HELD, PENDING, Envelope, Recipient, Spool

from .accounts import Accounts
from .mailboxes import Mailbox, Mailboxes
from .routing import HOLD, LOCAL, REFUSE, RELAY, Decision, Router, matches
from .trace import protocol_name, received_header

log = Logger()

MAX_RECEIVED = 100  # RFC 5321 §6.3 suggests a limit of at least 100
_RECEIVED = re.compile(rb"(?im)^received[ \t]*:")
_HEADER_SCAN_LIMIT = 256 * 1024  # a header section longer than this is not scanned further
NO_ROOM = reply(452, "4.3.1", "Insufficient system storage")  # RFC 3463: full disk or quota


class ReceivingPolicy(ReceiverHooks):
    def __init__(
        self,
        hostname: str,
        router: Router,
        maildirs: MaildirStore,
        spool: Spool | None = None,
        max_received: int = MAX_RECEIVED,
        runner=None,
        turn_peers: dict[str, list[str]] | None = None,
        mailboxes: dict[str, Mailbox] | None = None,
        accounts: Accounts | None = None,
        owned: dict[str, list[str]] | None = None,
        peer_endpoints: dict[str, str | None] | None = None,
        clock: interfaces.IReactorTime | None = None,
        activity: Activity | None = None,
        free_space: FreeSpace | None = None,
    ) -> None:
        """``clock`` stamps each spooled message's arrival; it must be the queue
        runner's, which measures the queue lifetime from it.  ``activity`` is told
        what was received and refused; ``free_space``: the floor (``queue_minfree``)
        that MAIL is refused below."""
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415
        self.clock = clock
        self.activity = activity or Activity(clock)
        self.hostname = hostname
        self.router = router
        self.maildirs = maildirs
        self.spool = spool
        self.max_received = max_received
        self.runner = runner  # the queue runner: new spooled mail, and held mail released on TURN
        self.turn_peers = turn_peers or {}  # peer name -> the client addresses that identify it
        self.accounts = accounts or Accounts()
        self.owned = {name: [d.lower() for d in ds] for name, ds in (owned or {}).items()}  # peer -> domains
        self.peer_endpoints = peer_endpoints or {}  # peer -> where ETRN sends its mail
        self.free_space = free_space
        self._atrn_sessions: dict[str, SenderJob] = {}  # domain -> the job serving it (RFC 2645 §4)
        self.polled: str | None = None  # the peer on the other end of a turned connection (``polling``)
        # where <postmaster> without a domain goes: the host's own domain if local
        primary = router.hostname if router.hostname in router.local_domains else min(router.local_domains)
        self.mailboxes = Mailboxes(mailboxes, primary, router.is_me)

    def polling(self, peer: str) -> ReceivingPolicy:
        """This policy for the connections of a poll of ``peer``.

        Once such a connection turns (TURN, ATRN), the client is ``peer``: we
        connected to it, whatever it says about itself afterwards, and the
        identity learnt before the turn is forgotten (``Session.turned``).  The
        copy knows that much more and shares everything else (router, spool,
        the ATRN sessions being served) with this policy.
        """
        view = copy.copy(self)
        view.polled = peer
        return view

    def origin(self, session: Session) -> str | None:
        """The configured peer this session's mail comes from, if it is one: the
        peer we polled (on the turned connection of that poll), else the peer
        that may TURN here (``turn_identity``)."""
        if session.turned and self.polled is not None:
            return self.polled
        return self.turn_identity(session)

    def decide(self, session: Session, path: Path) -> Decision:
        decision = self.router.decide(path, session.client_address, session.authenticated)
        if decision.kind in (RELAY, HOLD) and self.spool is None:
            return Decision(REFUSE, reply=reply(550, "5.7.1", "Relaying denied"))
        if decision.kind in (RELAY, HOLD):
            origin = self.origin(session)
            if origin is not None and self.goes_back(decision, origin):
                how = "held here for" if decision.kind == HOLD else "routed back to"
                text = f"Routing loop: {decision.domain} is {how} {origin}, where this mail came from"
                return Decision(REFUSE, reply=reply(550, "5.4.6", text))
        return decision

    def goes_back(self, decision: Decision, peer: str) -> bool:
        """Would this decision send the mail to ``peer`` (relay to its endpoint, or hold it for it)?"""
        if decision.kind == HOLD:
            return decision.target == peer
        endpoint = self.peer_endpoints.get(peer)
        return decision.kind == RELAY and endpoint is not None and decision.target == endpoint

    def mail_from(self, session: Session, path: Path, params: dict[str, str | None]) -> Reply:
        """``452 4.3.1`` while the data directory has less than ``queue_minfree`` free, or
        less than that plus the declared ``SIZE`` (RFC 1870 §6.1): the client keeps the
        message and tries later, instead of sending it only to hear the same at its end."""
        space = self.free_space
        if space is not None:
            size = params.get("SIZE")  # the engine has checked that it is a number
            if not space.enough(int(size) if size else 0):
                return NO_ROOM
        return reply(250, "2.1.0", "Sender OK")

    def rcpt_to(self, session: Session, path: Path, params: dict[str, str | None]) -> Reply:
        decision = self.decide(session, path)
        if not decision.accepted:
            log.info("{line}", line=f"refused {path} from {session.client_address}: {decision.reply}")
            self.activity.report(
                Kind.REFUSED, stage="rcpt", recipient=str(path)[1:-1], reply=str(decision.reply),
                client=session.client_address,
            )  # fmt: skip
            return decision.reply
        if decision.kind == LOCAL and not self.mailboxes.targets(path):
            return reply(550, "5.1.1", "No such user here")
        return reply(250, "2.1.5", "Recipient OK")

    def turn_identity(self, session: Session) -> str | None:
        """Which configured peer is asking to TURN, if any.

        A login that belongs to a peer (AUTH) is that peer, wherever it
        connects from; any other login is nobody here.  Without AUTH, a peer
        is known by its client address, but only on listeners configured with
        ``turn = true`` — the RFC 821 trust model, for closed networks.
        """
        if session.authenticated is not None:
            return self.accounts.peer_for(session.authenticated)
        if not session.turn_by_address:
            return None
        for name, addresses in self.turn_peers.items():
            if session.client_address in addresses:
                return name
        return None

    def turn(self, session: Session, verb: str = "TURN", domains: list[str] | None = None):
        if not session.may_turn:
            return reply(502, "5.5.1", f"{verb} is not available on this port")
        if verb == "ATRN":
            return self.atrn(session, domains or [])
        name = self.turn_identity(session)
        if name is None or self.runner is None:
            log.info("TURN refused to {client}", client=session.client_address)
            if session.authenticated is None and session.offers_auth:
                return reply(530, "5.7.0", "Authentication required")
            return None
        log.info("TURN from {client}: peer {name}", client=session.client_address, name=name)
        job = self.runner.release(name)
        self.activity.report(Kind.RELEASED, peer=name, verb="TURN", messages=len(job.envelopes))
        return job

    def atrn(self, session: Session, domains: list[str]):
        """RFC 2645 §5: 450 for domains that are not the identity's, 451 while another
        session serves one of them, 453 with nothing to send, else the job (250)."""
        name = self.accounts.peer_for(session.authenticated)
        owned = self.owned.get(name, []) if name is not None else []
        asked = domains or owned
        foreign = [d for d in asked if not matches(owned, d)]
        if name is None or not asked or foreign or self.runner is None:
            log.info(
                "{line}",
                line=f"ATRN {','.join(domains)} refused to {session.authenticated} "
                f"from {session.client_address}",
            )
            what = f"{foreign[0]} is not yours" if foreign else "no domains of yours are held here"
            return reply(450, "4.7.1", f"ATRN request refused: {what}")
        busy = [d for d in asked if d in self._atrn_sessions]
        if busy:
            return reply(451, "4.3.0", f"Unable to process ATRN now: {busy[0]} is served by another session")
        job = self.runner.release(name, asked)
        if not job.envelopes:
            return reply(453, "4.3.0", "You have no mail")
        for domain in asked:
            self._atrn_sessions[domain] = job
        job.on_end = functools.partial(self._atrn_finished, asked, job, job.on_end)
        log.info("{line}", line=f"ATRN {','.join(asked)} from {session.authenticated}: peer {name}")
        self.activity.report(Kind.RELEASED, peer=name, verb="ATRN", messages=len(job.envelopes))
        return job

    def _atrn_finished(self, domains: list[str], job: SenderJob, then: Callable[[], object] | None) -> None:
        for domain in domains:
            if self._atrn_sessions.get(domain) is job:
                del self._atrn_sessions[domain]
        if then is not None:
            then()

    def start_queue(self, session: Session, node: str, kind: str) -> Reply:
        """ETRN: only the peer that owns the node may start it — by AUTH identity
        or by its configured client addresses — and only to its own endpoint."""
        name, domains = self._etrn_target(node, kind)
        if name is None or not self._may_ask_for(session, name):
            log.info("{line}", line=f"ETRN {node} refused to {session.client_address}")
            return reply(459, "4.7.1", f"Node {node} not allowed")
        endpoint = self.peer_endpoints.get(name)
        if endpoint is None or self.runner is None:
            return reply(458, "4.3.0", f"Unable to queue messages for node {node}: no address to deliver to")
        started = self.runner.start_held(name, endpoint, domains, exact=kind == "domain")
        if not started:
            return reply(251, "2.0.0", f"OK, no messages waiting for node {node}")
        return reply(253, "2.0.0", f"OK, {started} pending messages for node {node} started")

    def _etrn_target(self, node: str, kind: str) -> tuple[str | None, list[str] | None]:
        """The peer whose mail ``node`` names, and the domains to send (None: all of it)."""
        if kind == "queue":
            return (node, None) if node in self.owned or node in self.turn_peers else (None, None)
        for name, owned in self.owned.items():
            if matches(owned, node):
                return name, [node]
        return None, None

    def _may_ask_for(self, session: Session, name: str) -> bool:
        if session.authenticated is not None:
            return self.accounts.peer_for(session.authenticated) == name
        return session.client_address in self.turn_peers.get(name, ())

    def begin_message(self, session: Session, tx: Transaction) -> MessageSink:
        queue_id = new_queue_id()
        header = received_header(
            helo=session.helo_name,
            client_literal=session.client_literal,
            by=self.hostname,
            protocol=protocol_name(
                session.esmtp, utf8=tx.utf8, tls=session.secure, auth=session.authenticated is not None
            ),
            queue_id=queue_id,
            recipient=str(tx.recipients[0].mailbox) if len(tx.recipients) == 1 else None,
        )
        client = {"helo": session.helo_name or "", "address": session.client_address}
        params = {k: v for k, v in tx.params.items() if k in ("BODY", "SMTPUTF8")}
        decisions = [(path, self.decide(session, path)) for path in tx.recipients]
        return self.new_message(queue_id, tx.reverse_path, decisions, header, client, params)

    def inject(self, reverse_path: Path, recipients: list[Path], message: bytes) -> defer.Deferred:
        """Accept a message made on this host (``smtppeer send``) as a trusted local client.

        Fires with the queue ID once the message is durable, or fails with a
        ``ValueError`` naming a recipient that cannot be routed, or the line of
        the message that SMTP's DATA would refuse (a bare CR or LF, a NUL, a
        line too long): every way into the spool meets the same rule.
        """
        problem = message_problem(message)
        if problem is not None:
            return defer.fail(ValueError(f"message refused: {problem}"))
        decisions = []
        for path in recipients:
            decision = self.router.decide(path, "127.0.0.1", authenticated="local")
            if decision.kind == LOCAL and not self.mailboxes.targets(path):
                decision = Decision(REFUSE, reply=reply(550, "5.1.1", "No such user here"))
            if not decision.accepted:
                return defer.fail(ValueError(f"{path}: {decision.reply}"))
            decisions.append((path, decision))
        queue_id = new_queue_id()
        header = received_header(
            helo="localhost", client_literal="local", by=self.hostname, protocol="local", queue_id=queue_id
        )
        client = {"helo": "", "address": "local"}
        sink = self.new_message(queue_id, reverse_path, decisions, header, client, {})
        sink.write(message)
        d = defer.maybeDeferred(sink.finish)

        def queued(response: Reply) -> str:
            if not response.is_positive:  # a full disk, a loop: what SMTP would have answered
                raise ValueError(f"message not queued: {response}")
            return queue_id

        d.addCallback(queued)
        return d

    def new_message(
        self,
        queue_id: str,
        reverse_path: Path,
        decisions: list[tuple[Path, Decision]],
        header: bytes,
        client: dict[str, str],
        params: dict[str, str | None],
    ) -> IncomingMessage:
        """Fan the message out: Maildirs for local recipients, the spool for the rest."""
        local: list[str] = []
        spooled: list[Recipient] = []
        source_routed = False
        for path, decision in decisions:
            source_routed = source_routed or (bool(path.route) and decision.kind == RELAY)
            if decision.kind == LOCAL:
                for domain, target in self.mailboxes.targets(path):
                    if domain:
                        local.append(self.maildirs.path_for(domain, target))
                    else:  # an alias to a remote address: relayed on our own authority
                        onward = self.router.decide(Path(parse_mailbox(target)), "127.0.0.1", "alias")
                        if onward.kind == RELAY:
                            route = {"relay": onward.target, "domain": onward.domain or ""}
                            spooled.append(Recipient(target, PENDING, route))
            elif decision.kind == RELAY:
                onward = str(decision.path)[1:-1]
                route = {"relay": decision.target, "domain": decision.domain or ""}
                spooled.append(Recipient(onward, PENDING, route))
            elif decision.kind == HOLD:
                spooled.append(Recipient(str(decision.path)[1:-1], HELD, {"hold": decision.target}))
        sinks: list[MessageSink] = []
        error = None
        if local:
            # final delivery: RFC 5321 §4.4 puts the reverse-path in a Return-Path: header
            return_path = f"Return-Path: {reverse_path}\r\n".encode()
            try:
                sinks.append(self.maildirs.new_message(local, return_path + header, queue_id))
            except OSError as e:  # a new Maildir and no room for it: answered at the end of DATA
                error = e
        envelope = None
        if spooled:
            reverse = reverse_path
            if source_routed and not reverse.is_null:
                # RFC 821 §3.6: a relay on a source route adds itself to the reverse-path
                reverse = Path(reverse.mailbox, (self.hostname, *reverse.route))
            envelope = Envelope(
                id=queue_id,
                reverse_path=str(reverse)[1:-1],
                recipients=spooled,
                arrival=self.clock.seconds(),
                params=params,
                client=client,
            )
            sinks.append(self.spool.new_message(envelope, header))
        rcpts = ", ".join(str(path) for path, _ in decisions)
        summary = f"from {reverse_path} via {client['helo']} [{client['address']}] to {rcpts}"
        about = None
        if self.activity.watched:  # what watchers are told, worked out only for them
            about = {
                "queue_id": queue_id,
                "sender": str(reverse_path)[1:-1],
                "recipients": [str(path)[1:-1] for path, _ in decisions],
                "client": client["address"],
                "local": [os.path.relpath(box, self.maildirs.root) for box in local],
                "relayed": [r.address for r in spooled if r.state == PENDING],
                "held": [r.address for r in spooled if r.state == HELD],
            }
        return IncomingMessage(self, sinks, queue_id, summary, envelope, about, error)


class IncomingMessage(MessageSink):
    """Fans one body out to its sinks; refuses loops; logs one line per message.

    The log line is pre-formatted into a single field: twisted.logger's
    per-field formatting is a measurable share of the per-message cost.

    A storage error (``OSError``: a full disk, a full quota) while the body
    streams in, or when it is committed, is this message's only: the rest of
    the body is read and dropped, and the end of DATA is answered ``452
    4.3.1`` (no room) or ``451 4.3.0`` (anything else) with one log line.
    """

    def __init__(
        self,
        policy: ReceivingPolicy,
        sinks: list[MessageSink],
        queue_id: str,
        summary: str,
        envelope: Envelope | None,
        about: dict | None = None,
        error: OSError | None = None,
    ) -> None:
        """``about``: what to tell the policy's activity watchers (None: nobody watches)."""
        self.policy, self.sinks, self.queue_id, self.summary = policy, sinks, queue_id, summary
        self.envelope = envelope
        self.about = about
        self.size = 0
        self._head = b""
        self._head_done = False
        self.error = error  # why it cannot be stored, once known
        if error is not None:
            self._drop_sinks()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if not self._head_done:
            self._scan_header(data)
        if self.error is not None:
            return
        try:
            for sink in self.sinks:
                sink.write(data)
        except OSError as e:  # a large body streaming to its file: the disk is full
            self.error = e
            self._drop_sinks()  # give back the room the partial files took

    def _scan_header(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end >= 0 or len(self._head) > _HEADER_SCAN_LIMIT:
            self._head = self._head[: end + 2] if end >= 0 else self._head
            self._head_done = True

    def hops(self) -> int:
        return len(_RECEIVED.findall(self._head))

    def finish(self) -> defer.Deferred | Reply:
        self._head_done = True
        hops = self.hops()
        if hops > self.policy.max_received:
            response = reply(554, "5.4.6", "Too many hops (Received: headers): routing loop detected")
            self.refused(f"{hops} Received: headers, a mail loop", response)
            return response
        if self.error is not None:
            return self._not_stored(self.error)
        if len(self.sinks) == 1:  # the common case, without the cost of gathering
            d = defer.maybeDeferred(self.sinks[0].finish)
        else:
            d = defer.DeferredList([defer.maybeDeferred(s.finish) for s in self.sinks], consumeErrors=True)
            d.addCallback(self._all_or_none)
        d.addCallbacks(self._accepted, self._commit_failed)
        return d

    def _all_or_none(self, results: list) -> defer.Deferred | None:
        """A message is accepted for all its recipients or for none: if one sink
        failed (its session answers 451 and the client sends it again), take back
        the copies that did land, so that the retry does not deliver them twice."""
        failures = [result for ok, result in results if not ok]
        if not failures:
            return None
        landed = [sink for (ok, _), sink in zip(results, self.sinks, strict=True) if ok]
        taken = defer.DeferredList([defer.maybeDeferred(sink.retract) for sink in landed], consumeErrors=True)
        taken.addCallback(lambda _: failures[0])
        return taken

    def _accepted(self, _: object) -> Reply:
        log.info(
            "{line}",
            line=f"{self.queue_id}: accepted {self.summary}, {self.size} octets",
            queue_id=self.queue_id,
        )
        if self.envelope is not None and self.policy.runner is not None:
            self.policy.runner.add(self.envelope)
        if self.about is not None:
            self.policy.activity.report(Kind.RECEIVED, size=self.size, **self.about)
        return reply(250, "2.0.0", f"Ok: queued as {self.queue_id}")

    def refused(self, why: str, response: Reply | None = None) -> None:
        """The message was refused (a loop here; a bare line end, its size or a long
        line in the engine): thrown away, logged with its queue ID and the reason."""
        self.abort(f"refused: {why}")
        if self.about is not None:
            self.policy.activity.report(
                Kind.REFUSED, stage="data", reason=why, reply=str(response) if response else None,
                queue_id=self.queue_id, client=self.about["client"],
            )  # fmt: skip

    def _commit_failed(self, failure) -> Reply:
        """A commit that the file system refused is answered, with one line; anything
        else is a bug, and goes on to the session's traceback and 451."""
        failure.trap(OSError)
        return self._not_stored(failure.value)

    def _not_stored(self, error: OSError) -> Reply:
        why = " ".join(str(error).split())
        log.error(
            "{line}", line=f"{self.queue_id}: not stored ({why}): {self.summary}", queue_id=self.queue_id
        )
        if out_of_room(error):
            return NO_ROOM
        return reply(451, "4.3.0", "Local error in processing; try again later")

    def _drop_sinks(self) -> None:
        for sink in self.sinks:
            sink.abort()
        self.sinks = []

    def abort(self, why: str = "abandoned before the end of DATA") -> None:
        log.info("{line}", line=f"{self.queue_id}: {why}", queue_id=self.queue_id)
        for sink in self.sinks:
            sink.abort()
