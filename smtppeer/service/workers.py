"""Worker processes for a busy listener (``processes = N``).

One process's SMTP work runs on one core (its reactor thread); a listener
that must take in more than that may be shared: the service opens the
socket and N - 1 workers accept on it too (the kernel spreads connections
among them).  Since the disk process (``committer.py``) took the disk waits
off the reactor, a second process pays off only with cores to spare
(``docs/benchmarks.rst`` has the figures, before and after).

Each process accepts on a socket of its own, all bound to the same address
with ``SO_REUSEPORT``, so the kernel spreads connections evenly among them
(one socket shared by all spread them unevenly and gained little).  The
service binds every socket before it drops privileges, so port 25 works,
and keeps a dead worker's socket, so connections that reach it wait for the
worker to be started again instead of being refused.

A worker only receives.  It stores mail exactly as the service does
(Maildirs, and the spool for mail to relay or hold, synced before its
``250``) and then announces each new spool entry to the service over a
pipe, so that there is still one queue runner.  What it receives and
refuses (``activity.py``'s records) goes over the same pipe, so the
service's metrics count the mail of every process.  Such a listener never turns:
TURN, ATRN and ETRN need the runner's hold queues, so they are refused (or
not offered) there, in every process alike.

A worker ends when the service tells it to (SIGTERM: its sessions get
``421 4.3.2`` and what it accepted is on disk) or at once when the service is
gone (its standard input closes).  The service starts a worker again if one
dies, and removes the unfinished spool files it left.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import struct
import sys
import threading

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import FileLogObserver, Logger, eventAsText, globalLogBeginner

from smtppeer.activity import Activity, Kind, Record
from smtppeer.twisted_private import parse_endpoint

from .config import Config
from .startup import fail

log = Logger()

LISTEN_FD = 3  # the shared listening socket, in the worker
# worker -> service, one per line: the ID of each new spool entry, or ACTIVITY and a
# record of what the worker received or refused, as JSON
ANNOUNCE_FD = 4
ACTIVITY = "@"
STOP_TIMEOUT = 20.0  # SIGTERM, then this long, then SIGKILL
RESPAWN_DELAY = (1.0, 30.0)  # doubling while workers die young


def reuseport_sockets(description: str, count: int) -> list[socket.socket]:
    """``count`` listening sockets on the address of a ``tcp:``/``tcp6:`` server endpoint
    description, all with ``SO_REUSEPORT`` (the first decides a port 0)."""
    args, kwargs = parse_endpoint(description)
    kind = str(args[0]).lower() if args else ""
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"{description}: several processes need a tcp or tcp6 listener")
    port = int(kwargs.get("port", args[1] if len(args) > 1 else 0))
    interface = kwargs.get("interface", "::" if kind == "tcp6" else "")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    backlog = int(kwargs.get("backlog", 50))
    sockets: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((interface, port))
        port = s.getsockname()[1]
        s.listen(backlog)
        s.setblocking(False)
        sockets.append(s)
    return sockets


class SharedListener(service.Service):
    """A listener served by ``processes`` processes: this one and its workers.

    Stopping it stops accepting here, stops the workers (their sessions get
    421), and closes this process's sessions (421), like any listener."""

    def __init__(self, config: Config, index: int, factory, runner, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.config, self.index, self.factory = config, index, factory
        self.runner, self.reactor = runner, reactor
        self.listener = config.listeners[index]
        self.workers: dict[int, _Worker] = {}
        self.port = None
        self._sockets: list[socket.socket] = []
        self._delay = RESPAWN_DELAY[0]
        self._respawns: dict[int, object] = {}

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self._sockets = reuseport_sockets(self.listener.endpoint, self.listener.processes)
        except OSError as e:  # in use, or a privileged port without the privilege
            fail(f"cannot listen on {self.listener.endpoint}: {e.strerror or e}")
        own = self._sockets[0]
        self.port = self.reactor.adoptStreamPort(own.fileno(), own.family, self.factory)

    def startService(self) -> None:
        if not self._sockets:
            self.privilegedStartService()
        super().startService()
        for number in range(1, self.listener.processes):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._respawns.pop(number, None)
        if not self.running:
            return
        worker = _Worker(self, number)
        payload = pickle.dumps((self.config, self.index, number))
        worker.payload = struct.pack("!Q", len(payload)) + payload
        self.reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-m", "smtppeer.service.workers"],
            env=os.environ.copy(),
            childFDs={0: "w", 1: "r", 2: "r", LISTEN_FD: self._sockets[number].fileno(), ANNOUNCE_FD: "r"},
        )
        self.workers[number] = worker

    def reported(self, text: str) -> None:
        """A worker received or refused something: the service's watchers (metrics) are told."""
        try:
            record = json.loads(text)
            kind, fields = Kind(record["kind"]), dict(record["fields"])
        except (ValueError, KeyError, TypeError) as e:
            log.info("{line}", line=f"a worker reported something unreadable ({e}): {text[:200]!r}")
            return
        self.runner.activity.report(kind, **fields)

    def announced(self, queue_id: str) -> None:
        """A worker has a new spool entry on disk: hand it to the queue runner."""
        if queue_id in self.runner.entries:  # adopted already (``_adopt``): never add it twice
            return
        try:
            envelope = self.runner.spool.load(queue_id)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.info("{line}", line=f"worker announced {queue_id}, which cannot be loaded: {e}")
            return
        self.runner.add(envelope)

    def ended(self, worker: _Worker, lived: float) -> None:
        self.workers.pop(worker.number, None)
        self._clean_up_after(worker.pid)
        self._adopt(worker.pid)
        if not self.running:
            return
        self._delay = RESPAWN_DELAY[0] if lived > 10 else min(self._delay * 2, RESPAWN_DELAY[1])
        log.info("{line}", line=f"worker {worker.number} ended; starting it again in {self._delay:.0f}s")
        self._respawns[worker.number] = self.reactor.callLater(self._delay, self._spawn, worker.number)

    def _clean_up_after(self, pid: int | None) -> None:
        """A worker killed mid-message leaves a body nobody acknowledged; remove it now
        rather than at the next start.  Queue IDs carry 12 bits of the writer's pid
        (``ids.py``): if a live process shares them, leave it to the next start."""
        if pid is None:
            return
        bits = f"{pid & 0xFFF:03X}"
        alive = {os.getpid() & 0xFFF} | {w.pid & 0xFFF for w in self.workers.values() if w.pid}
        if pid & 0xFFF in alive:
            return
        removed = self.runner.spool.discard_unfinished(lambda queue_id: queue_id[13:16] == bits)
        if removed:
            log.info("{line}", line=f"removed {removed} unfinished spool files of a worker that died")

    def _adopt(self, pid: int | None) -> None:
        """A worker killed between its ``250`` and its announcement leaves a whole entry
        the runner does not know: hand it over now rather than at the next start."""
        if pid is None:
            return
        bits = f"{pid & 0xFFF:03X}"
        alive = {os.getpid() & 0xFFF} | {w.pid & 0xFFF for w in self.workers.values() if w.pid}
        if pid & 0xFFF in alive:  # a live process writes such IDs too: its own announcements will come
            return
        for queue_id in self.runner.spool.ids():
            if queue_id[13:16] == bits and queue_id not in self.runner.entries:
                log.info(
                    "{line}", line=f"{queue_id}: spooled by worker pid {pid}, which died before announcing it"
                )
                self.announced(queue_id)

    def stopService(self) -> defer.Deferred:
        """SIGTERM every worker (SIGKILL after ``STOP_TIMEOUT``) while this process
        stops accepting and closes its sessions; fires when all is done."""
        super().stopService()
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        ending = [worker.stop() for worker in list(self.workers.values())]
        d = defer.maybeDeferred(self.port.stopListening)
        d.addCallback(lambda _: self.factory.shutdown())
        ending.append(d)
        done = defer.DeferredList(ending, consumeErrors=True)
        done.addBoth(self._close_sockets)
        return done

    def _close_sockets(self, result):
        for s in self._sockets:
            s.close()
        self._sockets = []
        return result


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: SharedListener, number: int) -> None:
        self.pool, self.number = pool, number
        self.payload = b""
        self.pid: int | None = None
        self.ended: defer.Deferred = defer.Deferred()
        self._lines = {1: b"", 2: b"", ANNOUNCE_FD: b""}
        self._started = pool.reactor.seconds()
        self._kill = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.write(self.payload)  # and stdin stays open: its end tells the worker we are gone

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, self._lines[fd] = (self._lines[fd] + data).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            if fd == ANNOUNCE_FD and text.startswith(ACTIVITY):
                self.pool.reported(text[len(ACTIVITY) :])
            elif fd == ANNOUNCE_FD:
                self.pool.announced(text)
            elif text:
                log.info("{line}", line=f"worker {self.number}: {text}")

    def stop(self) -> defer.Deferred:
        try:
            self.transport.signalProcess("TERM")
        except error.ProcessExitedAlready:
            return self.ended
        self._kill = self.pool.reactor.callLater(STOP_TIMEOUT, self._force)
        return self.ended

    def _force(self) -> None:
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def processEnded(self, reason) -> None:
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self.pool.ended(self, self.pool.reactor.seconds() - self._started)
        self.ended.callback(None)


