"""Shared plumbing for the receive benchmarks: targets, server lifecycle, machine info.

Every target is a server started as a subprocess listening on a free
127.0.0.1 port.  :class:`Server` is a context manager that

* starts it with stdout/stderr going to a log file (never a pipe, so a chatty
  server cannot block on a full pipe and skew the timing);
* waits -- for a bounded time -- until the port answers with a ``220``
  greeting, and fails early with the log tail if the process dies;
* reads ``VmRSS``/``VmHWM`` from ``/proc/PID/status``;
* stops it with SIGTERM, then SIGKILL after a timeout, always (``__exit__``).

Only the pid returned by :class:`subprocess.Popen` is ever signalled.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# `python -m twisted.scripts.twistd` does *not* work: that module has no
# `if __name__ == "__main__"` block, so it imports and exits 0 silently.  This
# runs the same entry point the `twistd` console script uses, in a process
# whose pid is the server's pid (no shell, no pyenv shim in between).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


class StartError(RuntimeError):
    """The server could not be started or never accepted connections."""


@dataclass(frozen=True)
class Target:
    name: str
    # (port, data_dir) -> argv
    argv: Callable[[int, Path], list[str]]
    # data_dir -> directory whose files are the delivered messages (None: discards mail)
    new_dir: Callable[[Path], Path] | None
    description: str


def _smtp_sink_argv(port: int, data_dir: Path) -> list[str]:
    argv = ["smtp-sink"]
    if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
        argv += ["-u", "nobody"]
    return argv + [f"127.0.0.1:{port}", "256"]


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target(
            "smtppeer",
            lambda port, d: (
                TWISTD
                + [
                    "-n",
                    "--pidfile=",
                    "smtppeer",
                    "--listen",
                    f"tcp:{port}:interface=127.0.0.1",
                    "--data-dir",
                    str(d),
                    "--hostname",
                    "bench.test",
                    "--max-message-size",
                    str(1 << 30),  # the big-message run sends 100 MiB; the default is 50 MiB
                ]
            ),
            lambda d: d / "mail" / "localhost" / "b" / "new",
            "twistd -n smtppeer (the product)",
        ),
        Target(
            "twisted.mail-durable",
            lambda port, d: [
                sys.executable,
                str(BENCH_DIR / "baseline_twisted_mail.py"),
                "--port",
                str(port),
                "--maildir",
                str(d / "maildir"),
            ],
            lambda d: d / "maildir" / "new",
            "stock twisted.mail.smtp.ESMTP, fsync'd Maildir via deferToThread",
        ),
        Target(
            "aiosmtpd-durable",
            lambda port, d: [
                sys.executable,
                str(BENCH_DIR / "baseline_aiosmtpd.py"),
                "--port",
                str(port),
                "--maildir",
                str(d / "maildir"),
            ],
            lambda d: d / "maildir" / "new",
            "aiosmtpd, fsync'd Maildir via run_in_executor",
        ),
        Target(
            "smtp-sink",
            _smtp_sink_argv,
            None,
            "Postfix smtp-sink, discards mail (C ceiling, no disk)",
        ),
    ]
}


def select_targets(only: list[str] | None) -> list[Target]:
    if not only:
        return list(TARGETS.values())
    names: list[str] = []
    for item in only:
        names += [n.strip() for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    return [TARGETS[n] for n in names]


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (small race, acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_common_arguments(parser) -> None:
    """Options shared by bench_receive.py and bench_big_message.py."""
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME[,NAME]",
        help=f"run only these targets (repeatable); known: {', '.join(TARGETS)}",
    )
    parser.add_argument(
        "--smtppeer-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument appended to the smtppeer command (repeatable; write"
        " --smtppeer-arg=--opt=value for options)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds per target (median shown)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent for data dirs (tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--start-timeout", type=float, default=20, help="server start wait s (20)")
    parser.add_argument("--stop-timeout", type=float, default=15, help="SIGTERM->SIGKILL s (15)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each command")


def extra_args_for(target: Target, args) -> list[str]:
    return list(args.smtppeer_arg) if target.name == "smtppeer" else []


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _kib(value: str | None) -> int | None:
    if not value:
        return None
    return int(value.split()[0])  # "12345 kB"


def stop_process(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM, wait ``timeout`` seconds, then SIGKILL; True if it had to be killed."""
    if proc.poll() is not None:
        return False
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        return True


def smtp_source_argv(args, port: int | str, sender: str, recipient: str) -> list[str]:
    """Postfix's load generator with the benchmarks' shared knobs (sessions, size, count)."""
    return [
        "smtp-source",
        "-s",
        str(args.sessions),
        "-d",
        "-l",
        str(args.size),
        "-m",
        str(args.messages),
        "-f",
        sender,
        "-t",
        recipient,
        f"127.0.0.1:{port}",
    ]


