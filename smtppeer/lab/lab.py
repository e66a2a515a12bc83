"""A lab: several smtppeer hosts in one process, the links between them, faults.

Each host is an smtppeer service built by the service's own ``assemble``
from the configuration its role means (``hosts.py``), with its own data
directory, listening on loopback ports chosen by the system.  Each path from
one host to another is a ``Link``.  The lab watches every host's activity
and adds what only it knows (links going up and down, faults firing) to
one stream of events, which its waits, its HTTP API and its status page
read.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import itertools
import os
import random
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from twisted.application import service
from twisted.internet import defer, interfaces, task
from twisted.logger import Logger

from smtppeer.activity import Activity, Kind, Record
from smtppeer.service.assembly import Assembly, assemble
from smtppeer.service.config import Config
from smtppeer.store.spool import HELD, PENDING

from .faults import SCREENED, Fault, FaultBook, FaultyHooks
from .hosts import ODMR, SMTP, host_config, listeners_of
from .links import Link
from .topology import FaultSpec, LinkSpec, Role, Topology, TopologyReader
from .transcripts import Transcripts

log = Logger()

EVENTS_KEPT = 1000
NOT_YET = object()  # what a wait's check says until it is satisfied
# what puts a message into a host's Maildirs: a message taken in, or a bounce to a local sender
FILLS_MAILDIRS = frozenset({Kind.RECEIVED, Kind.BOUNCED})
WAIT_UNTIL_EVERY = 0.1  # seconds between looks of wait_until, besides those after events
Entries = list[dict[str, Any]]  # a host's queue as JSON-ready values (LabHost.queue)


@dataclass(frozen=True)
class Event:
    """One thing that happened in the lab, for its stream: ``host`` is None for
    the lab's own (links)."""

    id: int
    time: float
    kind: str
    host: str | None
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "kind": self.kind, "host": self.host, **self.fields}


@dataclass
class Message:
    """A message a host delivered into one of its Maildirs."""

    host: str
    mailbox: str  # "user@domain"
    key: str  # its name in the Maildir
    raw: bytes

    @functools.cached_property
    def parsed(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)

    def header(self, name: str) -> str | None:
        value = self.parsed[name]
        return None if value is None else str(value)

    @property
    def subject(self) -> str | None:
        return self.header("Subject")

    def as_dict(self) -> dict[str, Any]:
        parsed = self.parsed
        return {
            "id": self.key,
            "host": self.host,
            "mailbox": self.mailbox,
            "size": len(self.raw),
            "subject": parsed["Subject"] and str(parsed["Subject"]),
            "from": parsed["From"] and str(parsed["From"]),
            "to": parsed["To"] and str(parsed["To"]),
            "return_path": parsed["Return-Path"] and str(parsed["Return-Path"]),
            "received": len(parsed.get_all("Received") or []),
        }


Match = Callable[[Message], bool] | dict[str, str] | str | None


def matcher(match: Match) -> Callable[[Message], bool]:
    """A predicate from what a test (or the HTTP API) says a message must be like:
    a function, ``{"subject": "glob", "mailbox": "glob", ...}`` (headers and
    ``mailbox``, case-insensitive globs), or text the raw message contains."""
    if match is None:
        return lambda message: True
    if callable(match):
        return match
    if isinstance(match, str):
        needle = match.encode()
        return lambda message: needle in message.raw

    def by_fields(message: Message) -> bool:
        for name, pattern in match.items():
            value = message.mailbox if name.lower() == "mailbox" else message.header(name)
            if value is None or not fnmatch.fnmatch(value.lower(), pattern.lower()):
                return False
        return True

    return by_fields


