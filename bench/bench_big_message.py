"""Big-message receive: MiB/s and the receiving server's peak RSS for ONE large message.

Why: small-message throughput (``bench_receive.py``) says nothing about how a
server handles a single huge DATA.  A receiver that accumulates the message in
memory (a list of lines, then a join, then a copy with rewritten line ends)
needs several times the message size in RAM and may spend seconds in one
blocking step; one that streams to disk stays flat.  This shows both the
speed and the memory cost per target.

What: the message (default 100 MiB, ``--mib``; ``--quick`` = 10 MiB) is built
once, before any timing: a few headers, then lines of 78 characters + CRLF
(none starts with ``.``, so no dot-stuffing is needed).  For each target
(smtppeer via ``twistd -n``, the two durable baselines, ``smtp-sink``) a fresh
server is started on a free 127.0.0.1 port, and a raw-socket client -- not
smtplib, so the client never copies or re-encodes the body -- does EHLO, MAIL,
RCPT, DATA, and after the ``354`` writes the pre-built bytes in 64 KiB
``sendall`` chunks followed by ``.<CRLF>``.  Measured:

* MiB/s = message size / time from receiving ``354`` to receiving the final
  ``250`` (so it includes the server's durable write);
* "send s": time until the last byte was accepted by the kernel, and
  "250 wait s": the remaining time until the ``250`` -- what the server does
  after it has the whole message (join, copy, write, fsync);
* idle RSS (``VmRSS`` right after start) and peak RSS (``VmHWM`` read from
  ``/proc/PID/status`` just before stopping the server; for ``twistd -n`` the
  subprocess pid is the server, as it runs in the foreground);
* for storing targets, the number and size of files in ``new/`` (must be 1).

If the server advertises an RFC 1870 ``SIZE`` limit the client declares the
size at MAIL, like a real MTA, and a message over the limit is reported as a
failure without being sent (smtppeer's default limit is below 100 MiB; pass
``--mib`` or an option via ``--smtppeer-arg``).

A target that does not start is reported and skipped.  Exit status is 1 if
any run failed.

Examples::

    python bench/bench_big_message.py
    python bench/bench_big_message.py --quick --only aiosmtpd-durable,smtp-sink
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    Server,
    StartError,
    Target,
    add_common_arguments,
    extra_args_for,
    machine_info,
    run_rounds,
    select_targets,
)

MiB = 1024 * 1024
CHUNK = 64 * 1024
LINE = (b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" * 2)[:78] + b"\r\n"


def build_message(mib: float) -> bytes:
    """Headers + body of 80-byte lines, at least *mib* MiB in total (CRLF, no final dot)."""
    header = (
        b"From: <a@x.test>\r\n"
        b"To: <b@localhost>\r\n"
        b"Subject: bench_big_message\r\n"
        b"Message-ID: <big-" + str(os.getpid()).encode() + b"@x.test>\r\n"
        b"\r\n"
    )
    target = int(mib * MiB)
    n_lines = max(1, -(-(target - len(header)) // len(LINE)))
    return header + LINE * n_lines


class SMTPReplyError(RuntimeError):
    pass


class RawSMTPClient:
    """Just enough SMTP client to stream one pre-built message; bounded by socket timeout."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.rfile = self.sock.makefile("rb")

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                raise SMTPReplyError("connection closed while waiting for a reply")
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                break
        try:
            code = int(lines[-1][:3])
        except ValueError:
            raise SMTPReplyError(f"malformed reply {lines[-1][:80]!r}") from None
        return code, b"\n".join(lines)

    def expect(self, code: int, what: str) -> bytes:
        got, text = self.reply()
        if got != code:
            raise SMTPReplyError(f"{what}: expected {code}, got {text[:200]!r}")
        return text

    def command(self, line: bytes, code: int) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.expect(code, line.decode(errors="replace"))