class Server:
    """One target server process on a free loopback port."""

    def __init__(
        self,
        target: Target,
        data_dir: Path,
        start_timeout: float = 20.0,
        stop_timeout: float = 15.0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.target = target
        self.data_dir = data_dir
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = free_port()
        self.argv = target.argv(self.port, data_dir) + list(extra_args or [])
        self.log_path = data_dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=subprocess_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal ^C reaches only us; we stop it
            )
        deadline = time.monotonic() + self.start_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise StartError(
                    f"exited with status {self.proc.returncode} before accepting connections;"
                    f" log tail:\n{self.log_tail()}"
                )
            try:
                banner = self._probe()
            except OSError as e:
                last_error = str(e)
                time.sleep(0.1)
                continue
            if banner.startswith(b"220"):
                return
            last_error = f"unexpected greeting {banner[:80]!r}"
            time.sleep(0.1)
        self.stop()
        raise StartError(
            f"not accepting SMTP on port {self.port} after {self.start_timeout:.0f}s"
            f" ({last_error}); log tail:\n{self.log_tail()}"
        )

    def _probe(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as s:
            f = s.makefile("rb")
            line = f.readline(1024)
            while line[3:4] == b"-":  # multi-line greeting
                line = f.readline(1024)
            try:
                s.sendall(b"QUIT\r\n")
                f.readline(1024)
            except OSError:
                pass
            return line

    def memory_kib(self) -> tuple[int | None, int | None]:
        """(VmRSS, VmHWM) of the server process in KiB; (None, None) if gone."""
        if self.proc is None or self.proc.poll() is not None:
            return None, None
        st = proc_status(self.pid)
        return _kib(st.get("VmRSS")), _kib(st.get("VmHWM"))

    def stop(self) -> int | None:
        """SIGTERM, wait stop_timeout, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return self.returncode
        killed = stop_process(self.proc, self.stop_timeout)
        self.killed = self.killed or killed
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_note(self) -> str:
        if self.killed:
            return "needed SIGKILL"
        if self.returncode not in (0, -signal.SIGTERM):
            return f"exit status {self.returncode}"
        return ""


def count_files(path: Path) -> int:
    try:
        return sum(1 for e in os.scandir(path) if e.is_file())
    except FileNotFoundError:
        return 0


def filesystem_of(path: Path) -> str:
    """'fstype on mountpoint' for *path* (fsync on tmpfs is free, so it matters)."""
    path = path.resolve()
    best = ("?", "?")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (path == Path(mnt) or Path(mnt) in path.parents) and len(mnt) >= len(best[1]):
            best = (parts[2], mnt)
    return f"{best[0]} on {best[1]}"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def machine_info(workdir: Path) -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        f"command: {shlex.join([sys.executable, *sys.argv])}",
        f"cwd: {os.getcwd()}",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"host: {platform.node()} {platform.platform()}",
        f"cpu: {cpu}; nproc {os.cpu_count()} (usable {usable}); loadavg {load}",
        f"python: {sys.version.split()[0]} ({sys.executable})",
        f"twisted {_version('twisted')}, aiosmtpd {_version('aiosmtpd')}",
        f"workdir: {workdir} ({filesystem_of(workdir)})",
    ]


def run_rounds(
    results: list,
    args,
    workdir: Path,
    run: Callable[[object, Path], None],
    progress: Callable[[object], str],
    key: Callable[[object], str] = lambda res: res.target.name,
    own_workdir: bool = True,
) -> None:
    """Every target once per round, each in a fresh data directory under ``workdir``
    (all removed at the end unless ``--keep``), printing a line per run.

    Nothing is removed between runs: on ext4 without a journal (these
    machines), every file created in the 30 s after many were deleted costs
    the kernel a scan over the deleted inodes (``perf``: ``find_inode_bit``,
    ``recently_deleted``), so one target's clean-up slowed the next target.

    A result has ``rates``, ``problems`` and ``skipped``; ``run(res, data_dir)``
    appends to them; ``progress(res)`` says how the last run went; ``key(res)``
    names it (and its data directory).  With ``own_workdir`` it also removes
    ``workdir`` at the end (or says where it is kept)."""
    try:
        for rnd in range(1, args.repeat + 1):
            for res in results:
                if res.skipped is not None:
                    continue
                data_dir = workdir / f"{key(res).replace(' ', '-')}-{rnd}"
                end = "\n" if getattr(args, "verbose", False) else " "
                print(f"round {rnd}/{args.repeat}: {key(res)} ...", end=end, flush=True)
                n_before, p_before = len(res.rates), len(res.problems)
                run(res, data_dir)
                if res.skipped is not None:
                    print("did not start, skipped")
                elif len(res.rates) > n_before:
                    flag = "" if len(res.problems) == p_before else " (with problems)"
                    print(progress(res) + flag)
                else:
                    print("FAILED")
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif own_workdir:
            print(f"data kept in {workdir}")
