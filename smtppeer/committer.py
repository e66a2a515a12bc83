"""Group commit: makes accepted messages durable in batches.

Every accepted message needs two waits for the disk: its data (``fdatasync``)
and then its new name (``fsync`` of the directory).  One message at a time,
those waits and the thread hand-offs around them cost more than the SMTP
exchange itself.  The committer runs commits as batches:

1. ``fdatasync`` each file (after the first, the device has usually
   flushed the others' data already, so the rest are cheap);
2. publish each one (rename/link into place);
3. ``fsync`` each directory touched, once for the whole batch;
4. fire every commit's Deferred.

Small messages (the common case) are committed on the reactor thread, in one
batch per reactor iteration: every session whose message ended in the same
iteration shares the same syncs, so the cost per message falls as load
rises, and there is no thread hand-off at all.  Measured on the benchmark
machine, moving these syncs to worker threads made things slower: the
workers and the reactor thread spent more time passing the GIL (about 40
futex calls per message) than the disk took; a worker creating files ahead
of need measured slower too (creating files in ``tmp/`` while renaming out
of it contends for the directory's lock).  A message that was streamed to
disk because it is large goes to a worker thread instead, so that its long
``fdatasync`` never stalls other sessions.

Correctness never depends on the batching: every file is synced before its
name appears, and every name is synced before its commit is reported.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable
from typing import Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.python.failure import Failure

_STOP = object()


class Commit(Protocol):
    def write_and_sync(self) -> None:
        """Make the data durable under a name that nobody reads yet."""

    def publish(self) -> Iterable[str]:
        """Put the data under its real name(s); return the directories to fsync."""


class Committer(service.Service):
    """Runs ``Commit`` jobs in batches: inline per reactor iteration, or on a worker."""

    def __init__(self, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.reactor = reactor
        self._pending: list[tuple[Commit, defer.Deferred]] = []
        self._scheduled = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._dir_fds: dict[str, int] = {}
        self.batches = 0
        self.commits = 0

    def submit(self, commit: Commit, *, large: bool = False) -> defer.Deferred:
        """A Deferred that fires (on the reactor thread) once ``commit`` is durable."""
        d: defer.Deferred = defer.Deferred()
        if large:
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
        _report(_run_batch(batch, self._dir_fds))

    def _count(self, batch: list) -> None:
        self.batches += 1
        self.commits += len(batch)

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
            outcomes = _run_batch(batch, dir_fds)
            self.reactor.callFromThread(self._count, batch)
            self.reactor.callFromThread(_report, outcomes)

    def stopService(self) -> defer.Deferred | None:
        """Finish what is queued, then close directories and stop the worker."""
        super().stopService()
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._flush()
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()
        thread, self._thread = self._thread, None
        if thread is None:
            return None
        self._queue.put(_STOP)
        from twisted.internet.threads import deferToThreadPool  # noqa: PLC0415

        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), thread.join)


def _run_batch(batch: list, dir_fds: dict[str, int]) -> list[tuple[defer.Deferred, Failure | None]]:
    """Sync, publish, sync directories; ``dir_fds`` caches open directories."""
    failed: dict[int, Failure] = {}
    dirs: dict[str, list[int]] = {}
    for i, (commit, _) in enumerate(batch):
        try:
            commit.write_and_sync()
        except Exception:
            failed[i] = Failure()
    for i, (commit, _) in enumerate(batch):
        if i in failed:
            continue
        try:
            for path in commit.publish():
                dirs.setdefault(path, []).append(i)
        except Exception:
            failed[i] = Failure()
    for path, members in dirs.items():
        try:
            fd = dir_fds.get(path)
            if fd is None:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                if len(dir_fds) >= 256:  # a bounded cache of open directories
                    os.close(dir_fds.pop(next(iter(dir_fds))))
                dir_fds[path] = fd
            os.fsync(fd)
        except Exception:
            f = Failure()
            for i in members:
                failed.setdefault(i, f)
            stale = dir_fds.pop(path, None)
            if stale is not None:
                os.close(stale)
    return [(d, failed.get(i)) for i, (_, d) in enumerate(batch)]


def _report(outcomes: list[tuple[defer.Deferred, Failure | None]]) -> None:
    for d, failure in outcomes:
        if failure is None:
            d.callback(None)
        else:
            d.errback(failure)
