"""Durable delivery into Maildirs (the layout of ``mailbox.Maildir``, mutt, Dovecot).

A message is written once, into ``tmp/`` of the first recipient's Maildir,
synced, then hard-linked into each other recipient's ``new/`` and renamed
into the first one's, and the ``new/`` directories are fsynced: only then
does ``finish`` report success, so a ``250`` never precedes durability.  The
disk work is a ``Commit`` run by the ``Committer``, batched with other
sessions' messages.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import itertools
import os
import socket
import time
from urllib.parse import quote

from twisted.internet.defer import Deferred

from smtppeer.engine import reply
from smtppeer.peer.hooks import MessageSink

from .bodybuffer import MEMORY_LIMIT, BodyBuffer, create_file
from .commits import Commit
from .committer import CommitError, Committer

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

    def __init__(self, root: str, committer: Committer) -> None:
        self.root = root
        self.committer = committer
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
    """One message on its way into one or more Maildirs."""

    def __init__(self, store: MaildirStore, maildirs: list[str], header: bytes, queue_id: str) -> None:
        self.store = store
        self.maildirs = maildirs
        self.queue_id = queue_id
        self.name = unique_name()
        path = os.path.join(maildirs[0], "tmp", self.name)
        self.body = BodyBuffer(path, header, limit=MEMORY_LIMIT, create=self._create)

    @property
    def tmp_path(self) -> str:
        return self.body.path

    def write(self, data: bytes) -> None:
        self.body.write(data)

    def _create(self, path: str):
        try:
            return create_file(path)
        except FileNotFoundError:  # an administrator removed the Maildir while we ran
            self._make_again()
            return create_file(path)

    def _make_again(self) -> None:
        for maildir in self.maildirs:
            self.store.ensure(maildir, again=True)

    def finish(self) -> Deferred:
        large = self.body.large  # streamed to its file already, which a failure removes
        if large and not all(os.path.isdir(os.path.join(m, "new")) for m in self.maildirs):
            self._make_again()
        writes, syncs = self.body.commit_parts()
        first, *others = self.maildirs
        steps = [("link", self.tmp_path, os.path.join(m, "new", self.name)) for m in others]
        steps.append(("rename", self.tmp_path, os.path.join(first, "new", self.name)))
        commit = Commit(writes, syncs, tuple(steps))
        d = self.store.committer.submit(commit)

        def again(failure):  # a small message is still in the commit: make the Maildirs, retry once
            failure.trap(CommitError)
            if large or failure.value.errno != errno.ENOENT:
                return failure
            self._make_again()
            return self.store.committer.submit(commit)

        d.addErrback(again)
        d.addCallback(lambda _: reply(250, "2.0.0", f"Ok: queued as {self.queue_id}"))
        return d

    def abort(self) -> None:
        self.body.discard()

    def retract(self) -> None:
        for maildir in self.maildirs:
            with contextlib.suppress(OSError):  # best effort: a reader may have moved it already
                os.unlink(os.path.join(maildir, "new", self.name))
