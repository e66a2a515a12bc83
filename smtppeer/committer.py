"""Group commit: makes files durable in batches, off the reactor thread.

Every accepted message needs two waits for the disk: its data (``fdatasync``)
and then its new name (``fsync`` of the directory).  Done one message at a
time, in a general-purpose thread pool, those waits and the thread hand-offs
dominate the cost of a small message.  The committer instead takes whatever
commits are queued when a worker becomes free and runs them as one batch:

1. write and ``fdatasync`` each file (after the first, the journal has
   usually flushed the others' data already, so the rest are cheap);
2. publish each one (rename/link into place);
3. ``fsync`` each directory touched, once for the whole batch;
4. report the whole batch to the reactor with a single ``callFromThread``.

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
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

_STOP = object()


class Commit(Protocol):
    def write_and_sync(self) -> None:
        """Make the data durable under a name that nobody reads yet."""

    def publish(self) -> Iterable[str]:
        """Put the data under its real name(s); return the directories to fsync."""


class Committer(service.Service):
    """Runs ``Commit`` jobs in batches on a few worker threads."""

    def __init__(self, reactor=None, workers: int = 2) -> None:
        """Two workers: one batch can wait for the disk while the next forms, and
        a large message's sync does not hold up every small one behind it.
        More workers measured slower here: they contend for the GIL with the
        reactor thread."""
        if reactor is None:
            from twisted.internet import reactor  # noqa: PLC0415
        self.reactor = reactor
        self.workers = workers
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.batches = 0
        self.commits = 0

    def startService(self) -> None:
        super().startService()
        for n in range(self.workers):
            t = threading.Thread(target=self._work, name=f"smtppeer-commit-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stopService(self) -> defer.Deferred:
        """Finish what is queued, then stop the workers."""
        super().stopService()
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)
        from twisted.internet.threads import deferToThreadPool  # noqa: PLC0415

        def join() -> None:
            for t in threads:
                t.join()

        pool = self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, join)

    def submit(self, commit: Commit) -> defer.Deferred:
        """A Deferred that fires (on the reactor thread) once ``commit`` is durable."""
        if not self._threads:
            self.startService()
        d: defer.Deferred = defer.Deferred()
        self._queue.put((commit, d))
        return d

    def _work(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while True:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            outcomes = _run_batch(batch)
            self.reactor.callFromThread(_report, outcomes)
            self.batches += 1
            self.commits += len(batch)
            if stop:
                return


def _run_batch(batch: list) -> list[tuple[defer.Deferred, Failure | None]]:
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
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except Exception:
            f = Failure()
            for i in members:
                failed.setdefault(i, f)
    return [(d, failed.get(i)) for i, (_, d) in enumerate(batch)]


def _report(outcomes: list[tuple[defer.Deferred, Failure | None]]) -> None:
    for d, failure in outcomes:
        if failure is None:
            d.callback(None)
        else:
            d.errback(failure)
