"""Durable delivery into Maildirs (the layout of ``mailbox.Maildir``, mutt, Dovecot).

A message is written once into ``tmp/`` of the first recipient's Maildir,
fsynced, then hard-linked into each recipient's ``new/`` and the ``new/``
directories are fsynced: only then does ``finish`` report success, so a
``250`` never precedes durability.  The fsyncs run in a worker thread so
that many sessions' disk waits overlap instead of queueing on the reactor.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from .engine import reply
from .hooks import MessageSink

# Small messages stay in memory until DATA ends (one write); larger ones are
# streamed to the file as they arrive so memory stays flat.
MEMORY_LIMIT = 256 * 1024
_SAFE = "!#$&'*+-=?^_`{|}~.@"
_counter = itertools.count()
_HOST = socket.gethostname().replace("/", r"\057").replace(":", r"\072")


def mailbox_dirname(local_part: str) -> str:
    """A file-system-safe directory name for a local part (case-folded)."""
    name = quote(local_part.lower(), safe=_SAFE)
    if name.startswith(".") or not name:
        name = "%2E" + name[1:] if name else "%00"
    return name


def unique_name() -> str:
    """The ``time.M<usec>P<pid>Q<n>.host`` form that ``mailbox.Maildir`` uses."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOST}"


class MaildirStore:
    """The tree ``<root>/<domain>/<mailbox>/{tmp,new,cur}``."""

    def __init__(self, root: str, run_in_thread: Callable[..., Deferred] = deferToThread) -> None:
        self.root = root
        self.run_in_thread = run_in_thread
        self._made: set[str] = set()
        self.dir_syncer = DirectorySyncer()

    def path_for(self, domain: str, local_part: str) -> str:
        return os.path.join(self.root, quote(domain.lower(), safe="[]:.-"), mailbox_dirname(local_part))

    def ensure(self, path: str) -> str:
        if path not in self._made:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
            self._made.add(path)
        return path

    def new_message(self, maildirs: list[str], header: bytes, queue_id: str) -> MaildirMessage:
        return MaildirMessage(self, [self.ensure(m) for m in dict.fromkeys(maildirs)], header, queue_id)


class MaildirMessage(MessageSink):
    def __init__(self, store: MaildirStore, maildirs: list[str], header: bytes, queue_id: str) -> None:
        self.store = store
        self.maildirs = maildirs
        self.queue_id = queue_id
        self.name = unique_name()
        self.tmp_path = os.path.join(maildirs[0], "tmp", self.name)
        self._chunks: list[bytes] = [header]
        self._buffered = len(header)
        self._file = None
        self._aborted = False

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > MEMORY_LIMIT:
                self._open()
                self._write_buffered()
        else:
            self._file.write(data)

    def _open(self) -> None:
        self._file = open(self.tmp_path, "xb", buffering=0)  # noqa: SIM115

    def _write_buffered(self) -> None:
        self._file.write(b"".join(self._chunks))
        self._chunks = []

    def finish(self) -> Deferred:
        d = self.store.run_in_thread(self._commit)
        d.addCallback(lambda _: reply(250, "2.0.0", f"Ok: queued as {self.queue_id}"))
        return d

    def _commit(self) -> None:
        """Runs in a worker thread: write, fsync, link into every new/, fsync dirs."""
        if self._file is None:
            self._open()
            self._write_buffered()
        f, self._file = self._file, None
        try:
            os.fdatasync(f.fileno())  # the data and the size; the name is synced below
        finally:
            f.close()
        first, *others = self.maildirs
        try:
            for maildir in others:
                os.link(self.tmp_path, os.path.join(maildir, "new", self.name))
            os.rename(self.tmp_path, os.path.join(first, "new", self.name))
        except BaseException:
            os.unlink(self.tmp_path)
            raise
        for maildir in self.maildirs:
            self.store.dir_syncer.sync(os.path.join(maildir, "new"))

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass
        self._chunks = []


class DirectorySyncer:
    """Group commit for directory fsyncs, called from worker threads.

    A new name in ``new/`` is durable once an fsync of the directory has
    *started* after the rename.  Threads take a ticket after their rename;
    under the directory's lock, a thread whose ticket is already covered by
    an fsync that began later skips its own.  With many sessions writing to
    one Maildir this turns N directory fsyncs into a few, each still
    covering every rename before it.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._tickets = itertools.count(1)
        self._last_ticket = 0
        self._synced: dict[str, int] = {}

    def sync(self, path: str) -> None:
        with self._guard:
            self._last_ticket = ticket = next(self._tickets)
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            if self._synced.get(path, 0) >= ticket:
                return
            with self._guard:
                covered = self._last_ticket  # every ticket so far was taken after its rename
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._synced[path] = covered
