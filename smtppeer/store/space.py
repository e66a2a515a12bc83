"""Room on the disk: telling a full file system from other storage failures, and
the free-space floor that MAIL is checked against (``queue_minfree``).

A full disk (or a full quota) is a condition of the system, not a bug: the
client is told ``452 4.3.1 Insufficient system storage`` (RFC 3463), tries
again later, and the log says it once per message, without a traceback.
``FreeSpace`` lets the receiving policy say so at ``MAIL`` already, before a
client sends a message there is no room for (Postfix's ``queue_minfree``).
"""

from __future__ import annotations

import errno
import os

from twisted.internet import interfaces
from twisted.logger import Logger

log = Logger()

# The errors that mean "no room", whichever file system call met them.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})

# How long a look that found enough free space is trusted.  A look is one
# statvfs per path (about 1.5 us each on the development machine's local disk,
# more on a network file system); once a second bounds that on the MAIL path
# however busy the listener is.  Below the floor every MAIL looks again (it is
# refused anyway), so space coming back is noticed at the next one.
RECHECK = 1.0


def out_of_room(error: BaseException) -> bool:
    """Whether a storage error is a full file system or quota (ENOSPC, EDQUOT)."""
    return isinstance(error, OSError) and error.errno in NO_ROOM


class FreeSpace:
    """The free space of the file systems under ``paths``, against a floor.

    ``enough(needed)`` says whether a message of ``needed`` octets (a declared
    ``SIZE``, or 0) still leaves ``minimum`` octets free on each of them.  The
    space counted is what an unprivileged process may use (``f_bavail``): a
    service that runs as root and writes into the blocks reserved for root is
    already in trouble.  Going below the floor and coming back above it are
    logged, one line each, not every refused MAIL.
    """

    def __init__(self, paths: list[str], minimum: int, clock: interfaces.IReactorTime) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.minimum = minimum
        self.clock = clock
        self._free = 0
        self._fullest = self.paths[0]
        self._until = float("-inf")
        self._low = False

    def available(self) -> int:
        """Octets free on the fullest of the file systems (see ``RECHECK``)."""
        now = self.clock.seconds()
        if self._low or now >= self._until:
            self._free, self._fullest = min((_free(path), path) for path in self.paths)
            self._until = now + RECHECK
            low = self._free < self.minimum
            if low != self._low:
                self._low = low
                self._log_change()
        return self._free

    def enough(self, needed: int = 0) -> bool:
        return self.available() >= self.minimum + needed

    def _log_change(self) -> None:
        where = self._fullest
        if self._low:
            log.error(
                "{line}",
                line=f"{self._free} octets free in {where}, below queue_minfree ({self.minimum}): "
                "MAIL gets 452 4.3.1 until there is room",
            )
        else:
            log.info("{line}", line=f"{self._free} octets free in {where} again: MAIL is accepted")


def _free(path: str) -> int:
    """Free octets for an unprivileged writer; a file system that cannot be asked counts as full."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize
