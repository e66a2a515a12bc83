"""Secured sessions: STARTTLS + AUTH PLAIN + one message per connection, sessions/s per server.

Why: a submission or peer-to-peer session that logs in pays for a TCP
connection, a TLS handshake and an AUTH exchange before its one message.
``bench_receive.py`` measures the message path over long plain sessions; this
measures the per-connection cost, with and without TLS+AUTH, so the price of
security can be read off and compared with an idiomatic asyncio server.

What: every session is, in order::

    connect, EHLO, STARTTLS, EHLO, AUTH PLAIN (initial response),
    MAIL FROM:<a@x.test>, RCPT TO:<b@localhost>, DATA (1 KiB body), QUIT

(mode ``tls``), or the same without STARTTLS, the second EHLO and AUTH (mode
``plain``).  A message counts as accepted when DATA got ``250``; a session is
ok when every step got the expected reply.  The servers, each started afresh
(new process, new data directory, free 127.0.0.1 port) for every
(server, mode, round), and configured identically for both modes:

``smtppeer``
    ``twistd -n smtppeer --config FILE``, the file naming one listener, a
    ``[tls]`` certificate and key, and one ``[users.bench]`` login with a
    clear password (group-committed Maildir, durable before ``250``);
``aiosmtpd``
    ``baseline_aiosmtpd.py --tls-cert --tls-key --auth-user``: aiosmtpd with
    ``tls_context`` and an authenticator, every message written and fsync'd
    (file and directory) in the default executor before ``250``.

The certificate is one self-signed P-256 certificate for ``127.0.0.1`` made
by ``smtppeer.peer.tls.make_self_signed`` (what ``smtppeer make-cert`` does); the
client verifies it (it is its only trust root) and its host name.

The client: ``--workers`` processes (multiprocessing, fork), each running
``smtplib`` sessions one after the other in lock step, taking the next
session number from a shared counter until ``--sessions`` have been started
or ``--time-limit`` has passed.  Processes rather than threads, so that the
client's own TLS and Python work is not serialised by one GIL; the client's
CPU time is measured (``getrusage`` in each worker) and printed next to the
server's (``/proc/PID/stat``), so one can see which side used the cores.
Time runs from releasing the ready workers to the last one finishing.

After each run the server is stopped (SIGTERM, SIGKILL after a timeout) and
the files in its ``new/`` directory counted: they must equal the number of
``250`` replies to DATA.  The table shows sessions/s (median over
``--repeat`` rounds; rounds run the (server, mode) pairs round-robin so
machine noise is spread), session latency, CPU per session, and then
smtppeer's rate divided by aiosmtpd's for each mode and each server's
plain/tls ratio (the cost of TLS+AUTH).  Exit status 1 if any run failed,
had a failed session or stored a wrong number of messages.

Client and servers share the machine (see nproc in the header): the numbers
compare the servers with each other, not with a dedicated host.

Examples::

    python bench/bench_tls.py --repeat 3
    python bench/bench_tls.py --sessions 500 --only aiosmtpd --modes tls -v
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import os
import queue
import resource
import shlex
import shutil
import smtplib
import ssl
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    BENCH_DIR,
    REPO_ROOT,
    TWISTD,
    Server,
    StartError,
    Target,
    count_files,
    machine_info,
    run_rounds,
)

HOST = "127.0.0.1"
SENDER = "a@x.test"
RECIPIENT = "b@localhost"
USERNAME = "bench"
PASSWORD = "bench-secret-password"
MODES = ("tls", "plain")
MODE_LABEL = {"tls": "tls+auth", "plain": "plain"}


# --- servers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    certificate: Path
    key: Path
    ca_pem: str


def make_tls_files(directory: Path) -> TLSFiles:
    sys.path.insert(0, str(REPO_ROOT))
    from smtppeer.peer.tls import make_self_signed  # noqa: PLC0415 - the repo is only on sys.path now

    cert, key = directory / "cert.pem", directory / "key.pem"
    make_self_signed(HOST, str(cert), str(key))
    return TLSFiles(cert, key, cert.read_text())


SMTPPEER_CONFIG = """\
# written by bench/bench_tls.py
hostname = "bench.test"
data_dir = "{data_dir}"

