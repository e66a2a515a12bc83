"""Start-up of ``twistd smtppeer``: the data directory, its owner, and failures said in one line.

twistd starts a service in three steps: ``makeService`` (as the user who
ran it), ``privilegedStartService`` (still that user: root for port 25),
then it switches to ``--uid``/``--gid`` and calls ``startService``.  So:

* the data directory is made and locked in ``makeService``, before anything
  in it is touched: a second service on the same directory would otherwise
  run the spool's recovery and remove the first one's unfinished messages.
  The lock is ``flock`` on ``<data-dir>/smtppeer.lock`` (which holds the
  owner's pid): the kernel releases it when the process ends, however it
  ends, so it is never stale;
* ``privilegedStartService`` hands the directory to the user twistd will
  switch to (``DataDirectory``), and everything opened after the switch (the
  control socket, the JSON log, new Maildirs) is that user's;
* a failure to start (a port in use, the directory in use) is one line
  (``fail``), not a 40-line traceback.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import sys
from types import TracebackType
from typing import IO, NoReturn

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

log = Logger()

LOCK_NAME = "smtppeer.lock"


class StartupError(Exception):
    """The service cannot start; ``str()`` is the one line that says why."""


def fail(message: str) -> NoReturn:
    """End start-up with ``message`` alone.

    twistd removes its pid file when start-up raises an ``Exception`` and
    raises it again; the interpreter then reports it through
    ``sys.excepthook``, which is set here to print a ``StartupError`` as one
    line (on the real standard error: twistd has redirected ``sys.stderr``
    to its log by then) and anything else as usual.  Exit status 1.
    """
    if sys.excepthook is not _excepthook:
        global _previous_hook
        _previous_hook = sys.excepthook
        sys.excepthook = _excepthook
    log.error("{line}", line=message)  # (not critical: before logging begins, twisted prints those too)
    raise StartupError(message)


_previous_hook = sys.excepthook


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if isinstance(value, StartupError):
        stream = sys.__stderr__ or sys.stderr
        print(f"smtppeer: {value}", file=stream)
        stream.flush()
    else:
        _previous_hook(kind, value, tb)


def twistd_owner(options: usage.Options) -> tuple[int, int] | None:
    """The user and group twistd will switch to (``--uid``/``--gid`` of the ``twistd``
    command whose subcommand ``options`` are), as twistd works them out; None if it stays."""
    parent = getattr(options, "parent", None)
    if parent is None or os.geteuid() != 0:
        return None
    try:
        uid, gid = parent["uid"], parent["gid"]
    except KeyError:
        return None
    if uid is None:
        return None
    if gid is None:  # as twistd does: the user's primary group
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


class DataDirectory(service.Service):
    """The data directory, made (mode 0700) and locked when the service is built,
    and handed to the user twistd switches to before it switches."""

    def __init__(self, path: str, owner: tuple[int, int] | None = None) -> None:
        self.path = os.path.abspath(path)
        self.owner = owner
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as e:
            fail(f"cannot make the data directory {self.path}: {e.strerror}")
        self._lock: IO[str] | None = claim(self.path)

    def privilegedStartService(self) -> None:  # noqa: N802 -- twisted's name
        super().privilegedStartService()
        if self.owner is not None:
            hand_over(self.path, *self.owner)

    # No release in stopService: a MultiService calls its children's stopService without
    # waiting for the ones before, so the committers may still be writing then.  The lock
    # goes with the process.

    def release(self) -> None:
        """Give the directory up (for a process that goes on after its service has stopped)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def claim(path: str) -> IO[str]:
    """Lock the data directory for this process, or end start-up saying who has it."""
    lock_path = os.path.join(path, LOCK_NAME)
    try:
        lock = open(lock_path, "a+", encoding="ascii")  # noqa: SIM115 -- held while the service runs
    except OSError as e:
        fail(f"cannot open {lock_path}: {e.strerror}")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            fail(f"cannot lock {lock_path}: {e.strerror}")
        who = f"another smtppeer (pid {holder})" if holder.isdigit() else "another smtppeer"
        fail(f"{who} owns the data directory {path}: stop it first, or give another --data-dir")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def hand_over(path: str, uid: int, gid: int) -> None:
    """Make what the service writes the user's: the data directory, what is directly
    in it, the whole spool, and each Maildir's directories (not the messages in
    them: the service never writes those again, and there may be very many)."""

    def own(target: str) -> None:
        st = os.lstat(target)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(target, uid, gid)

    own(path)
    for entry in os.scandir(path):
        own(entry.path)
    spool = os.path.join(path, "spool")
    for top, dirs, files in os.walk(spool):
        for name in dirs + files:
            own(os.path.join(top, name))
    mail = os.path.join(path, "mail")
    if os.path.isdir(mail):
        for domain in os.scandir(mail):
            own(domain.path)
            if not domain.is_dir(follow_symlinks=False):
                continue
            for box in os.scandir(domain.path):
                own(box.path)
                for part in ("cur", "new", "tmp"):
                    if os.path.isdir(os.path.join(box.path, part)):
                        own(os.path.join(box.path, part))