class LabHost:
    """One host of a running lab."""

    def __init__(
        self, lab: Lab, name: str, config: Config, assembly: Assembly, transcripts: Transcripts
    ) -> None:
        self.lab, self.name, self.config, self.assembly = lab, name, config, assembly
        self.transcripts = transcripts
        self.spec = lab.topology.hosts[name]

    @property
    def ports(self) -> dict[str, int]:
        """This host's own listeners (not through a link): what a test connects to."""
        kinds = listeners_of(self.lab.topology, self.name)
        return {
            kind: served.port.getHost().port
            for kind, served in zip(kinds, self.assembly.listeners, strict=False)
            if served.port is not None
        }

    @property
    def smtp(self) -> tuple[str, int]:
        return "127.0.0.1", self.ports[SMTP]

    @property
    def data_dir(self) -> str:
        return os.path.abspath(self.config.data_dir)

    def address(self, kind: str) -> tuple[str, int] | None:
        port = self.ports.get(kind)
        return None if port is None else ("127.0.0.1", port)

    def _files(self) -> Iterator[tuple[str, str, str]]:
        """``(mailbox, key, path)`` of every message file in this host's Maildirs
        (``new/`` and ``cur/``: the layout ``mailbox.Maildir`` reads)."""
        root = os.path.join(self.data_dir, "mail")
        if not os.path.isdir(root):
            return
        for domain in sorted(os.listdir(root)):
            for user in sorted(os.listdir(os.path.join(root, domain))):
                for sub in ("new", "cur"):
                    folder = os.path.join(root, domain, user, sub)
                    with contextlib.suppress(FileNotFoundError):
                        for name in os.listdir(folder):
                            if not name.startswith("."):
                                yield f"{user}@{domain}", name.split(":", 1)[0], os.path.join(folder, name)

    def messages(self, match: Match = None) -> list[Message]:
        """Every message in this host's Maildirs that matches, oldest first."""
        return MessageScan(self, match).matching()

    def _read(self, box: str, key: str, path: str) -> tuple[float, Message] | None:
        """One message file and when it was delivered; None if it is gone (a reset)."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
                when = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return when, Message(self.name, box, key, raw)

    def message(self, key: str) -> Message | None:
        for box, name, path in self._files():
            if name == key:
                with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                    return Message(self.name, box, key, f.read())
        return None

    def delete_messages(self, key: str | None = None) -> int:
        """Remove every message (or the one with ``key``) from this host's Maildirs."""
        removed = 0
        for _, name, path in list(self._files()):
            if key is None or name == key:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        return removed

    def queue(self) -> Entries:
        """What waits in this host's spool: to send, or held for a peer."""
        out = []
        for envelope in self.assembly.runner.entries.values():
            out.append(
                {
                    "id": envelope.id,
                    "from": envelope.reverse_path,
                    "size": envelope.size,
                    "frozen": envelope.frozen,
                    "recipients": [
                        {
                            "address": r.address,
                            "state": str(r.state),
                            "relay": r.relay,
                            "hold": r.hold,
                            "attempts": r.attempts,
                            "last_reply": r.last_reply,
                        }
                        for r in envelope.recipients
                    ],
                }
            )
        return out

    def held(self, peer: str | None = None, queue: Entries | None = None) -> Entries:
        return [
            entry
            for entry in (self.queue() if queue is None else queue)
            if any(r["state"] == HELD and (peer is None or r["hold"] == peer) for r in entry["recipients"])
        ]

    def pending(self, queue: Entries | None = None) -> Entries:
        entries = self.queue() if queue is None else queue
        return [entry for entry in entries if any(r["state"] == PENDING for r in entry["recipients"])]

    def poll(self, peer: str | None = None) -> defer.Deferred:
        """Run this dial-up host's poll now; fires with its outcome."""
        poller = self.assembly.poller
        if poller is None:
            return defer.fail(ValueError(f"{self.name} polls nobody"))
        return poller.poll_now(peer or self.spec.provider or next(iter(poller.schedules)))

    def describe(self) -> dict[str, Any]:
        spec, queue = self.spec, self.queue()
        return {
            "name": self.name,
            "role": str(spec.role),
            "hostname": spec.hostname,
            "domains": list(spec.domains),
            "provider": spec.provider,
            "poll": {"method": str(spec.poll.method), "every": spec.poll.every} if spec.poll else None,
            "ports": self.ports,
            "data_dir": self.data_dir,
            "messages": sum(1 for _ in self._files()),
            "queued": len(self.pending(queue)),
            "held": len(self.held(queue=queue)),
        }


