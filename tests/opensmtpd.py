"""A private OpenSMTPD 6.8 as a strict server without PIPELINING (issue 14, item 4).

OpenSMTPD offers no PIPELINING and means it: a command with more input
behind it gets ``500 5.5.1 Invalid command: Pipelining not supported`` and
the connection is closed.  ``.ci/install-interop-peers`` unpacks Debian's
package (it conflicts with ``postfix``) under ``/opt/smtppeer-interop/opensmtpd``;
``smtpd -d -f FILE`` runs it in the foreground with a configuration of its
own on a loopback high port::

    with PrivateOpenSMTPD(tmp_path) as server:
        ...  # connect to 127.0.0.1:server.port

It accepts mail for no domain at all (every RCPT gets ``550 Invalid
recipient``): its spool (``/var/spool/smtpd``) and control socket
(``/var/run/smtpd.sock``) are compiled in, shared by every instance on the
machine, so one runs at a time (a lock file) and it is never given anything
to queue.  A spool directory it created is removed again at the end.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import IN_CI, free_port
from .daemons import start_group, stop_group
from .exim import INTEROP

SPOOL = Path("/var/spool/smtpd")
CONTROL = "/var/run/smtpd.sock"
LOCK = "/tmp/smtppeer-opensmtpd.lock"
CHROOT = Path("/var/lib/opensmtpd/empty")

CONFIG = """\
# A private OpenSMTPD for smtppeer's interop tests (tests/opensmtpd.py): every
# recipient is refused (the one rule, which smtpd insists on having, is for a
# domain nobody sends to), so nothing ever enters the machine-wide spool.
listen on 127.0.0.1 port {port} hostname opensmtpd.test
action "never" relay host smtp://127.0.0.1:9
match from any for domain "never.invalid" action "never"
"""


def _skip_or_fail(problem: str) -> None:
    if IN_CI:
        pytest.fail(problem + " -- CI must not skip interop tests")
    pytest.skip(problem)


def require_opensmtpd() -> str:
    """The unpacked ``smtpd``, or skip (fail under ``CI=true``) when it cannot run here."""
    path = os.environ.get("SMTPPEER_OPENSMTPD") or os.path.join(INTEROP, "opensmtpd/usr/sbin/smtpd")
    if os.geteuid() != 0:
        _skip_or_fail("a private OpenSMTPD needs root")
    if not os.access(path, os.X_OK):
        _skip_or_fail(f"no OpenSMTPD at {path} (run .ci/install-interop-peers)")
    for user in ("opensmtpd", "opensmtpq"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            _skip_or_fail(f"no user {user} (run .ci/install-interop-peers)")
    if not CHROOT.is_dir():
        _skip_or_fail(f"no {CHROOT} (run .ci/install-interop-peers)")
    return path


def _control_socket_in_use() -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(CONTROL)
        except OSError:
            return False
    return True


class PrivateOpenSMTPD:
    def __init__(self, base: Path) -> None:
        self.smtpd = require_opensmtpd()
        self.base = base
        self.port = free_port()
        self.config = base / "smtpd.conf"
        self.config.write_text(CONFIG.format(port=self.port))
        self.log_path = base / "smtpd.log"
        self.proc: subprocess.Popen | None = None
        self._lock = None
        self._made_spool = False

    def __enter__(self) -> PrivateOpenSMTPD:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        self._lock = open(LOCK, "w")  # noqa: SIM115 - held until stop()
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # one instance on the machine at a time
        if _control_socket_in_use():
            self.stop()
            _skip_or_fail(f"another OpenSMTPD runs on this machine ({CONTROL} answers)")
        self._made_spool = not SPOOL.exists()
        with open(self.log_path, "wb") as log:
            self.proc = start_group([self.smtpd, "-d", "-f", str(self.config)], self.port, log, self.log)

    def stop(self) -> None:
        """smtpd and its privilege-separated children; a spool it made; then the lock."""
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
        if self._made_spool and not any(SPOOL.glob("queue/*/*")):
            shutil.rmtree(SPOOL, ignore_errors=True)
            self._made_spool = False
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
