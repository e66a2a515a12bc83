"""Relay throughput: smtppeer's queue runner against Postfix, same queued load, same smtp-sink.

Why: a relay's outbound side is judged by how fast it empties a full queue
into a next hop that is never the bottleneck.  Postfix's ``smtp-sink`` (C,
no disk) is that next hop, and Postfix itself delivering the same queue to
the same kind of sink is the yardstick (issue 3's target: smtppeer at least
0.5x Postfix).

What, per round and per target (fresh directories, a fresh sink each time):

``smtppeer``
    1. fill (untimed): ``twistd -n smtppeer ... --hold relay.test=bench``
       receives MESSAGES messages for ``b@relay.test`` from ``smtp-source``
       (so every spool entry is one smtppeer itself wrote, Received: header
       included), then it is stopped;
    2. the held recipients are turned into relay recipients for the sink
       (``state`` "pending", ``route`` {"relay": "tcp:host=127.0.0.1:port=SINK",
       "domain": "relay.test"}, ``next_attempt`` 0) through ``smtppeer.store.spool.Envelope``
       -- exactly what smtppeer writes when it receives mail for a routed domain;
    3. timed: from starting ``twistd -n smtppeer ... --route
       relay.test=tcp:host=127.0.0.1:port=SINK`` (interpreter start-up and the
       spool scan included) until ``DATA_DIR/spool/queue/`` is empty.
``postfix``
    1. fill (untimed): a private Postfix instance (own config, queue and data
       directories, ``inet_interfaces = 127.0.0.1``, smtpd on a free high port,
       ``relayhost = [127.0.0.1]:SINK``, ``defer_transports = smtp``, chroot n,
       no DNS) receives the same ``smtp-source`` load; every message ends up
       in the deferred queue ("deferred transport"), nothing is delivered;
    2. timed: from ``postqueue -f`` (which delivers deferred transports too)
       until ``incoming/``, ``active/``, ``deferred/`` and ``hold/`` are empty.
       Postfix keeps its default concurrency (initial_destination_concurrency
       5, default_destination_concurrency_limit 20, connection cache on demand).

The queue directories are polled every 50 ms (an emptiness test that stops
at the first entry, so polling costs next to nothing).  ``os.sync()`` runs
before each timed phase so that neither target pays for the other's or its
own fill's dirty pages.  ``smtp-sink -c`` counts the messages it got; it
must be exactly MESSAGES.  "first msg" is when the sink counted its first
message (from the start of the timed phase); "msg/s after" is the rate from
then on, i.e. without start-up.  The ratio uses the whole-phase rate.

Processes are started in their own sessions with output to log files,
stopped with SIGTERM and, after ``--stop-timeout``, SIGKILL (Postfix: ``postfix
stop``, then every process of the instance, found by its MAIL_CONFIG or
session); only those pids are ever signalled, also on errors and ^C.
Everything listens on 127.0.0.1 only.  Exit status 1 if a run failed or a
count was wrong.

Needs root (Postfix) and Postfix's tools (``postfix``, ``postqueue``,
``smtp-source``, ``smtp-sink``).

Examples::

    python bench/bench_relay.py --quick
    python bench/bench_relay.py --repeat 3
    python bench/bench_relay.py --only smtppeer --messages 5000 -v
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import REPO_ROOT, TWISTD, free_port, machine_info, smtp_source_argv, stop_process, subprocess_env

DOMAIN = "relay.test"
SENDER = "a@x.test"
RECIPIENT = f"b@{DOMAIN}"
HOLD_PEER = "bench"
POLL = 0.05
TARGET_NAMES = ("smtppeer", "postfix")

SBIN = "/usr/sbin"
DAEMON_DIR = "/usr/lib/postfix/sbin"


class BenchError(RuntimeError):
    """A phase failed; the message says what and includes a log tail."""


# -- processes ---------------------------------------------------------------------------


class Proc:
    """One subprocess in its own session, output to a log file, SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, stop_timeout: float = 15.0) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=subprocess_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return self.returncode
        self.killed = stop_process(self.proc, self.stop_timeout) or self.killed
        self.returncode = self.proc.returncode
        return self.returncode

    def stop_note(self) -> str:
        if self.killed:
            return f"{self.name} needed SIGKILL"
        if self.returncode not in (0, -signal.SIGTERM, None):
            return f"{self.name} exit status {self.returncode}"
        return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().replace("\r", "\n").splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.settimeout(5.0)
        line = s.makefile("rb").readline(1024)
        try:
            s.sendall(b"QUIT\r\n")
        except OSError:
            pass
        return line