# -- the worker process -----------------------------------------------------------------


class _Announcer:
    """Stands in for the queue runner in a worker: tells the service about new entries,
    and (as an ``Activity`` watcher) what the worker received and refused."""

    def add(self, envelope) -> None:
        _write_all(f"{envelope.id}\n".encode())

    def forward(self, record: Record) -> None:
        line = json.dumps({"kind": str(record.kind), "fields": record.fields}, default=str)
        _write_all(f"{ACTIVITY}{line}\n".encode())


def _write_all(data: bytes) -> None:
    """A line over PIPE_BUF (a record with many recipients) may be written in parts."""
    view = memoryview(data)
    while view:
        view = view[os.write(ANNOUNCE_FD, view) :]


def _read_exactly(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise SystemExit("the service went away before telling this worker what to do")
        data += chunk
    return data


def main() -> None:
    from twisted.internet import reactor  # noqa: PLC0415

    from .receiving import Receiving  # noqa: PLC0415

    (size,) = struct.unpack("!Q", _read_exactly(0, 8))
    config, index, number = pickle.loads(_read_exactly(0, size))
    globalLogBeginner.beginLoggingTo(
        [FileLogObserver(sys.stdout, lambda e: eventAsText(e, includeTimestamp=False) + "\n")],
        redirectStandardIO=False,
    )
    top = service.MultiService()
    side = Receiving(config, top)
    announcer, activity = _Announcer(), Activity(reactor)
    activity.watch(announcer.forward)
    factory = side.factory(config.listeners[index], side.policy(announcer, activity))
    top.startService()
    with socket.socket(fileno=os.dup(LISTEN_FD)) as shared:
        family = shared.family
    port = reactor.adoptStreamPort(LISTEN_FD, family, factory)
    os.close(LISTEN_FD)

    def shut_down() -> defer.Deferred:
        d = defer.maybeDeferred(port.stopListening)
        d.addCallback(lambda _: factory.shutdown())
        d.addCallback(lambda _: top.stopService())
        return d

    def watch_service() -> None:  # a thread: standard input closes when the service is gone
        while os.read(0, 4096):
            pass
        # The service died (it stops us with SIGTERM otherwise).  Go at once: what we
        # acknowledged is on disk, and finishing anything else could race with the
        # next service's spool recovery.  Our clients retry what was not acknowledged.
        os._exit(1)

    threading.Thread(target=watch_service, daemon=True).start()
    reactor.addSystemEventTrigger("before", "shutdown", shut_down)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the service
    log.info("{line}", line=f"pid {os.getpid()} accepting on {port.getHost()}")
    reactor.run()


if __name__ == "__main__":
    main()
