"""A private Exim 4 on a loopback high port, for interop tests (issue 14).

Debian's ``exim4-daemon-light`` conflicts with ``postfix``, so ``.ci/install-interop-peers``
unpacks its .deb under ``/opt/smtppeer-interop/exim`` (``$SMTPPEER_INTEROP``
moves it; ``$SMTPPEER_EXIM`` names the binary itself) and this module runs
``exim4 -C FILE`` with a configuration of its own::

    with PrivateExim(smarthost=PORT) as exim:
        exim.send("a@client.test", ["u@peer.test"], message)   # Exim as a client, at once (-odi)
        port = exim.start_daemon("NO8BIT")                     # Exim as a server, with -D macros

Everything it accepts goes to ``127.0.0.1:smarthost`` (``manualroute``,
``self = send``).  Macros: ``NOPIPE`` (no PIPELINING offered; Exim then
enforces synchronisation), ``NO8BIT`` (no 8BITMIME), ``NOTLS`` (no STARTTLS
offered), ``REQTLS`` (its deliveries insist on STARTTLS), ``PLAIN`` (its deliveries never
use STARTTLS, which they otherwise try whenever it is offered).  A failed
delivery is retried (``-qff``), never bounced at once.

With a ``-C`` file Exim drops to the user ``Debian-exim`` at once, so its
spool and log live in a directory of their own under the system temporary
directory (mode 0755; pytest's ``/tmp/pytest-of-root`` is 0700 and Exim
cannot reach into it), removed by :meth:`stop`.  The daemon runs in a
process group of its own and the whole group is stopped: a plain SIGTERM to
the daemon leaves the child serving an open session running.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import IN_CI, free_port
from .daemons import start_group, stop_group

INTEROP = os.environ.get("SMTPPEER_INTEROP", "/opt/smtppeer-interop")
EXIM_USER = "Debian-exim"
TIMEOUT = 60

CONFIG = """\
# A private Exim for smtppeer's interop tests (tests/exim.py): accept anything on
# 127.0.0.1, relay everything to 127.0.0.1:SMARTHOST_PORT.
exim_path = {exim}
primary_hostname = exim.test
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
keep_environment =
local_interfaces = 127.0.0.1
acl_smtp_rcpt = accept
.ifdef NOPIPE
pipelining_advertise_hosts = :
.endif
.ifdef NO8BIT
accept_8bitmime = false
.endif
.ifdef NOTLS
tls_advertise_hosts =
.endif

begin routers
smarthost:
  driver = manualroute
  route_list = * 127.0.0.1
  self = send
  transport = to_smarthost

begin transports
to_smarthost:
  driver = smtp
  port = SMARTHOST_PORT
.ifdef REQTLS
  hosts_require_tls = *
.endif
.ifdef PLAIN
  hosts_avoid_tls = *
.endif

begin retry
*  *  F,1d,1m
"""


def require_exim() -> str:
    """The unpacked ``exim4``, or skip (fail under ``CI=true``) when it is missing."""
    path = os.environ.get("SMTPPEER_EXIM") or os.path.join(INTEROP, "exim/usr/sbin/exim4")
    problem = None
    if os.geteuid() != 0:
        problem = "a private Exim (exim4 -C) needs root"
    elif not os.access(path, os.X_OK):
        problem = f"no Exim at {path} (run .ci/install-interop-peers)"
    else:
        try:
            pwd.getpwnam(EXIM_USER)
        except KeyError:
            problem = f"no user {EXIM_USER} (run .ci/install-interop-peers)"
    if problem is not None:
        if IN_CI:
            pytest.fail(problem + " -- CI must not skip interop tests")
        pytest.skip(problem)
    return path


class PrivateExim:
    def __init__(self, smarthost: int) -> None:
        self.exim = require_exim()
        self.smarthost = smarthost
        self.dir = Path(tempfile.mkdtemp(prefix="smtppeer-exim-"))
        os.chmod(self.dir, 0o755)
        for sub in ("spool", "log"):
            (self.dir / sub).mkdir()
            shutil.chown(self.dir / sub, EXIM_USER, EXIM_USER)
        self.config = self.dir / "exim.conf"
        self.config.write_text(CONFIG.format(exim=self.exim, dir=self.dir))
        os.chmod(self.config, 0o644)  # root's, not group or world writable: Exim checks
        self.daemon: subprocess.Popen | None = None
        self.port: int | None = None

    def __enter__(self) -> PrivateExim:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _argv(self, *args: str, macros: tuple[str, ...] = ()) -> list[str]:
        defines = [f"-D{m}" for m in macros]
        return [self.exim, "-C", str(self.config), f"-DSMARTHOST_PORT={self.smarthost}", *defines, *args]

    def run(
        self, *args: str, macros: tuple[str, ...] = (), stdin: bytes = b""
    ) -> subprocess.CompletedProcess:
        argv = self._argv(*args, macros=macros)
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT, check=False)

    def send(
        self, sender: str, recipients: list[str], message: bytes, *macros: str
    ) -> subprocess.CompletedProcess:
        """Exim as a client: take ``message`` (LF line ends) and deliver it now (``-odi``)."""
        return self.run("-odi", "-f", sender, *recipients, macros=macros, stdin=message)

    def queue_run(self, *macros: str) -> subprocess.CompletedProcess:
        """Try every queued message again now (``-qff``), and wait for it."""
        return self.run("-qff", macros=macros)

    def queued(self) -> int:
        return int(self.run("-bpc").stdout.decode().strip() or 0)

    def mainlog(self) -> str:
        path = self.dir / "log" / "mainlog"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_daemon(self, *macros: str) -> int:
        """Exim as a server on a free loopback port; returns the port."""
        self.port = free_port()
        argv = self._argv("-bdf", "-oX", str(self.port), macros=macros)
        self.daemon = start_group(argv, self.port, subprocess.DEVNULL, self.mainlog)
        return self.port

    def stop(self) -> None:
        """Stop the daemon's process group (if any) and remove the directory."""
        if self.daemon is not None:
            stop_group(self.daemon)
            self.daemon = None
        shutil.rmtree(self.dir, ignore_errors=True)
