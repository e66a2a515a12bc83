"""Durable Maildir delivery shared by the two baseline servers.

Both baselines (``baseline_aiosmtpd.py`` and ``baseline_twisted_mail.py``) must
pay exactly the same disk cost as a real receiver that only replies ``250``
once a message is on stable storage, otherwise the comparison with smtppeer
would measure durability policy instead of protocol handling.  The sequence is
the classic qmail/Maildir one:

1. write the message to ``DIR/tmp/<unique name>`` (``O_CREAT | O_EXCL``);
2. ``f.flush()`` then ``os.fsync(fd)``;
3. ``os.rename`` it into ``DIR/new/``;
4. ``fsync`` the ``DIR/new`` directory so the rename itself is durable.

:func:`MaildirWriter.deliver` is blocking and is meant to be called from a
worker thread (the asyncio default executor, or Twisted's ``deferToThread``).
:func:`MaildirWriter.unique_name` is meant to be called from the event-loop
thread.
"""

from __future__ import annotations

import itertools
import os
import socket
import time


class MaildirWriter:
    """Create ``tmp``/``new``/``cur`` under *root* and deliver messages durably."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.tmp = os.path.join(self.root, "tmp")
        self.new = os.path.join(self.root, "new")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)
        host = socket.gethostname() or "localhost"
        # Maildir spec: '/' and ':' must not appear in the host part.
        self._host = host.replace("/", "\\057").replace(":", "\\072")
        self._pid = os.getpid()
        self._seq = itertools.count()

    def unique_name(self) -> str:
        """Return a Maildir-style unique file name (``sec.MusecPpidQn.host``)."""
        now = time.time_ns() // 1000
        sec, usec = divmod(now, 1_000_000)
        return f"{sec}.M{usec}P{self._pid}Q{next(self._seq)}.{self._host}"

    def deliver(self, name: str, data: bytes) -> str:
        """Write *data* durably as ``new/<name>``; return the final path. Blocking."""
        tmp_path = os.path.join(self.tmp, name)
        new_path = os.path.join(self.new, name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
                f.flush()
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, new_path)
        dfd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return new_path