class MessageScan:
    """A host's matching messages, looked at again and again (a wait, after each
    event): each file is read and matched once, so a wait for N messages reads
    N files, not N each time one lands."""

    def __init__(self, host: LabHost, match: Match = None) -> None:
        self.host = host
        self.predicate = matcher(match)
        self._seen: dict[str, tuple[float, str, Message | None]] = {}  # path -> (when, key, if it matches)

    def matching(self) -> list[Message]:
        """The matching messages there now, oldest first."""
        seen: dict[str, tuple[float, str, Message | None]] = {}
        for box, key, path in self.host._files():
            item = self._seen.get(path)
            if item is None:
                read = self.host._read(box, key, path)
                if read is None:
                    continue
                when, message = read
                item = (when, key, message if self.predicate(message) else None)
            seen[path] = item
        self._seen = seen  # what was removed is forgotten
        return [m for _, _, m in sorted(seen.values(), key=lambda item: item[:2]) if m is not None]


class Lab(service.MultiService):
    """The hosts of a topology, their links and faults, as one service."""

    def __init__(
        self,
        topology: Topology,
        *,
        data_dir: str | None = None,
        clock: interfaces.IReactorTime | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.topology = topology
        self.reactor = reactor
        self.clock = clock or reactor
        self.rng = random.Random(topology.seed)
        self._temporary = None
        self.data_dir = data_dir or topology.data_dir
        self.hosts: dict[str, LabHost] = {}
        self.links: dict[str, Link] = {}
        self.faults = FaultBook(self.clock)
        self.faults.watchers.append(self._fault_fired)
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._watchers: list[Callable[[Event], object]] = []
        self._ids = itertools.count(1)
        self._built = False

    # -- building ---------------------------------------------------------------

    def build(self) -> None:
        """Make the links and host services (listening happens at start)."""
        if self._built:
            return
        self._built = True
        if self.data_dir is None:
            self._temporary = tempfile.mkdtemp(prefix="smtppeer-lab-")
            self.data_dir = self._temporary
        os.makedirs(self.data_dir, exist_ok=True)
        for spec in self.topology.links.values():
            self._link(spec.source, spec.target, spec)
        for spec in self.topology.faults:
            self.faults.add(spec)
        for name in self.topology.hosts:
            config = host_config(self.topology, name, self.data_dir, self._link_address)
            activity = Activity(self.clock)
            activity.watch(lambda record, host=name: self._record(host, record))
            transcripts = Transcripts(name, self.clock)
            assembly = assemble(
                config,
                activity=activity,
                wrap_hooks=lambda policy, host=name: FaultyHooks(policy, host, self.faults),
                screen=SCREENED,
                wrap_listener=transcripts.wrap,
                control=False,
            )
            assembly.service.setServiceParent(self)
            self.hosts[name] = LabHost(self, name, config, assembly, transcripts)

    def _link(self, source: str, target: str, spec: LinkSpec | None = None) -> Link:
        for link in self.links.values():
            if (link.spec.source, link.spec.target) == (source, target):
                return link
        spec = spec or LinkSpec(f"{source}-{target}", source, target)
        link = Link(spec, self.clock, self.reactor, random.Random(self.rng.random()))
        link.watchers.append(self._link_changed)
        self.links[spec.name] = link
        return link

    def _link_address(self, source: str, target: str, kind: str) -> str:
        link = self._link(source, target)
        port = link.listen(kind, lambda: self.hosts[target].address(kind) if target in self.hosts else None)
        return f"tcp:host=127.0.0.1:port={port}"

    # -- life -------------------------------------------------------------------

    def startService(self) -> None:
        self.build()
        super().startService()
        for link in self.links.values():
            link.start()
        summary = ", ".join(f"{h.name} {h.smtp[1]}" for h in self.hosts.values())
        log.info("{line}", line=f"lab {self.topology.source}: {summary}; data in {self.data_dir}")

    def stopService(self) -> defer.Deferred:
        self.faults.stop()  # no delay fault's timer outlives the lab
        d = defer.maybeDeferred(super().stopService)

        def links_down(result):
            stopping = [d for link in self.links.values() for d in link.stop()]
            return defer.DeferredList(stopping, consumeErrors=True).addCallback(lambda _: result)

        d.addCallback(links_down)
        if self._temporary is not None:
            d.addCallback(self._remove_temporary)
        return d

    def _remove_temporary(self, result):
        shutil.rmtree(self._temporary, ignore_errors=True)
        return result

    def start(self) -> defer.Deferred:
        """Start outside twistd (a test): fires once every host listens."""
        self.startService()
        return defer.succeed(self)

    def stop(self) -> defer.Deferred:
        return self.stopService()

    # -- the event stream -------------------------------------------------------

    def watch(self, watcher: Callable[[Event], object]) -> Callable[[], None]:
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher) if watcher in self._watchers else None

    def _emit(self, kind: str, host: str | None, **fields: Any) -> Event:
        event = Event(next(self._ids), self.clock.seconds(), kind, host, fields)
        self.events.append(event)
        for watcher in list(self._watchers):
            try:
                watcher(event)
            except Exception:
                log.failure("a lab watcher failed")
        return event

    def _record(self, host: str, record: Record) -> None:
        self._emit(str(record.kind), host, **record.fields)

    def _link_changed(self, link: Link, up: bool) -> None:
        self._emit(
            "link-up" if up else "link-down",
            None,
            link=link.name,
            source=link.spec.source,
            target=link.spec.target,
        )
        source = self.hosts.get(link.spec.source)
        if (
            up
            and source is not None
            and source.spec.role == Role.DIALUP
            and source.spec.provider == link.spec.target
        ):
            # a dial-up host calls in as soon as its line is back
            d = source.poll()
            d.addErrback(lambda f: log.failure("poll on link up failed", f))

    def _fault_fired(self, fault: Fault, context: dict[str, Any]) -> None:
        self._emit("fault", fault.spec.host, fault=fault.name, action=str(fault.spec.action), **context)

    # -- waiting ----------------------------------------------------------------

    def _wait(
        self,
        check: Callable[[Event | None], object],
        timeout: float,
        expired: Callable[[], object],
        every: float | None = None,
    ) -> defer.Deferred:
        """The shape of every wait: ``check`` is asked now and after each event (and
        every ``every`` seconds, if given), and returns what to fire with or
        ``NOT_YET`` (or raises, to fail); when ``timeout`` seconds of the lab's clock
        pass, ``expired`` says what happens (a value, or it raises).  Cancelling the
        Deferred stops the wait."""
        result: defer.Deferred = defer.Deferred(lambda _: finish())

        def settle(outcome: Callable[[], object]) -> None:
            finish()
            try:
                value = outcome()
            except Exception:
                result.errback()
            else:
                result.callback(value)

        def look(event: Event | None = None) -> None:
            if result.called:
                return
            try:
                value = check(event)
            except Exception:
                finish()
                result.errback()
                return
            if value is not NOT_YET:
                finish()
                result.callback(value)

        def expire() -> None:
            if not result.called:
                settle(expired)

        unwatch = self.watch(look)
        timer = self.clock.callLater(timeout, expire)
        ticks = None
        if every is not None:
            ticks = task.LoopingCall(look)
            ticks.clock = self.clock
            ticks.start(every, now=False)

        def finish() -> None:
            unwatch()
            if timer.active():
                timer.cancel()
            if ticks is not None and ticks.running:
                ticks.stop()

        look()
        return result

    def wait_for_messages(
        self, host: str, count: int = 1, match: Match = None, timeout: float = 10.0
    ) -> defer.Deferred[list[Message]]:
        """Fires with the matching messages once ``host`` has at least ``count`` of
        them in its Maildirs; fails with ``TimeoutError`` (saying what it saw) if
        they are not there in ``timeout`` seconds of the lab's clock.  Cancelling
        it stops the wait (the HTTP API's long-poll, when its client goes away)."""
        scan = MessageScan(self.hosts[host], match)

        def check(event: Event | None) -> object:
            if event is not None and (event.host != host or event.kind not in FILLS_MAILDIRS):
                return NOT_YET
            found = scan.matching()
            return found if len(found) >= count else NOT_YET

        def expired() -> object:
            found = scan.matching()
            if len(found) >= count:  # it landed with no event of its own (a file put there by hand)
                return found
            raise TimeoutError(f"{host} has {len(found)} matching messages, not {count}, after {timeout:g}s")

        return self._wait(check, timeout, expired)

    def wait_for_no_messages(
        self, host: str, duration: float = 1.0, match: Match = None
    ) -> defer.Deferred[None]:
        """Fires after ``duration`` if no new matching message reached ``host`` in it;
        fails with ``AssertionError`` as soon as one does."""
        scan = MessageScan(self.hosts[host], match)
        before = {m.key for m in scan.matching()}

        def check(event: Event | None) -> object:
            if event is not None and event.host == host and event.kind in FILLS_MAILDIRS:
                new = [m for m in scan.matching() if m.key not in before]
                if new:
                    raise AssertionError(f"{host} received {len(new)} message(s): {new[0].subject!r}")
            return NOT_YET

        return self._wait(check, duration, lambda: None)

    def wait_until(
        self, predicate: Callable[[], object], timeout: float = 10.0, what: str = "the condition"
    ) -> defer.Deferred:
        """Fires with ``predicate()``'s result once it is true, looked at now, after
        every event and every ``WAIT_UNTIL_EVERY`` seconds (what it asks about may
        change with no event: a queue entry removed after its delivery was told);
        fails with ``TimeoutError`` after ``timeout`` seconds."""

        def expired() -> object:
            raise TimeoutError(f"{what} did not come true in {timeout:g}s")

        return self._wait(lambda event: predicate() or NOT_YET, timeout, expired, WAIT_UNTIL_EVERY)

    def wait_for_event(
        self, kind: str, host: str | None = None, timeout: float = 10.0, **fields: Any
    ) -> defer.Deferred[Event]:
        """Fires with the next event of ``kind`` (on ``host``, with these fields)."""

        def check(event: Event | None) -> object:
            if event is None or event.kind != kind or (host is not None and event.host != host):
                return NOT_YET
            return event if all(event.fields.get(k) == v for k, v in fields.items()) else NOT_YET

        def expired() -> object:
            raise TimeoutError(f"no {kind} event{' on ' + host if host else ''} in {timeout:g}s")

        return self._wait(check, timeout, expired)

    # -- links and faults, by hand --------------------------------------------

    def link(self, name: str) -> Link:
        if name in self.links:
            return self.links[name]
        source, _, target = name.partition("-")
        for link in self.links.values():
            if (link.spec.source, link.spec.target) == (source, target):
                return link
        raise KeyError(name)

    @contextlib.contextmanager
    def link_down(self, name: str) -> Iterator[Link]:
        """The link is down inside the block, and back on its schedule after it."""
        link = self.link(name)
        link.set(False)
        try:
            yield link
        finally:
            link.set(None)

    @contextlib.contextmanager
    def link_up(self, name: str) -> Iterator[Link]:
        link = self.link(name)
        link.set(True)
        try:
            yield link
        finally:
            link.set(None)

    def add_fault(self, spec: FaultSpec | dict[str, Any]) -> Fault:
        if isinstance(spec, dict):
            spec = TopologyReader("fault").fault(spec, (), self.topology.hosts)
        elif spec.host not in self.topology.hosts:
            raise KeyError(spec.host)
        return self.faults.add(spec)

    @contextlib.contextmanager
    def fault(self, **spec: Any) -> Iterator[Fault]:
        """A fault for the block (``lab.fault(host="mx", phase="rcpt", reply="452 4.2.2 Full")``)."""
        fault = self.add_fault(spec)
        try:
            yield fault
        finally:
            self.faults.remove(fault)

    def reset(self) -> defer.Deferred:
        """Back to a clean start: Maildirs emptied, queues dropped, faults as the
        topology has them (counters at zero), links on their schedules, events gone."""
        for lab_host in self.hosts.values():
            lab_host.delete_messages()
        deleting = []
        for lab_host in self.hosts.values():
            runner = lab_host.assembly.runner
            for queue_id in list(runner.entries):
                if not runner.busy(queue_id):
                    deleting.append(defer.ensureDeferred(runner.delete(queue_id)))
        self.faults.faults.clear()
        for spec in self.topology.faults:
            self.faults.add(spec)
        for link in self.links.values():
            link.set(None)
        self.events.clear()
        return defer.DeferredList(deleting, consumeErrors=True).addCallback(lambda _: None)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.topology.source,
            "data_dir": self.data_dir,
            "hosts": {name: host.describe() for name, host in self.hosts.items()},
            "links": {name: link.describe() for name, link in self.links.items()},
            "faults": [fault.describe() for fault in self.faults.faults],
        }


__all__ = ["Event", "Lab", "LabHost", "Message", "ODMR", "SMTP", "matcher"]