def advertised_size(ehlo_reply: bytes) -> int | None:
    """The RFC 1870 SIZE limit in an EHLO reply (None: not advertised or no limit)."""
    for line in ehlo_reply.split(b"\n"):
        words = line[4:].split()
        if words and words[0].upper() == b"SIZE":
            if len(words) > 1 and words[1].isdigit() and int(words[1]) > 0:
                return int(words[1])
            return None
    return None


@dataclass
class Timing:
    send: float  # 354 -> last byte handed to the kernel
    total: float  # 354 -> final 250


def send_message(port: int, message: bytes, timeout: float) -> Timing:
    client = RawSMTPClient(port, timeout)
    try:
        client.expect(220, "greeting")
        ehlo = client.command(b"EHLO client.bench.test", 250)
        limit = advertised_size(ehlo)
        mail = b"MAIL FROM:<a@x.test>"
        if limit is not None:  # behave like a real client: declare the size (RFC 1870)
            mail += b" SIZE=%d" % len(message)
            if len(message) > limit:
                raise SMTPReplyError(
                    f"server advertises SIZE {limit} ({limit / MiB:.1f} MiB), smaller than"
                    f" the {len(message) / MiB:.1f} MiB message; use a smaller --mib or raise"
                    " the server's limit (e.g. --smtppeer-arg=...)"
                )
        client.command(mail, 250)
        client.command(b"RCPT TO:<b@localhost>", 250)
        client.command(b"DATA", 354)
        view = memoryview(message)
        t0 = time.perf_counter()
        for off in range(0, len(view), CHUNK):
            client.sock.sendall(view[off : off + CHUNK])
        client.sock.sendall(b".\r\n")
        t_sent = time.perf_counter()
        client.expect(250, "end of DATA")
        t_done = time.perf_counter()
        try:
            client.command(b"QUIT", 221)
        except (OSError, SMTPReplyError):
            pass  # the message is accepted; a sloppy QUIT does not matter here
        return Timing(t_sent - t0, t_done - t0)
    finally:
        client.close()


@dataclass
class Result:
    target: Target
    rates: list[float] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)
    idle_kib: list[int] = field(default_factory=list)
    peak_kib: list[int] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None


def run_once(target: Target, data_dir: Path, message: bytes, args: argparse.Namespace, res: Result) -> None:
    server = Server(target, data_dir, args.start_timeout, args.stop_timeout, extra_args_for(target, args))
    if args.verbose:
        print(f"\n  [{target.name}] server: {' '.join(server.argv)}", flush=True)
    try:
        server.start()
    except StartError as e:
        res.skipped = str(e)
        return
    timing = None
    try:
        idle, _ = server.memory_kib()
        try:
            timing = send_message(server.port, message, args.timeout)
        except (OSError, SMTPReplyError) as e:
            res.problems.append(f"{type(e).__name__}: {e}\nserver log tail:\n{server.log_tail(8)}")
        _, peak = server.memory_kib()  # VmHWM just before stopping
    finally:
        server.stop()
    note = server.stop_note()
    if note:
        res.problems.append(f"server {note}")
    if timing is None:
        return
    if idle is not None:
        res.idle_kib.append(idle)
    if peak is not None:
        res.peak_kib.append(peak)
    if target.new_dir is not None:
        new_dir = target.new_dir(data_dir)
        files = [e for e in os.scandir(new_dir) if e.is_file()] if new_dir.is_dir() else []
        if len(files) != 1:
            res.problems.append(f"{len(files)} files in {new_dir}, expected 1")
        else:
            size = files[0].stat().st_size
            res.stored.append(f"{size / MiB:.1f}M")
            if size < len(message) * 0.9:  # LF-only storage is ~1/80 smaller, not 10%
                res.problems.append(f"stored file is {size} bytes, sent {len(message)}")
    res.timings.append(timing)
    res.rates.append(len(message) / MiB / timing.total)