def wait_for_greeting(port: int, alive: Callable[[], bool], timeout: float, what: str, tail) -> None:
    """Bounded wait for a 220 on 127.0.0.1:port; BenchError (with ``tail()``) otherwise."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited before accepting connections; log tail:\n{tail()}")
        try:
            line = greeting(port)
            if line.startswith(b"220"):
                return
            last = f"unexpected greeting {line[:80]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise BenchError(f"{what} not answering on port {port} after {timeout:.0f}s ({last}); log:\n{tail()}")


# -- smtp-sink and smtp-source -----------------------------------------------------------


def sink_argv(port: int) -> list[str]:
    argv = ["smtp-sink"]
    if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
        argv += ["-u", "nobody"]
    return argv + ["-c", f"127.0.0.1:{port}", "256"]


def start_sink(port: int, log_path: Path, args: argparse.Namespace) -> Proc:
    sink = Proc("smtp-sink", sink_argv(port), log_path, args.stop_timeout).start()
    try:
        wait_for_greeting(port, sink.alive, args.start_timeout, "smtp-sink", sink.log_tail)
    except BaseException:
        sink.stop()
        raise
    # The probe is a session; its counters must not look like a delivery.
    deadline = time.monotonic() + 5
    while "sess=1" not in sink.log_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    return sink


def sink_messages(sink: Proc) -> int | None:
    """The last ``mesg=N`` counter smtp-sink -c printed."""
    counts = re.findall(r"mesg=(\d+)", sink.log_text())
    return int(counts[-1]) if counts else 0


def source_argv(args: argparse.Namespace, port: int | str) -> list[str]:
    return smtp_source_argv(args, port, SENDER, RECIPIENT)


def fill(args: argparse.Namespace, port: int, what: str) -> float:
    """Send the load with smtp-source (untimed phase); seconds taken."""
    argv = source_argv(args, port)
    if args.verbose:
        print(f"    fill: {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"filling {what}: smtp-source did not finish within {args.timeout:.0f}s") from None
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-500:]
        raise BenchError(f"filling {what}: smtp-source exit status {proc.returncode}: {out}")
    return time.perf_counter() - t0


# -- directories -------------------------------------------------------------------------


def has_entry(path: Path) -> bool:
    """Anything in ``path`` (recursing into subdirectories); stops at the first file."""
    try:
        with os.scandir(path) as it:
            for entry in it:
                if not entry.is_dir(follow_symlinks=False) or has_entry(Path(entry.path)):
                    return True
    except FileNotFoundError:
        pass
    return False


def count_entries(path: Path, suffix: str = "") -> int:
    total = 0
    for _dirpath, _dirs, files in os.walk(path):
        total += sum(1 for f in files if f.endswith(suffix))
    return total


@dataclass
class Timing:
    elapsed: float
    first: float | None  # seconds until the sink counted its first message


def time_until_empty(
    is_empty: Callable[[], bool],
    alive: Callable[[], bool],
    sink: Proc,
    t0: float,
    timeout: float,
    what: str,
    tail,
) -> Timing:
    """Poll every 50 ms until ``is_empty()``; bounded; notes the sink's first message."""
    first = None
    while True:
        now = time.perf_counter()
        if first is None and sink.log_path.stat().st_size and "mesg=1" in sink.log_text():
            first = now - t0
        if is_empty():
            return Timing(time.perf_counter() - t0, first)
        if not alive():
            raise BenchError(f"{what} died before its queue was empty; log tail:\n{tail()}")
        if not sink.alive():
            raise BenchError(f"smtp-sink died during the {what} run:\n{sink.log_tail()}")
        if now - t0 > timeout:
            raise BenchError(f"{what}: queue not empty after {timeout:.0f}s; log tail:\n{tail()}")
        time.sleep(POLL)