[tls]
certificate = "{certificate}"
key = "{key}"

[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"

[users.{username}]
password = "{password}"

[limits]
message_size = "1G"
"""


def smtppeer_target(tls: TLSFiles, extra: list[str]) -> Target:
    def argv(port: int, data_dir: Path) -> list[str]:
        # Server() picks the port before calling this, so the file is written here.
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "smtppeer.toml"
        config.write_text(
            SMTPPEER_CONFIG.format(
                data_dir=data_dir / "data",
                certificate=tls.certificate,
                key=tls.key,
                port=port,
                username=USERNAME,
                password=PASSWORD,
            )
        )
        return TWISTD + ["-n", "--pidfile=", "smtppeer", "--config", str(config)] + extra

    return Target(
        "smtppeer",
        argv,
        lambda d: d / "data" / "mail" / "localhost" / "b" / "new",
        "twistd -n smtppeer --config FILE ([[listen]], [tls], [users.bench])",
    )


def aiosmtpd_target(tls: TLSFiles) -> Target:
    def argv(port: int, data_dir: Path) -> list[str]:
        return [
            sys.executable,
            str(BENCH_DIR / "baseline_aiosmtpd.py"),
            "--port",
            str(port),
            "--maildir",
            str(data_dir / "maildir"),
            "--tls-cert",
            str(tls.certificate),
            "--tls-key",
            str(tls.key),
            "--auth-user",
            f"{USERNAME}:{PASSWORD}",
        ]

    return Target(
        "aiosmtpd",
        argv,
        lambda d: d / "maildir" / "new",
        "baseline_aiosmtpd.py with tls_context and an authenticator, fsync'd Maildir",
    )


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- client ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientJob:
    port: int
    mode: str
    sessions: int
    time_limit: float
    size: int
    ca_pem: str
    timeout: float


def make_message(size: int) -> bytes:
    """A small RFC 5322 message whose body is ``size`` octets (78-character lines, CRLF)."""
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench_tls\r\n"
        "Message-ID: <bench-tls@x.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return head + body


def _expect(got: tuple[int, bytes], code: int, what: str) -> None:
    if got[0] != code:
        raise smtplib.SMTPResponseException(got[0], f"{what}: {got[1]!r}".encode())


def one_session(job: ClientJob, context: ssl.SSLContext | None, message: bytes, plain_auth: str) -> bool:
    """One session; returns whether DATA got 250 (raises on any other unexpected reply)."""
    accepted = False
    client = smtplib.SMTP(HOST, job.port, local_hostname="client.test", timeout=job.timeout)
    try:
        _expect(client.ehlo(), 250, "EHLO")
        if context is not None:
            if not client.has_extn("starttls"):
                raise smtplib.SMTPNotSupportedError("STARTTLS not offered")
            _expect(client.starttls(context=context), 220, "STARTTLS")
            _expect(client.ehlo(), 250, "EHLO after STARTTLS")
            if "PLAIN" not in client.esmtp_features.get("auth", "").upper().split():
                raise smtplib.SMTPNotSupportedError(
                    f"AUTH PLAIN not offered: {client.esmtp_features.get('auth')!r}"
                )
            _expect(client.docmd("AUTH", "PLAIN " + plain_auth), 235, "AUTH PLAIN")
        _expect(client.mail(SENDER), 250, "MAIL")
        _expect(client.rcpt(RECIPIENT), 250, "RCPT")
        code, resp = client.data(message)
        accepted = code == 250
        _expect((code, resp), 250, "DATA")
        _expect(client.docmd("QUIT"), 221, "QUIT")
    except Exception as e:
        e.accepted = accepted  # type: ignore[attr-defined]
        raise
    finally:
        client.close()
    return accepted


def client_worker(job: ClientJob, counter, go, results) -> None:
    """A worker process: sessions until the shared counter reaches job.sessions or time is up."""
    try:
        context = None
        if job.mode == "tls":
            context = ssl.create_default_context(cadata=job.ca_pem)  # verifies cert and host name
        message = make_message(job.size)
        plain_auth = base64.b64encode(f"\0{USERNAME}\0{PASSWORD}".encode()).decode()
        results.put(("ready", os.getpid()))
        go.wait()
        deadline = time.monotonic() + job.time_limit
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        ok = accepted = 0
        errors: Counter[str] = Counter()
        latencies: list[float] = []
        while time.monotonic() < deadline:
            with counter.get_lock():
                if counter.value >= job.sessions:
                    break
                counter.value += 1
            t0 = time.perf_counter()
            try:
                if one_session(job, context, message, plain_auth):
                    accepted += 1
                ok += 1
                latencies.append(time.perf_counter() - t0)
            except Exception as e:
                accepted += int(getattr(e, "accepted", False))
                errors[f"{type(e).__name__}: {e}"[:200]] += 1
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        results.put(("done", ok, accepted, dict(errors), latencies, cpu))
    except BaseException:
        results.put(("crash", traceback.format_exc()))


def probe_tls(job: ClientJob) -> str:
    """The negotiated protocol and cipher (one extra session without mail, not timed)."""
    context = ssl.create_default_context(cadata=job.ca_pem)
    try:
        client = smtplib.SMTP(HOST, job.port, local_hostname="client.test", timeout=job.timeout)
        try:
            client.ehlo()
            client.starttls(context=context)
            sock = client.sock
            info = f"{sock.version()} {sock.cipher()[0]}"  # type: ignore[union-attr]
            client.ehlo()
            client.docmd("QUIT")
            return info
        finally:
            client.close()
    except Exception as e:
        return f"probe failed: {e}"


@dataclass
class ClientResult:
    elapsed: float
    ok: int
    accepted: int
    errors: Counter
    latencies: list[float]
    cpu: float


def run_client(job: ClientJob, workers: int) -> ClientResult:
    ctx = mp.get_context("fork")
    counter = ctx.Value("l", 0)
    go = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=client_worker, args=(job, counter, go, results), daemon=True)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        ready = 0
        while ready < workers:
            msg = results.get(timeout=30)
            if msg[0] == "crash":
                raise RuntimeError(f"client worker crashed:\n{msg[1]}")
            ready += 1
        t0 = time.perf_counter()
        go.set()
        done = []
        limit = job.time_limit + job.timeout + 30
        while len(done) < workers:
            try:
                msg = results.get(timeout=max(1.0, t0 + limit - time.perf_counter()))
            except queue.Empty:
                raise RuntimeError(f"client workers did not finish within {limit:.0f}s") from None
            if msg[0] == "crash":
                raise RuntimeError(f"client worker crashed:\n{msg[1]}")
            if msg[0] == "done":
                done.append(msg)
                t1 = time.perf_counter()  # the last worker's report ends the run
        for p in procs:
            p.join(timeout=10)
    finally:
        for p in procs:  # only the processes started here, by their own handles
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    for _, _ok, _acc, errs, lats, _cpu in done:
        errors.update(errs)
        latencies += lats
    return ClientResult(
        elapsed=t1 - t0,
        ok=sum(m[1] for m in done),
        accepted=sum(m[2] for m in done),
        errors=errors,
        latencies=latencies,
        cpu=sum(m[5] for m in done),
    )


# --- runs and table ----------------------------------------------------------------------------


@dataclass
class Result:
    target: Target
    mode: str
    rates: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    server_cpu_ms: list[float] = field(default_factory=list)  # per session
    client_cpu_ms: list[float] = field(default_factory=list)  # per session, all workers
    stored: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    tls_info: str | None = None

    @property
    def label(self) -> str:
        return f"{self.target.name} {MODE_LABEL[self.mode]}"


def run_once(res: Result, data_dir: Path, args: argparse.Namespace, tls: TLSFiles) -> None:
    server = Server(res.target, data_dir, args.start_timeout, args.stop_timeout)
    if args.verbose:
        print(f"  [{res.label}] server: {shlex.join(server.argv)}", flush=True)
    try:
        server.start()
    except StartError as e:
        res.skipped = str(e)
        return
    job = ClientJob(
        server.port, res.mode, args.sessions, args.time_limit, args.size, tls.ca_pem, args.timeout
    )
    try:
        cpu0 = cpu_seconds(server.pid)
        try:
            out = run_client(job, args.workers)
        except RuntimeError as e:
            res.problems.append(str(e))
            return
        cpu1 = cpu_seconds(server.pid)
        alive = server.proc is not None and server.proc.poll() is None
        if alive and res.mode == "tls" and res.tls_info is None:
            res.tls_info = probe_tls(job)
    finally:
        server.stop()
    note = server.stop_note()
    if note:
        res.problems.append(f"server {note}")
    if not alive:
        res.problems.append(f"server died during the run; log tail:\n{server.log_tail(8)}")
    stored = count_files(res.target.new_dir(data_dir)) if res.target.new_dir else 0
    res.stored.append(stored)
    failed = sum(out.errors.values())
    if failed:
        top = "; ".join(f"{n}x {text}" for text, n in out.errors.most_common(3))
        res.problems.append(f"{failed} failed session(s): {top}\nserver log tail:\n{server.log_tail(8)}")
    if out.ok + failed < args.sessions:  # bounded by time: the rate still holds, but say so
        res.notes.append(f"only {out.ok + failed} of {args.sessions} sessions within {args.time_limit:.0f}s")
    if stored != out.accepted:
        res.problems.append(f"{stored} files in new/, but {out.accepted} DATA commands got 250")
    if out.ok:
        res.rates.append(out.ok / out.elapsed)
        res.elapsed.append(out.elapsed)
        lat = sorted(out.latencies)
        res.p50_ms.append(1000 * statistics.median(lat))
        res.p99_ms.append(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))])
        res.client_cpu_ms.append(1000 * out.cpu / out.ok)
        if cpu0 is not None and cpu1 is not None:
            res.server_cpu_ms.append(1000 * (cpu1 - cpu0) / out.ok)


def _median(values: list[float], fmt: str) -> str:
    return format(statistics.median(values), fmt) if values else "-"


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(
        f"{args.sessions} sessions per run, {args.size}-octet body, {args.workers} client worker processes"
        f" (smtplib, lock step), {args.repeat} round(s); medians"
    )
    head = (
        f"{'server':<10} {'mode':<9} {'sessions/s':>10} {'min..max':>13} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'srv CPU ms':>10} {'cli CPU ms':>10} {'stored':>7}  status"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        name, mode = r.target.name, MODE_LABEL[r.mode]
        if r.skipped is not None:
            print(
                f"{name:<10} {mode:<9} {'-':>10} {'':>13} {'':>7} {'':>7} {'':>10} {'':>10} {'':>7}  SKIPPED"
            )
            continue
        spread = f"{min(r.rates):,.0f}..{max(r.rates):,.0f}" if r.rates else "-"
        stored = f"{min(r.stored)}" if r.stored else "-"
        status = "FAIL" if r.problems else "ok"
        print(
            f"{name:<10} {mode:<9} {_median(r.rates, ',.0f'):>10} {spread:>13}"
            f" {_median(r.p50_ms, '.1f'):>7} {_median(r.p99_ms, '.1f'):>7}"
            f" {_median(r.server_cpu_ms, '.2f'):>10} {_median(r.client_cpu_ms, '.2f'):>10}"
            f" {stored:>7}  {status}"
        )
    print("(CPU ms are per session: the server process, all threads; the client, all workers together)")

    by = {(r.target.name, r.mode): r for r in results if r.rates}
    print()
    for mode in args.modes:
        peer, aio = by.get(("smtppeer", mode)), by.get(("aiosmtpd", mode))
        if peer and aio:
            ratio = statistics.median(peer.rates) / statistics.median(aio.rates)
            print(f"smtppeer/aiosmtpd, {MODE_LABEL[mode]}: {ratio:.2f}x")
    for name in dict.fromkeys(r.target.name for r in results):
        tls, plain = by.get((name, "tls")), by.get((name, "plain"))
        if tls and plain:
            ratio = statistics.median(plain.rates) / statistics.median(tls.rates)
            print(f"{name} plain/tls+auth: {ratio:.2f}x (TLS+AUTH costs {1 - 1 / ratio:.0%} of the rate)")
    infos = {r.target.name: r.tls_info for r in results if r.tls_info}
    if len(set(infos.values())) == 1:
        print(f"negotiated with {', '.join(infos)}: {next(iter(infos.values()))}")
    else:
        for name, info in infos.items():
            print(f"negotiated with {name}: {info}")
    for r in results:
        if r.skipped is not None:
            print(f"\n{r.label} skipped: {r.skipped}")
        for n in dict.fromkeys(r.notes):
            print(f"\n{r.label} note: {n}")
        for p in dict.fromkeys(r.problems):
            print(f"\n{r.label} problem: {p}")
    print("\nsmtppeer/aiosmtpd > 1 means smtppeer is faster.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", "-n", type=int, default=2000, help="sessions per run (2000)")
    parser.add_argument("--workers", "-w", type=int, default=8, help="client worker processes (8)")
    parser.add_argument("--size", "-l", type=int, default=1024, help="message body octets (1024)")
    parser.add_argument("--time-limit", type=float, default=60, help="stop starting sessions after s (60)")
    parser.add_argument("--timeout", type=float, default=30, help="client socket timeout s (30)")
    parser.add_argument(
        "--only", action="append", metavar="NAME[,NAME]", help="servers to run: smtppeer, aiosmtpd"
    )
    parser.add_argument(
        "--modes", default="tls,plain", help="comma-separated: tls (STARTTLS+AUTH) and/or plain (tls,plain)"
    )
    parser.add_argument(
        "--smtppeer-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument appended to the smtppeer command (repeatable; --smtppeer-arg=--opt=value)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds per (server, mode) (median shown)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent for data dirs (tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--start-timeout", type=float, default=20, help="server start wait s (20)")
    parser.add_argument("--stop-timeout", type=float, default=15, help="SIGTERM->SIGKILL s (15)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each command")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if min(args.sessions, args.workers, args.size, args.repeat) < 1 or args.time_limit <= 0:
        parser.error("--sessions, --workers, --size, --repeat and --time-limit must be positive")
    names = [n.strip() for item in (args.only or ["smtppeer,aiosmtpd"]) for n in item.split(",") if n.strip()]
    if any(n not in ("smtppeer", "aiosmtpd") for n in names):
        parser.error("--only: choose from smtppeer, aiosmtpd")

    workdir = Path(tempfile.mkdtemp(prefix="bench-tls-", dir=args.workdir))
    try:
        tls = make_tls_files(workdir)
        make = {
            "smtppeer": lambda: smtppeer_target(tls, args.smtppeer_arg),
            "aiosmtpd": lambda: aiosmtpd_target(tls),
        }
        targets = [make[n]() for n in dict.fromkeys(names)]
        for line in machine_info(workdir):
            print(line)
        print(
            f"client: {args.workers} worker processes (multiprocessing fork), smtplib, lock step;"
            f" session = connect, EHLO, [STARTTLS, EHLO, AUTH PLAIN,] MAIL, RCPT, DATA ({args.size} octets),"
            " QUIT; certificate: self-signed P-256 for 127.0.0.1, verified by the client"
        )
        for t in targets:
            print(f"target {t.name}: {t.description}")
            print(f"  {shlex.join(t.argv(0, workdir / 'example'))}  (port 0 = chosen per run)")
        shutil.rmtree(workdir / "example", ignore_errors=True)
        sys.stdout.flush()

        results = [Result(t, m) for t in targets for m in args.modes]
        run_rounds(
            results,
            args,
            workdir,
            lambda res, data_dir: run_once(res, data_dir, args, tls),
            lambda res: f"{res.rates[-1]:,.0f} sessions/s ({res.elapsed[-1]:.2f}s)",
            key=lambda res: res.label,
            own_workdir=False,
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"data kept in {workdir}")
    print_table(results, args)
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