def print_table(results: list[Result], size: int, args: argparse.Namespace) -> None:
    peer = next((r for r in results if r.target.name == "smtppeer" and r.rates), None)
    peer_rate = statistics.median(peer.rates) if peer else None
    print()
    print(
        f"one message of {size / MiB:.1f} MiB ({size} bytes), {args.repeat} round(s);"
        " times are medians, peak RSS the maximum"
    )
    head = (
        f"{'target':<22} {'MiB/s':>8} {'send s':>8} {'250 wait s':>10} {'idle RSS':>9}"
        f" {'peak RSS':>9} {'growth/msg':>10} {'stored':>8} {'smtppeer/this':>14}  status"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if r.skipped is not None:
            print(f"{r.target.name:<22} {'-':>8}{'':>72}  SKIPPED")
            continue
        status = "FAIL" if r.problems else "ok"
        if not r.rates:
            print(f"{r.target.name:<22} {'-':>8}{'':>72}  {status}")
            continue
        rate = statistics.median(r.rates)
        send = statistics.median(t.send for t in r.timings)
        wait = statistics.median(t.total - t.send for t in r.timings)
        idle = f"{max(r.idle_kib) / 1024:.0f}M" if r.idle_kib else "?"
        peak = f"{max(r.peak_kib) / 1024:.0f}M" if r.peak_kib else "?"
        growth = [p - i for p, i in zip(r.peak_kib, r.idle_kib, strict=False)]
        per_msg = f"{max(growth) * 1024 / size:.2f}x" if growth else "?"
        stored = r.stored[-1] if r.stored else ("no disk" if r.target.new_dir is None else "-")
        ratio = f"{peer_rate / rate:.2f}x" if peer_rate is not None else "n/a"
        print(
            f"{r.target.name:<22} {rate:>8.1f} {send:>8.2f} {wait:>10.2f} {idle:>9}"
            f" {peak:>9} {per_msg:>10} {stored:>8} {ratio:>14}  {status}"
        )
    for r in results:
        if r.skipped is not None:
            print(f"\n{r.target.name} skipped: {r.skipped}")
        for p in dict.fromkeys(r.problems):
            print(f"\n{r.target.name} problem: {p}")
    print(
        "\nRSS in MiB; growth/msg = (peak RSS - idle RSS) / message size. smtppeer/this > 1 means smtppeer"
        " is faster." + (" (n/a: smtppeer produced no result.)" if peer_rate is None else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mib", type=float, default=None, help="message size in MiB (100)")
    parser.add_argument("--quick", action="store_true", help="10 MiB unless --mib given")
    add_common_arguments(parser)
    parser.add_argument("--timeout", type=float, default=600, help="socket timeout s (600)")
    args = parser.parse_args(argv)
    if args.mib is None:
        args.mib = 10.0 if args.quick else 100.0
    if args.mib <= 0 or args.repeat < 1:
        parser.error("--mib must be > 0 and --repeat >= 1")

    targets = select_targets(args.only)
    workdir = Path(tempfile.mkdtemp(prefix="bench-big-", dir=args.workdir))
    for line in machine_info(workdir):
        print(line)
    for t in targets:
        print(f"target {t.name}: {t.description}")
    t0 = time.perf_counter()
    message = build_message(args.mib)
    print(
        f"message: {len(message)} bytes, {len(LINE)}-byte lines, built in"
        f" {time.perf_counter() - t0:.2f}s (not timed); client sends {CHUNK // 1024} KiB chunks"
    )
    sys.stdout.flush()

    results = [Result(t) for t in targets]

    def progress(res) -> str:
        peak = f"{res.peak_kib[-1] / 1024:.0f} MiB" if res.peak_kib else "?"
        return f"{res.rates[-1]:.1f} MiB/s, peak RSS {peak}"

    run_rounds(results, args, workdir, lambda res, d: run_once(res.target, d, message, args, res), progress)
    print_table(results, len(message), args)
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