# -- smtppeer ----------------------------------------------------------------------------


def smtppeer_argv(port: int, data_dir: Path, extra: list[str]) -> list[str]:
    return TWISTD + [
        "-n",
        "--pidfile=",
        "smtppeer",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--hostname",
        "smtppeer.bench.test",
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def sink_endpoint(port: int | str) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


def release_held(queue_dir: Path, endpoint: str) -> int:
    """Turn every held recipient into a due relay recipient for ``endpoint``; entries changed."""
    from smtppeer.store.spool import PENDING, Envelope  # noqa: PLC0415 (needs the repo on sys.path)

    changed = 0
    for name in os.listdir(queue_dir):
        if not name.endswith(".json"):
            continue
        path = queue_dir / name
        envelope = Envelope.from_json(path.read_bytes())
        for rcpt in envelope.recipients:
            rcpt.state = PENDING
            rcpt.route = {"relay": endpoint, "domain": DOMAIN}
            rcpt.next_attempt = 0.0
        tmp = queue_dir / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(envelope.to_json())
        os.replace(tmp, path)
        changed += 1
    return changed


def run_smtppeer(args: argparse.Namespace, root: Path, rnd: Round) -> None:
    data = root / "data"
    data.mkdir(parents=True)
    queue_dir = data / "spool" / "queue"

    port = free_port()
    filler = Proc(
        "smtppeer (fill)",
        smtppeer_argv(port, data, ["--hold", f"{DOMAIN}={HOLD_PEER}"]),
        root / "fill.log",
        args.stop_timeout,
    )
    if args.verbose:
        print(f"    fill server: {shlex.join(filler.argv)}", flush=True)
    with filler.start():
        wait_for_greeting(port, filler.alive, args.start_timeout, "smtppeer (fill)", filler.log_tail)
        rnd.fill = fill(args, port, "smtppeer")
    if filler.stop_note():
        rnd.problems.append(filler.stop_note())
    queued = count_entries(queue_dir, ".json")
    if queued != args.messages:
        raise BenchError(f"smtppeer spooled {queued} entries, expected {args.messages}")

    sink_port = free_port()
    changed = release_held(queue_dir, sink_endpoint(sink_port))
    if changed != args.messages:
        raise BenchError(f"released {changed} spool entries, expected {args.messages}")
    os.sync()

    relay_port = free_port()
    relay = Proc(
        "smtppeer",
        smtppeer_argv(relay_port, data, ["--route", f"{DOMAIN}={sink_endpoint(sink_port)}"]),
        root / "relay.log",
        args.stop_timeout,
    )
    if args.verbose:
        print(f"    relay: {shlex.join(relay.argv)}", flush=True)
    with start_sink(sink_port, root / "sink.log", args) as sink:
        with relay:
            t0 = time.perf_counter()
            relay.start()
            rnd.timing = time_until_empty(
                lambda: not has_entry(queue_dir),
                relay.alive,
                sink,
                t0,
                args.timeout,
                "smtppeer",
                relay.log_tail,
            )
    rnd.received = sink_messages(sink)
    for note in (relay.stop_note(), sink.stop_note()):
        if note:
            rnd.problems.append(note)
    log = relay.log_text()
    batches = [int(n) for n in re.findall(r"session with .*?: (\d+) of \d+ messages delivered", log)]
    rnd.detail = f"{len(batches)} connections, {sum(batches)} messages reported sent"
    for pattern in ("Traceback", "failed:", "Unhandled"):
        if pattern in log:
            rnd.problems.append(f"smtppeer log has {pattern!r}; see {relay.log_path} (use --keep)")


# -- Postfix -----------------------------------------------------------------------------

# A stock master.cf without the public smtpd, every service with chroot n.
MASTER_CF = """\
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
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"""

QUEUES = ("incoming", "active", "deferred", "hold", "maildrop")


class PrivatePostfix:
    """A throw-away Postfix instance under ``base`` relaying everything to 127.0.0.1:sink_port."""

    def __init__(self, base: Path, sink_port: int, args: argparse.Namespace) -> None:
        self.base = base
        self.config_dir = base / "etc"
        self.queue_dir = base / "queue"
        self.data_dir = base / "data"
        self.log_path = base / "maillog"
        self.port = free_port()
        self.start_timeout = args.start_timeout
        self.stop_timeout = args.stop_timeout
        self.proc: Proc | None = None
        self.master_pid: int | None = None
        self.killed: list[int] = []
        self.params = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "command_directory": SBIN,
            "daemon_directory": DAEMON_DIR,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            # No /dev/log in these containers: postlogd writes this file.
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(base),
            "myhostname": "postfix.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtp_bind_address": "127.0.0.1",
            "relayhost": f"[127.0.0.1]:{sink_port}",
            # Everything is held in deferred/ until `postqueue -f`.
            "defer_transports": "smtp",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_peername_lookup": "no",
            "append_dot_mydomain": "no",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            "in_flow_delay": "0",  # only speeds up the (untimed) fill
            "smtpd_error_sleep_time": "0",
            "delay_warning_time": "0",
            "smtp_connect_timeout": "5s",
        }

    def main_cf(self) -> str:
        return "".join(f"{k} = {v}\n" for k, v in self.params.items())

    def master_cf(self) -> str:
        return f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + MASTER_CF

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        env["MAIL_CONFIG"] = str(self.config_dir)
        return env

    def command(self, tool: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        argv = [os.path.join(SBIN, tool), "-c", str(self.config_dir), *args]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                cwd=self.base,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"{shlex.join(argv)} did not finish in {timeout:.0f}s") from None
        if check and result.returncode != 0:
            raise BenchError(
                f"{shlex.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}\n"
                f"{self.log_tail()}"
            )
        return result.stdout

    def write_config(self) -> None:
        for path in (self.config_dir, self.queue_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        os.chmod(self.queue_dir, 0o755)
        shutil.chown(self.data_dir, "postfix", "postfix")
        os.chmod(self.data_dir, 0o700)
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())
        # Postfix waits until a config file is >1s old (it may still be edited): backdate.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))
        probe = subprocess.run(
            ["test", "-x", str(self.data_dir)], user="postfix", group="postfix", extra_groups=[], timeout=10
        )
        if probe.returncode != 0:
            raise BenchError(f"user postfix cannot reach {self.base}; use a --workdir under /tmp")

    def start(self) -> None:
        self.write_config()
        self.command("postfix", "check")  # creates the queue directories
        (self.queue_dir / "quick-start").touch()  # start-fg may skip the checks just run
        self.proc = Proc(
            "postfix",
            [os.path.join(SBIN, "postfix"), "-c", str(self.config_dir), "start-fg"],
            self.base / "start-fg.out",
            self.stop_timeout,
        )
        # Proc passes the repo environment; Postfix needs MAIL_CONFIG too.
        with open(self.proc.log_path, "ab") as out:
            self.proc.proc = subprocess.Popen(
                self.proc.argv,
                cwd=self.base,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_greeting(self.port, self.proc.alive, self.start_timeout, "postfix", self.tails)
        try:
            self.master_pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.master_pid = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no maillog)"
        return "\n".join(text.splitlines()[-lines:])

    def tails(self) -> str:
        out = self.proc.log_tail() if self.proc else ""
        return f"start-fg:\n{out}\nmaillog:\n{self.log_tail()}"

    def queue_empty(self) -> bool:
        return not any(has_entry(self.queue_dir / q) for q in QUEUES)

    def queue_counts(self) -> dict[str, int]:
        return {q: count_entries(self.queue_dir / q) for q in QUEUES}

    def processes(self) -> list[int]:
        """Live processes of this instance: our MAIL_CONFIG in their environment, or our session."""
        mine = f"MAIL_CONFIG={self.config_dir}".encode()
        sessions = {self.master_pid} if self.master_pid else set()
        if self.proc is not None and self.proc.proc is not None:
            sessions.add(self.proc.proc.pid)
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
            if fields[0] == "Z":
                continue
            pgid, sid = int(fields[2]), int(fields[3])
            if mine in environ.split(b"\0") or pgid in sessions or sid in sessions:
                found.append(int(entry))
        return found

    def stop(self) -> None:
        """``postfix stop`` (bounded), then SIGKILL whatever of this instance is left."""
        if self.proc is None:
            return
        if self.proc.alive():
            try:
                self.command("postfix", "stop", timeout=self.stop_timeout, check=False)
                self.proc.proc.wait(timeout=self.stop_timeout)
            except (BenchError, subprocess.TimeoutExpired):
                pass
        deadline = time.monotonic() + 5
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            self.killed.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.stop()
        deadline = time.monotonic() + 10
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if left:
            raise BenchError(f"Postfix processes survive SIGKILL: {left}")


