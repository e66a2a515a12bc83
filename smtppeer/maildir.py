"""Durable delivery into Maildirs (the layout of ``mailbox.Maildir``, mutt, Dovecot).

A message is written once (into a staged file made ahead of need, see
``staging.py``, or else into ``tmp/`` of the first recipient's Maildir),
synced, then renamed (and hard-linked) into each recipient's ``new/`` and
the ``new/`` directories are fsynced: only then does ``finish`` report
success, so a ``250`` never precedes durability.  The disk work runs in the
``Committer``, batched with other sessions' messages.
"""

from __future__ import annotations

import glob
import itertools
import os
import socket
import time
from urllib.parse import quote

from twisted.internet.defer import Deferred

from .committer import Committer
from .engine import reply
from .hooks import MessageSink
from .staging import Staging

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

    def __init__(self, root: str, committer: Committer, staging: Staging | None = None) -> None:
        self.root = root
        self.committer = committer
        self.staging = staging  # files made ahead of need; without it, each file is made in tmp/
        self._made: set[str] = set()

    def path_for(self, domain: str, local_part: str) -> str:
        return os.path.join(self.root, quote(domain.lower(), safe="[]:.-"), mailbox_dirname(local_part))

    def ensure(self, path: str, *, again: bool = False) -> str:
        """Create the Maildir once; ``again`` after it was removed behind our back."""
        if again or path not in self._made:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
            self._made.add(path)
        return path

    def sweep_tmp(self, max_age: float = 36 * 3600, now: float | None = None) -> int:
        """Remove files left in ``tmp/`` longer than ``max_age`` (the Maildir 36-hour rule).

        A crash while a large message streams in leaves its partial file in
        ``tmp/``; it is never delivered, and this reclaims the space.  Younger
        files are left alone: another delivery agent may be writing them.
        """
        now = time.time() if now is None else now
        removed = 0
        for tmp in glob.glob(os.path.join(glob.escape(self.root), "*", "*", "tmp")):
            for entry in os.scandir(tmp):
                try:
                    if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > max_age:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def new_message(self, maildirs: list[str], header: bytes, queue_id: str) -> MaildirMessage:
        return MaildirMessage(self, [self.ensure(m) for m in dict.fromkeys(maildirs)], header, queue_id)


class MaildirMessage(MessageSink):
    """One message on its way into one or more Maildirs; a ``Commit`` for the committer."""

    def __init__(self, store: MaildirStore, maildirs: list[str], header: bytes, queue_id: str) -> None:
        self.store = store
        self.maildirs = maildirs
        self.queue_id = queue_id
        self.name = unique_name()
        self.tmp_path = os.path.join(maildirs[0], "tmp", self.name)
        self._chunks: list[bytes] = [header]
        self._buffered = len(header)
        self._file = None

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
        if self.store.staging is not None:
            self.tmp_path, fd = self.store.staging.take()
            self._file = open(fd, "wb", buffering=0)  # noqa: SIM115
            return
        try:
            self._file = open(self.tmp_path, "xb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:  # an administrator removed the Maildir while we ran
            for maildir in self.maildirs:
                self.store.ensure(maildir, again=True)
            self._file = open(self.tmp_path, "xb", buffering=0)  # noqa: SIM115

    def _write_buffered(self) -> None:
        self._file.write(b"".join(self._chunks))
        self._chunks = []

    def finish(self) -> Deferred:
        large = self._file is not None  # streamed to disk already: sync it off the reactor
        if not large:
            self._open()
            self._write_buffered()
        d = self.store.committer.submit(self, large=large)
        d.addCallback(lambda _: reply(250, "2.0.0", f"Ok: queued as {self.queue_id}"))
        return d

    # -- Commit, run by a committer thread ----------------------------------------

    def write_and_sync(self) -> None:
        f, self._file = self._file, None
        try:
            os.fdatasync(f.fileno())  # data and size; the name is synced by the committer
        finally:
            f.close()

    def publish(self) -> list[str]:
        first, *others = self.maildirs
        try:
            for maildir in others:
                target = os.path.join(maildir, "new", self.name)
                try:
                    os.link(self.tmp_path, target)
                except FileNotFoundError:  # removed while we ran: make it again
                    self.store.ensure(maildir, again=True)
                    os.link(self.tmp_path, target)
            os.rename(self.tmp_path, os.path.join(first, "new", self.name))
        except BaseException:
            os.unlink(self.tmp_path)
            raise
        return [os.path.join(m, "new") for m in self.maildirs]

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass
        self._chunks = []
