"""A private Postfix instance on a loopback high port, for interop tests.

``PrivatePostfix(tmp_path / "postfix", ...)`` writes a complete, self-contained
Postfix configuration (``main.cf`` + ``master.cf``) under the given directory,
with its own queue, data directory, log file and Maildir tree, and runs it with
``postfix -c DIR start-fg``. Nothing under ``/etc/postfix`` is read for the
configuration or changed; the system instance is never started::

    with PrivatePostfix(tmp_path / "pf", relayhost=sink_port) as pf:
        with smtplib.SMTP("127.0.0.1", pf.port) as client:
            client.sendmail("a@client.test", ["b@far.test"], message)
        pf.wait_for_log(r"status=sent")

Roles (combinable):

- next hop for everything: ``relayhost="[127.0.0.1]:PORT"`` (or just the port);
- per-domain routes: ``transport={"cust.test": "[127.0.0.1]:PORT"}`` (a bare
  ``[host]:port`` gets ``smtp:`` in front; ``"etrnhold:[127.0.0.1]:PORT"`` is used
  as given) -- an ``inline:`` transport map;
- ``relay_domains`` / ``mydestination`` (empty by default: Postfix relays only for
  ``mynetworks`` = 127.0.0.0/8, and has no local(8) domain);
- final delivery into Maildirs (``virtual(8)``): ``mailboxes=["bob@local.test",
  "@other.test"]`` -- one Maildir per address, ``@domain`` is a catch-all for the
  domain's other addresses; the domains become ``virtual_mailbox_domains`` and unknown
  users there get 550 (see :meth:`maildir` and :meth:`maildir_messages`);
- anything else: ``main={"param": "value"}`` (overrides the defaults), ``master=[...]``
  (master.cf lines appended) and ``smtpd_options={...}`` (``-o`` on the test listener).

Every service runs with chroot ``n``; DNS is never queried (``smtp_dns_support_level =
disabled``, ``smtp_host_lookup = native``, ``smtpd_peername_lookup = no``); retry timers
are seconds, not minutes (``queue_run_delay``, ``minimal_backoff_time``,
``maximal_backoff_time`` and the queue lifetimes are constructor arguments).

Directories: ``DIR/etc`` (config_directory), ``DIR/queue`` (queue_directory),
``DIR/maillog`` (maillog_file), ``DIR/start-fg.out`` (stdout of ``postfix start-fg``).
The data directory and the Maildirs must be reachable by unprivileged users (master
opens ``data_directory/master.lock`` as ``postfix``; virtual(8) delivers as
``nobody``). pytest's temp tree (``/tmp/pytest-of-root``, mode 0700, which pytest
resets) is not, so then they live in a private directory under the system temp dir
(:attr:`run_dir`), and stop() moves the Maildirs back to ``DIR/mail`` and removes it.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import pytest

from .conftest import IN_CI, end_process, free_port, require_tool, wait_until

T = TypeVar("T")

SBIN = "/usr/sbin"
DAEMON_DIR = "/usr/lib/postfix/sbin"
MAILBOX_USER = "nobody"

#: A stock master.cf without the public smtpd, every service with chroot ``n``.
#: The test listener (``127.0.0.1:PORT inet ... smtpd``) goes in front of these.
STANDARD_SERVICES = """\
# service  type  private unpriv chroot wakeup maxproc command
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"""


def require_postfix() -> str:
    """The ``postfix`` command, or skip (fail under ``CI=true``) when Postfix is missing.

    A private instance needs root (Postfix's master refuses to run otherwise).
    """
    if os.geteuid() != 0:
        message = "a private Postfix instance needs root"
        if IN_CI:
            pytest.fail(message + " -- CI must not skip interop tests")
        pytest.skip(message)
    path = require_tool("postfix")
    for tool in ("postconf", "postqueue", "postsuper"):
        require_tool(tool)
    if not os.access(os.path.join(DAEMON_DIR, "master"), os.X_OK):
        require_tool("postfix-master-daemon-in-" + DAEMON_DIR)  # skips, or fails under CI
    return path


class PostfixError(RuntimeError):
    """Postfix did not start or stop, a command failed, or a wait timed out (with the log)."""


def _join(value: str | Iterable[str]) -> str:
    return value if isinstance(value, str) else ", ".join(value)


def inline_map(table: Mapping[str, str]) -> str:
    """``inline:{ k=v, ... }``; a value with commas or spaces gets its own braces."""
    items = [f"{{ {k} = {v} }}" if re.search(r"[\s,{}]", v) else f"{k}={v}" for k, v in table.items()]
    return "inline:{ " + ", ".join(items) + " }"


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def _gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _group_name(user: str) -> str:
    return grp.getgrgid(_gid(user)).gr_name


def _searchable_by(user: str, path: Path) -> bool:
    """Can ``user`` reach ``path`` (search permission on it and every ancestor)?"""
    probe = subprocess.run(
        ["test", "-x", str(path)],
        user=user,
        group=_group_name(user),
        extra_groups=[],
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


class PrivatePostfix:
    """A private Postfix instance under ``base``; see the module docstring."""

    def __init__(
        self,
        base: Path | str,
        *,
        hostname: str = "postfix.test",
        relayhost: str | int | None = None,
        transport: Mapping[str, str] | None = None,
        relay_domains: str | Iterable[str] = (),
        mydestination: str | Iterable[str] = (),
        mailboxes: Iterable[str] = (),
        mynetworks: str | Iterable[str] = "127.0.0.0/8",
        queue_lifetime: str = "1h",
        bounce_queue_lifetime: str | None = None,
        queue_run_delay: str = "1s",
        minimal_backoff_time: str = "1s",
        maximal_backoff_time: str = "2s",
        main: Mapping[str, str | Iterable[str]] | None = None,
        master: Iterable[str] = (),
        smtpd_options: Mapping[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.base = Path(base).resolve()
        if re.search(r"[\s,=]", str(self.base)):
            raise ValueError(f"unusable as a Postfix directory (white space, ',' or '='): {self.base}")
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "queue"
        self.log_path = self.base / "maillog"
        self.stdout_path = self.base / "start-fg.out"
        #: where data_directory and the Maildirs live while running (base, or a temp dir)
        self.run_dir = self.base
        self._private_run_dir = False
        self.hostname = hostname
        self._fixed_port = port is not None
        #: the smtpd port on 127.0.0.1 (chosen free unless given)
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.master_pid: int | None = None
        #: pids that ``postfix stop`` left behind and stop() had to SIGKILL (should stay empty)
        self.killed: list[int] = []
        self._stdout = None

        if isinstance(relayhost, int):
            relayhost = f"[127.0.0.1]:{relayhost}"
        routes = {d: (f"smtp:{hop}" if hop.startswith("[") else hop) for d, hop in (transport or {}).items()}
        #: address (or ``@domain``) -> Maildir path relative to mail_dir (with the final slash)
        self.mailboxes: dict[str, str] = {}
        for entry in [mailboxes] if isinstance(mailboxes, str) else mailboxes:
            user, at, domain = entry.rpartition("@")
            if not at or not domain or "/" in entry or re.search(r"[\s,={}]", entry):
                raise ValueError(f"not an address or @domain: {entry!r}")
            self.mailboxes[entry.lower()] = f"{domain.lower()}/{user.lower() or '@catchall'}/"

        self.params: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": "",  # set by _prepare_run_dir()
            "command_directory": SBIN,
            "daemon_directory": DAEMON_DIR,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            # No /dev/log here: postlogd writes our own file (the prefix list must allow it).
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.base),
            "myhostname": hostname,
            "mydomain": hostname.partition(".")[2] or hostname,
            "myorigin": "$myhostname",
            "mydestination": _join(mydestination),
            "relay_domains": _join(relay_domains),
            "mynetworks": _join(mynetworks),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtp_bind_address": "127.0.0.1",
            "relayhost": relayhost or "",
            "transport_maps": inline_map(routes) if routes else "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_banner": "$myhostname ESMTP $mail_name",
            # Never DNS: next hops are [address] literals or /etc/hosts names.
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "append_dot_mydomain": "no",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            # Test-speed queue: seconds, not minutes.
            "queue_run_delay": queue_run_delay,
            "minimal_backoff_time": minimal_backoff_time,
            "maximal_backoff_time": maximal_backoff_time,
            "maximal_queue_lifetime": queue_lifetime,
            "bounce_queue_lifetime": bounce_queue_lifetime or queue_lifetime,
            "smtp_connect_timeout": "5s",
            "in_flow_delay": "0",
            "smtpd_error_sleep_time": "0",
            "delay_warning_time": "0",
        }
        if self.mailboxes:
            self.params.update(
                {
                    "virtual_mailbox_domains": ", ".join(
                        sorted({a.rpartition("@")[2] for a in self.mailboxes})
                    ),
                    "virtual_mailbox_base": "",  # set by _prepare_run_dir()
                    # user@domain -> <base>/domain/user/ (trailing slash: a Maildir)
                    "virtual_mailbox_maps": inline_map(self.mailboxes),
                    "virtual_uid_maps": f"static:{_uid(MAILBOX_USER)}",
                    "virtual_gid_maps": f"static:{_gid(MAILBOX_USER)}",
                }
            )
        for key, value in (main or {}).items():
            self.params[key] = _join(value)
        self.master_lines = list(master)
        self.smtpd_options = dict(smtpd_options or {})

    # -- paths ---------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def mail_dir(self) -> Path:
        """Root of the Maildirs: under :attr:`run_dir` while running, ``base/mail`` after stop()."""
        return self.run_dir / "mail"

    def maildir(self, address: str) -> Path:
        """The Maildir that virtual(8) delivers ``user@domain`` to (see :attr:`mail_dir`)."""
        user, _, domain = address.lower().rpartition("@")
        relative = self.mailboxes.get(f"{user}@{domain}") or self.mailboxes.get(f"@{domain}")
        if relative is None:
            raise KeyError(f"{address} has no mailbox here (mailboxes: {sorted(self.mailboxes)})")
        return self.mail_dir / relative

    def maildir_messages(self, address: str) -> list[bytes]:
        """The messages delivered to ``address`` (Maildir ``new/`` and ``cur/``), oldest first."""
        root = self.maildir(address)
        files = [p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    # -- configuration -------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        if self.run_dir == self.base and not _searchable_by("postfix", self.base):
            self.run_dir = Path(tempfile.mkdtemp(prefix="postfix-run-"))
            self._private_run_dir = True
            os.chmod(self.run_dir, 0o711)
        self.data_dir.mkdir(exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        os.chmod(self.data_dir, 0o700)
        self.params["data_directory"] = str(self.data_dir)
        if self.mailboxes:
            self.mail_dir.mkdir(exist_ok=True)
            if self._private_run_dir and (self.base / "mail").is_dir():  # a restart: bring them back
                shutil.copytree(self.base / "mail", self.mail_dir, dirs_exist_ok=True)
            for path in [self.mail_dir, *self.mail_dir.rglob("*")]:
                shutil.chown(path, MAILBOX_USER, _group_name(MAILBOX_USER))
            self.params["virtual_mailbox_base"] = str(self.mail_dir)

    def write_config(self) -> None:
        """Write main.cf, master.cf and the maps (start() does this)."""
        for path in (self.base, self.config_dir, self.queue_dir):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.queue_dir, 0o755)  # root-owned, not group/other writable
        self._prepare_run_dir()
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.params.items()))
        overrides = "".join(
            f"\n  -o {{ {key} = {value} }}" if re.search(r"\s", value) else f"\n  -o {key}={value}"
            for key, value in self.smtpd_options.items()
        )
        listener = f"127.0.0.1:{self.port} inet n - n - - smtpd{overrides}\n"
        extra = "".join(line.rstrip("\n") + "\n" for line in self.master_lines)
        (self.config_dir / "master.cf").write_text(listener + STANDARD_SERVICES + extra)
        # Postfix re-reads a config file until its mtime is >1s old (it might still be being
        # edited): that costs ~2s per start. Backdate them.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        env["MAIL_CONFIG"] = str(self.config_dir)
        return env

    def command(self, tool: str, *args: str, timeout: float = 20.0, check: bool = True) -> str:
        """Run ``/usr/sbin/TOOL -c CONFIG_DIR ARGS...`` (bounded); its stdout."""
        argv = [os.path.join(SBIN, tool), "-c", str(self.config_dir), *args]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                cwd=self.base if self.base.is_dir() else None,
            )
        except subprocess.TimeoutExpired:
            raise PostfixError(f"{' '.join(argv)} did not finish in {timeout}s\n{self.log_tail()}") from None
        if check and result.returncode != 0:
            raise PostfixError(
                f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
                f"{self._stderr_on_a_tty(argv)}\n{self.log_tail()}"
            )
        return result.stdout

    def _stderr_on_a_tty(self, argv: list[str], timeout: float = 10.0) -> str:
        """Run ``argv`` again with stderr on a pseudo-terminal, for its diagnostics.

        Postfix commands print their errors to stderr only when it is a terminal, and
        otherwise only log them -- through postlogd, which is not running before start.
        """
        master, slave = os.openpty()
        chunks = []
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=slave,
                stderr=slave,
                env=self._env(),
                cwd=self.base if self.base.is_dir() else None,
            )
            os.close(slave)
            slave = -1
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if select.select([master], [], [], 0.1)[0]:
                    try:
                        data = os.read(master, 4096)
                    except OSError:  # EIO: the child side is closed
                        break
                    if not data:
                        break
                    chunks.append(data)
                elif proc.poll() is not None:
                    break
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")

    def check(self) -> None:
        """``postfix check``: creates the queue directories, validates the configuration."""
        self.command("postfix", "check")

    def postconf(self, name: str) -> str:
        """The effective value of a main.cf parameter (``postconf -h NAME``)."""
        return self.command("postconf", "-h", name).strip()

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> PrivatePostfix:
        """Write the configuration, start ``postfix start-fg`` and wait for its 220."""
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self.write_config()
                self.check()
                self._start_once()
                return self
            except BaseException as error:
                busy = f"port {self.port}: Address already in use" in self.log() + self._stdout_text()
                try:
                    self.stop()
                except Exception as stop_error:
                    error.add_note(f"and stop() failed: {stop_error}")
                if not busy or attempt == attempts - 1:
                    raise
                self.port = free_port()  # lost a race for the port: take another one
        raise AssertionError("unreachable")

    def _start_once(self) -> None:
        # check() has just run the integrity checks; quick-start makes start-fg skip them.
        (self.queue_dir / "quick-start").touch()
        self._stdout = open(self.stdout_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [os.path.join(SBIN, "postfix"), "-c", str(self.config_dir), "start-fg"],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            env=self._env(),
            cwd=self.base if self.base.is_dir() else None,
            start_new_session=True,
        )
        expected = f"220 {self.hostname} ESMTP Postfix"
        deadline = time.monotonic() + self.start_timeout
        last = "nothing yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostfixError(
                    f"postfix start-fg exited with {self.proc.returncode}:\n"
                    f"{self._stdout_text()}\n{self.log_tail()}"
                )
            try:
                last = self._greeting()
            except OSError as e:
                last = repr(e)
            if last.startswith(expected):
                self.master_pid = self._read_master_pid()
                return
            time.sleep(0.05)
        raise PostfixError(
            f"Postfix did not greet {expected!r} on port {self.port} within {self.start_timeout}s "
            f"(last: {last}):\n{self._stdout_text()}\n{self.log_tail()}"
        )

    def _greeting(self) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.settimeout(5)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                try:
                    s.recv(1024)
                except OSError:
                    pass
            return data.decode("ascii", "replace")

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """``postfix stop`` (bounded); then SIGKILL anything left; verify nothing is.

        Safe to call twice, or after a failed start. Raises PostfixError if a process of
        this instance survives even SIGKILL.
        """
        master_pid = self.master_pid or self._read_master_pid()
        try:
            if self.running() or self.processes(master_pid):
                # postfix-script: SIGTERM to the master, waits 5s, then SIGKILL to its group
                self.command("postfix", "stop", timeout=timeout, check=False)
                if self.proc is not None:
                    try:
                        self.proc.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        pass
            # Children get SIGTERM from the exiting master; give them a moment to go.
            deadline = time.monotonic() + 5
            while (left := self.processes(master_pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in left:
                self.killed.append(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.proc is not None:
                if self.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
            deadline = time.monotonic() + timeout
            while (left := self.processes(master_pid)) and time.monotonic() < deadline:
                time.sleep(0.05)
            if left:
                raise PostfixError(f"Postfix processes survive SIGKILL: {left}")
        finally:
            if self._stdout is not None:
                self._stdout.close()
                self._stdout = None
            self.proc = None
            self.master_pid = None
            if self._private_run_dir:
                if self.mail_dir.is_dir():
                    shutil.copytree(self.mail_dir, self.base / "mail", dirs_exist_ok=True)
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.run_dir, self._private_run_dir = self.base, False

    def processes(self, master_pid: int | None = None) -> list[int]:
        """Live processes of this instance: MAIL_CONFIG is our config dir, or in the master's session.

        (``pgrep -f CONFIG_DIR`` finds none of them: no Postfix daemon has the configuration
        directory on its command line; it is passed in the environment.)
        """
        mine = f"MAIL_CONFIG={self.config_dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if fields[0] == "Z":  # a zombie is gone, just not yet reaped
                continue
            pgid, sid = int(fields[2]), int(fields[3])
            if mine in environ.split(b"\0") or (master_pid and master_pid in (pgid, sid)):
                found.append(int(entry))
        return found

    def __enter__(self) -> PrivatePostfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- looking at it -------------------------------------------------------------------

    def log(self) -> str:
        """The instance's mail log (``maillog_file``)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the log (for error messages)."""
        return "\n".join(self.log().splitlines()[-lines:])

    def _stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def queue(self) -> list[dict]:
        """The queue as ``postqueue -j`` records (queue_name, queue_id, sender, recipients...).

        One record per queue id.
        """
        records: dict[str, dict] = {}
        for line in self.command("postqueue", "-j").splitlines():
            if line.strip():
                record = json.loads(line)
                # showq walks the queues one after another: a message moving from active to
                # deferred meanwhile is listed twice. Keep the later sighting.
                records.pop(record["queue_id"], None)
                records[record["queue_id"]] = record
        return list(records.values())

    def queue_ids(self) -> list[str]:
        return [record["queue_id"] for record in self.queue()]

    def fast_flush_ids(self, domain: str) -> list[str]:
        """Queue ids in the fast-flush log of ``domain`` (``queue/flush/<domain>``): what ETRN sends.

        A deferred message is logged here a moment *after* its delay reason shows in the queue,
        so an ETRN test should wait for this, not for the queue, or ETRN may find nothing.
        """
        path = self.queue_dir / "flush" / domain.lower().replace(".", "_")
        try:
            return path.read_text().split()
        except FileNotFoundError:
            return []

    def mailq(self) -> str:
        """``postqueue -p`` (the ``mailq`` text)."""
        return self.command("postqueue", "-p")

    def flush(self) -> None:
        """``postqueue -f``: attempt delivery of all queued mail now."""
        self.command("postqueue", "-f")

    def wait_for(self, predicate: Callable[[], T], timeout: float = 15.0, what: str = "") -> T:
        """``wait_until`` (bounded polling; AssertionError naming ``what`` on timeout),
        with Postfix's queue and log in the error."""
        return wait_until(predicate, timeout, what or repr(predicate), detail=self._state)

    def _state(self) -> str:
        try:
            queue = self.mailq()
        except PostfixError as e:
            queue = str(e).partition("\n")[0]
        return f"\nqueue:\n{queue}\nlog:\n{self.log_tail()}"

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match:
        """Wait until the log matches the regular expression ``pattern`` (MULTILINE); the match."""
        regex = re.compile(pattern, re.M)
        return self.wait_for(lambda: regex.search(self.log()), timeout, what=f"log /{pattern}/")

    def wait_for_empty_queue(self, timeout: float = 15.0) -> None:
        self.wait_for(lambda: not self.queue_ids(), timeout, what="an empty queue")


class SmtpSink:
    """Postfix's ``smtp-sink`` on ``127.0.0.1:port``, dumping each message into ``dump_dir``.

    Runs ``smtp-sink -u root -d DUMP_DIR/%M. [options] 127.0.0.1:PORT 256`` (as root so the
    dumps can go into pytest's private temp tree); a context manager, or start()/stop().
    ``port`` may be given, e.g. to bring a next hop up that a Postfix already points at.
    """

    def __init__(self, dump_dir: Path | str, *options: str, port: int | None = None) -> None:
        self.dump_dir = Path(dump_dir)
        self.options = options
        self.port = port if port is not None else free_port()
        self.output_path = self.dump_dir.parent / f"{self.dump_dir.name}.out"
        self.proc: subprocess.Popen | None = None
        self._out = None

    def start(self, timeout: float = 10.0) -> SmtpSink:
        binary = require_tool("smtp-sink")
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.output_path, "ab")  # noqa: SIM115
        argv = [
            binary,
            "-u",
            "root",
            "-d",
            f"{self.dump_dir}/%M.",
            *self.options,
            f"127.0.0.1:{self.port}",
            "256",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"smtp-sink exited: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return self
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"smtp-sink not answering on port {self.port}: {self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc, timeout=10)
            self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def dumps(self) -> list[bytes]:
        """The dumped transactions (X-Client-Addr, X-Mail-Args, X-Rcpt-Args..., then the message)."""
        if not self.dump_dir.is_dir():
            return []
        files = sorted(self.dump_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)
        return [p.read_bytes() for p in files]

    def wait_for_dumps(self, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        """Wait (bounded) until at least ``count`` complete dumps exist; all of them."""

        def complete() -> list[bytes] | None:
            dumps = self.dumps()
            # a dump ends with the empty line smtp-sink appends after the message
            return dumps if len(dumps) >= count and all(d.endswith(b"\n\n") for d in dumps) else None

        return wait_until(
            complete,
            timeout,
            f"{count} complete dumps",
            detail=lambda: f"{len(self.dumps())} dumps; smtp-sink: {self.output()}",
        )