def run_postfix(args: argparse.Namespace, root: Path, rnd: Round) -> None:
    sink_port = free_port()
    pf = PrivatePostfix(root / "postfix", sink_port, args)
    try:
        pf.start()
        rnd.fill = fill(args, pf.port, "postfix")
        # Wait until cleanup and qmgr have put every message into deferred/.
        deadline = time.monotonic() + args.timeout
        while True:
            counts = pf.queue_counts()
            busy = counts["incoming"] + counts["active"] + counts["maildrop"]
            if not busy and counts["deferred"] >= args.messages:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"postfix queue never settled into deferred/: {counts}\n{pf.log_tail()}")
            if not pf.proc.alive():
                raise BenchError(f"postfix died during the fill:\n{pf.tails()}")
            time.sleep(0.25)
        if counts["deferred"] != args.messages or counts["hold"]:
            raise BenchError(f"postfix queued {counts}, expected {args.messages} in deferred/")
        os.sync()
        flush = [os.path.join(SBIN, "postqueue"), "-c", str(pf.config_dir), "-f"]
        if args.verbose:
            print(f"    release: {shlex.join(flush)}", flush=True)
        with start_sink(sink_port, root / "sink.log", args) as sink:
            t0 = time.perf_counter()
            pf.command("postqueue", "-f")
            rnd.timing = time_until_empty(
                pf.queue_empty, pf.proc.alive, sink, t0, args.timeout, "postfix", pf.tails
            )
        rnd.received = sink_messages(sink)
        if sink.stop_note():
            rnd.problems.append(sink.stop_note())
        left = pf.command("postqueue", "-j").strip()
        if left:
            rnd.problems.append(f"postqueue -j not empty after the run: {left[:300]}")
    finally:
        pf.stop()
        if pf.killed:
            rnd.problems.append(f"postfix stop left processes that needed SIGKILL: {pf.killed}")
    log = pf.log_path.read_text(errors="replace") if pf.log_path.exists() else ""
    sent = len(re.findall(r" status=sent ", log))
    connections = len(re.findall(r"postfix/smtp\[\d+\]: .*conn_use=", log))
    rnd.detail = f"{sent} status=sent in maillog"
    if connections:
        rnd.detail += f", {connections} on a cached connection"


