"""Group commit: makes accepted messages durable in batches, without stalling the reactor.

Every accepted message needs the disk several times before its ``250``
(create, write, sync the data, rename, sync the directory; see
``commits.py``).  On the benchmark machine those waits, not the SMTP
exchange, decided how many messages one process takes in.  The committer
collects the commits that arrive in one reactor iteration (every session
whose message ended in that iteration) and runs them as one batch, in one
of three places:

* **The disk process** (``disk_process=True``; the service's Maildir
  deliveries).  A child process, ``python -m smtppeer.store.commits``, does the
  whole batch while the reactor goes on with other sessions; one pipe write
  out and one read back per batch.  It is a process, not a thread, because
  of what was measured: syncing in worker threads made things *slower*
  (the workers and the reactor thread spent more time passing the GIL, about
  40 futex calls per message, than the disk took), and syncing on the
  reactor thread left it waiting for the disk about a third of the time;
  the disk process beat both (figures in ``docs/benchmarks.rst``).
* **Inline**, on the reactor thread (the spool, whose start-up recovery must
  never race with a commit still running elsewhere; and a fallback while the
  disk process cannot be started).
* **A worker thread**, for a message streamed to disk because it is large, so
  that its long sync never stalls other sessions.

If the disk process dies, each commit it had not answered is looked at
(``commits.settle``): one it had published completely is finished and
succeeds, any other is taken back and fails (its session answers ``451``),
so the answer is true either way.  The process is started again for the
next batch, at most once a second, batches running inline meanwhile.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections import deque

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from .commits import Commit, Failure, frame, run_batch, settle, unframe

log = Logger()

_STOP = object()
RESPAWN_INTERVAL = 1.0


class CommitError(OSError):
    """A commit failed; ``errno`` is the file system's reason where there is one."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure[1])
        self.errno = failure[0] or None


class Committer(service.Service):
    """Runs ``Commit`` jobs in batches: in the disk process, inline, or on a worker thread.

    ``clock`` (an ``IReactorTime``, by default ``reactor``) is what the pause
    between two starts of the disk process is measured on; a test steps it
    with a ``task.Clock`` instead of waiting ``RESPAWN_INTERVAL``."""

    def __init__(self, reactor=None, *, disk_process: bool = False, clock=None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.disk_process = disk_process
        self._pending: list[tuple[Commit, defer.Deferred]] = []
        self._scheduled = None
        self._process: _DiskProcess | None = None
        self._next_start = 0.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._dir_fds: dict[str, int] = {}
        self.batches = 0
        self.commits = 0

    def submit(self, commit: Commit) -> defer.Deferred:
        """A Deferred that fires (on the reactor thread) once ``commit`` is durable,
        or fails with :class:`CommitError`.  A commit that syncs a file written
        already (a body streamed to disk because it is large) goes to the worker
        thread; every other one to the next batch."""
        d: defer.Deferred = defer.Deferred()
        if commit.syncs:
            self._start_worker()
            self._queue.put((commit, d))
            return d
        self._pending.append((commit, d))
        if self._scheduled is None:
            # After every read of this reactor iteration has been handled.
            self._scheduled = self.reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._scheduled = None
        batch, self._pending = self._pending, []
        self._count(batch)
        process = self._disk()
        if process is not None:
            process.send(batch)
        else:
            _report(batch, run_batch([c for c, _ in batch], self._dir_fds))

    def _count(self, batch: list) -> None:
        self.batches += 1
        self.commits += len(batch)

    # -- the disk process ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._disk()

    def _disk(self) -> _DiskProcess | None:
        if self._process is None and self.disk_process and self.running:
            if self.clock.seconds() >= self._next_start:
                self._next_start = self.clock.seconds() + RESPAWN_INTERVAL
                process = _DiskProcess(self)
                try:
                    self.reactor.spawnProcess(
                        process,
                        sys.executable,
                        [sys.executable, "-m", "smtppeer.store.commits"],
                        env=os.environ.copy(),
                        childFDs={0: "w", 1: "r", 2: "r"},
                    )
                except OSError as e:
                    log.error("cannot start the disk process ({e}); committing on the reactor", e=e)
                else:
                    self._process = process
        return self._process

    def _ended(self, process: _DiskProcess, reason: str) -> None:
        if self._process is process:
            self._process = None
            if self.running:
                log.error("the disk process ended ({reason}); starting it again", reason=reason)

    # -- the worker thread for large messages -------------------------------------

    def _start_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="smtppeer-commit", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        q = self._queue
        dir_fds: dict[str, int] = {}
        while True:
            item = q.get()
            if item is _STOP:
                for fd in dir_fds.values():
                    os.close(fd)
                return
            batch = [item]
            while True:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    q.put(_STOP)
                    break
                batch.append(more)
            results = run_batch([c for c, _ in batch], dir_fds)
            self.reactor.callFromThread(self._count, batch)
            self.reactor.callFromThread(_report, batch, results)

    def stopService(self) -> defer.Deferred:
        """Finish what is queued, then stop the disk process and the worker."""
        super().stopService()
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._flush()
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()
        waits = []
        process, self._process = self._process, None
        if process is not None:
            process.transport.closeStdin()  # it answers what it has, then exits
            waits.append(process.ended)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            from twisted.internet.threads import deferToThreadPool  # noqa: PLC0415

            waits.append(deferToThreadPool(self.reactor, self.reactor.getThreadPool(), thread.join))
        return defer.gatherResults(waits)


class _DiskProcess(protocol.ProcessProtocol):
    """The parent's end of the disk process: batches out, answers back, in order."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer
        self.waiting: deque[list[tuple[Commit, defer.Deferred]]] = deque()
        self.answers = bytearray()
        self.errors = b""
        self.ended: defer.Deferred = defer.Deferred()

    def send(self, batch: list[tuple[Commit, defer.Deferred]]) -> None:
        self.waiting.append(batch)
        self.transport.write(frame([tuple(c) for c, _ in batch]))

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:
            *lines, self.errors = (self.errors + data).split(b"\n")
            for line in lines:
                log.error("disk process: {line}", line=line.decode("utf-8", "replace"))
            return
        self.answers += data
        for results in unframe(self.answers):
            _report(self.waiting.popleft(), results)

    def processEnded(self, reason) -> None:
        self.committer._ended(self, str(reason.value))
        while self.waiting:  # it may have got as far as publishing some: find out (``settle``)
            batch = self.waiting.popleft()
            _report(batch, [settle(commit) for commit, _ in batch])
        self.ended.callback(None)


def _report(batch: list[tuple[Commit, defer.Deferred]], results: list[Failure | None]) -> None:
    for (_, d), failure in zip(batch, results, strict=True):
        if failure is None:
            d.callback(None)
        else:
            d.errback(CommitError(failure))