# -- rounds and report -------------------------------------------------------------------


@dataclass
class Round:
    fill: float | None = None
    timing: Timing | None = None
    received: int | None = None
    detail: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class Result:
    name: str
    rounds: list[Round] = field(default_factory=list)

    def ok_rounds(self) -> list[Round]:
        return [r for r in self.rounds if r.timing is not None]

    def rates(self, messages: int) -> list[float]:
        return [messages / r.timing.elapsed for r in self.ok_rounds()]

    def after_first(self, messages: int) -> list[float]:
        return [
            (messages - 1) / (r.timing.elapsed - r.timing.first)
            for r in self.ok_rounds()
            if r.timing.first is not None and r.timing.elapsed > r.timing.first
        ]

    @property
    def problems(self) -> list[str]:
        return [p for r in self.rounds for p in r.problems]


RUNNERS = {"smtppeer": run_smtppeer, "postfix": run_postfix}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    n = args.messages
    print()
    print(
        f"{n} queued messages ({args.size}-byte smtp-source payload) -> smtp-sink, {args.repeat} round(s);"
        " medians shown"
    )
    head = (
        f"{'target':<10} {'msg/s':>8} {'min..max msg/s':>16} {'elapsed s':>10} {'first msg s':>12}"
        f" {'msg/s after':>12} {'at sink':>8} {'fill s':>7}  status"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ok = r.ok_rounds()
        rates = r.rates(n)
        if rates:
            rate = f"{median(rates):,.0f}"
            spread = f"{min(rates):,.0f}..{max(rates):,.0f}"
            elapsed = f"{median([x.timing.elapsed for x in ok]):.2f}"
            firsts = [x.timing.first for x in ok if x.timing.first is not None]
            first = f"{median(firsts):.2f}" if firsts else "-"
            after = median(r.after_first(n))
            after_s = f"{after:,.0f}" if after else "-"
            got = sorted({x.received for x in ok}, key=lambda v: -1 if v is None else v)
            at_sink = ",".join(str(g) for g in got)
        else:
            rate = spread = elapsed = first = after_s = at_sink = "-"
        fills = [x.fill for x in r.rounds if x.fill is not None]
        fill_s = f"{median(fills):.1f}" if fills else "-"
        status = "FAIL" if r.problems or len(ok) < len(r.rounds) else "ok"
        print(
            f"{r.name:<10} {rate:>8} {spread:>16} {elapsed:>10} {first:>12} {after_s:>12} {at_sink:>8}"
            f" {fill_s:>7}  {status}"
        )
    for r in results:
        details = list(dict.fromkeys(x.detail for x in r.rounds if x.detail))
        if details:
            print(f"{r.name}: " + "; ".join(details))
    for r in results:
        for p in dict.fromkeys(r.problems):
            print(f"\n{r.name} problem: {p}")
    by_name = {r.name: r for r in results}
    if "smtppeer" in by_name and "postfix" in by_name:
        peer, pf = median(by_name["smtppeer"].rates(n)), median(by_name["postfix"].rates(n))
        print()
        if peer and pf:
            ratio = peer / pf
            verdict = "meets" if ratio >= 0.5 else "MISSES"
            print(f"ratio smtppeer/postfix: {ratio:.2f}x  ({verdict} the >= 0.5x target of issue 3)")
            pa, fa = median(by_name["smtppeer"].after_first(n)), median(by_name["postfix"].after_first(n))
            if pa and fa:
                print(f"ratio after the first delivery (start-up excluded): {pa / fa:.2f}x")
        else:
            print("ratio smtppeer/postfix: n/a (a target produced no result)")


def header(args: argparse.Namespace, workdir: Path) -> None:
    for line in machine_info(workdir):
        print(line)
    version = "?"
    try:
        version = subprocess.run(
            [os.path.join(SBIN, "postconf"), "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    print(f"postfix {version}")
    print(f"load: {shlex.join(source_argv(args, '<PORT>'))}")
    print(f"sink: {shlex.join(sink_argv(0)[:-2])} 127.0.0.1:<SINK> 256  (fresh per run; -c counts)")
    print("smtppeer:")
    print(f"  fill:  {shlex.join(smtppeer_argv(0, Path('DATA'), ['--hold', f'{DOMAIN}={HOLD_PEER}']))}")
    route = f"{{relay: {sink_endpoint('<SINK>')}, domain: {DOMAIN}}}"
    print(f"  then:  held recipients -> state pending, next_attempt 0, route {route}")
    relay = smtppeer_argv(0, Path("DATA"), ["--route", f"{DOMAIN}={sink_endpoint('<SINK>')}"])
    print(f"  timed: {shlex.join(relay)}")
    print("         from process start until DATA/spool/queue/ is empty")
    print("         (runner defaults: 100 msgs/connection, 4 connections per destination, 20 in total)")
    pf = PrivatePostfix(Path("PF"), 0, args)
    keys = ("relayhost", "defer_transports", "inet_interfaces", "smtp_dns_support_level", "in_flow_delay")
    print("postfix (private instance, chroot n, smtpd on 127.0.0.1:<PORT>):")
    print("  main.cf: " + "; ".join(f"{k} = {pf.params[k]}" for k in keys))
    print("  defaults kept: initial_destination_concurrency 5, default_destination_concurrency_limit 20,")
    print("                 smtp_connection_cache_on_demand yes, qmgr_message_active_limit 20000")
    print("  timed: postqueue -c PF/etc -f")
    print("         until PF/queue/{incoming,active,deferred,hold,maildrop} are empty")
    print(f"polling: every {POLL * 1000:.0f} ms; os.sync() before each timed phase")
    sys.stdout.flush()


def _terminate(signum, frame) -> None:  # noqa: ARG001
    raise SystemExit(128 + signum)  # unwinds through every finally: processes get stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", "-m", type=int, default=None, help="queued messages (20000)")
    parser.add_argument("--quick", action="store_true", help="2000 messages unless --messages given")
    parser.add_argument("--size", "-l", type=int, default=1024, help="smtp-source -l bytes (1024)")
    parser.add_argument("--sessions", "-s", type=int, default=20, help="smtp-source -s for the fill (20)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per target (median shown)")
    parser.add_argument(
        "--only", choices=TARGET_NAMES, action="append", help="run only this target (repeatable)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent for data dirs (system tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    parser.add_argument("--start-timeout", type=float, default=30, help="server start wait s (30)")
    parser.add_argument("--stop-timeout", type=float, default=15, help="SIGTERM->SIGKILL s (15)")
    parser.add_argument("--timeout", type=float, default=900, help="fill / drain timeout s (900)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each command")
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 2000 if args.quick else 20000
    if min(args.messages, args.size, args.sessions, args.repeat) < 1:
        parser.error("--messages, --size, --sessions and --repeat must be >= 1")
    names = list(dict.fromkeys(args.only or TARGET_NAMES))
    tools = ["smtp-source", "smtp-sink"] + (["postfix", "postqueue"] if "postfix" in names else [])
    missing = [t for t in tools if shutil.which(t, path=os.environ.get("PATH", "") + ":" + SBIN) is None]
    if missing:
        parser.error(f"not found: {', '.join(missing)} (install postfix)")
    if "postfix" in names and os.geteuid() != 0:
        parser.error("the postfix target needs root (or use --only smtppeer)")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-", dir=args.workdir)).resolve()
    os.chmod(workdir, 0o711)  # Postfix daemons (user postfix) must reach their directories
    sys.path.insert(0, str(REPO_ROOT))
    header(args, workdir)

    results = [Result(name) for name in names]
    try:
        for rnd_no in range(1, args.repeat + 1):
            for res in results:
                root = workdir / f"{res.name}-{rnd_no}"
                root.mkdir()
                end = "\n" if args.verbose else " "
                print(f"round {rnd_no}/{args.repeat}: {res.name} ...", end=end, flush=True)
                rnd = Round()
                res.rounds.append(rnd)
                try:
                    RUNNERS[res.name](args, root, rnd)
                except BenchError as e:
                    rnd.timing = None
                    rnd.problems.append(str(e))
                if rnd.timing is not None:
                    first = f", first at {rnd.timing.first:.2f}s" if rnd.timing.first is not None else ""
                    print(
                        f"{args.messages / rnd.timing.elapsed:,.0f} msg/s ({rnd.timing.elapsed:.2f}s{first};"
                        f" sink got {rnd.received}; fill {rnd.fill:.1f}s)"
                    )
                    if rnd.received != args.messages:
                        rnd.problems.append(f"smtp-sink counted {rnd.received}, expected {args.messages}")
                else:
                    print("FAILED")
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.keep:
            print(f"data and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, args)
    return 1 if any(r.problems or len(r.ok_rounds()) < len(r.rounds) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
