"""Receive throughput: many small messages over persistent sessions, messages/s per server.

Why: the receiving side of smtppeer spends its time per message (SMTP
dialogue, header, durable store), not per byte.  Postfix's ``smtp-source`` is
a C load generator, so the client is not the bottleneck, and it aborts on the
first non-2xx reply, so a server that rejects or loses messages cannot look
fast.  The same load is run, in one invocation, against:

``smtppeer``
    the product, ``twistd -n smtppeer`` (delivers ``b@localhost`` into
    ``DATA_DIR/mail/localhost/b/new/``);
``twisted.mail-durable`` / ``aiosmtpd-durable``
    minimal receivers (``baseline_*.py``) that fsync every message into a
    Maildir before replying 250 -- what "a correct receiver in Python" costs;
``smtp-sink``
    Postfix's discard server: the C ceiling of this machine/loopback/client
    with no disk at all.

What: for each target, a fresh data directory, a server on a free 127.0.0.1
port (bounded wait for its 220 greeting), then, timed::

    smtp-source -s SESSIONS -d -l SIZE -m MESSAGES -f a@x.test -t b@localhost 127.0.0.1:PORT

then the server is stopped (SIGTERM, SIGKILL after a timeout) and, for targets
that store mail, the files in ``new/`` are counted and must equal MESSAGES.
The table shows messages/s (median over ``--repeat`` rounds; rounds run
targets round-robin so machine noise is spread over all of them) and
smtppeer's rate divided by each target's rate.  A target that does not start
is reported and skipped (not an error).  Exit status is 1 if any run failed
or stored a wrong number of messages.

Note the client and server share the machine (see nproc in the header):
numbers are comparable with each other, not with a dedicated-host MTA.

Examples::

    python bench/bench_receive.py
    python bench/bench_receive.py --quick --only aiosmtpd-durable,smtp-sink
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
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
    count_files,
    extra_args_for,
    machine_info,
    run_rounds,
    select_targets,
    smtp_source_argv,
)


@dataclass
class Result:
    target: Target
    rates: list[float] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    delivered: list[int | None] = field(default_factory=list)


def source_argv(args: argparse.Namespace, port: int) -> list[str]:
    return smtp_source_argv(args, port, "a@x.test", "b@localhost")


def run_once(target: Target, data_dir: Path, args: argparse.Namespace, res: Result) -> None:
    server = Server(target, data_dir, args.start_timeout, args.stop_timeout, extra_args_for(target, args))
    if args.verbose:
        print(f"  [{target.name}] server: {shlex.join(server.argv)}", flush=True)
    try:
        server.start()
    except StartError as e:
        res.skipped = str(e)
        return
    try:
        argv = source_argv(args, server.port)
        if args.verbose:
            print(f"  [{target.name}] client: {shlex.join(argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=args.timeout,
            )
        except subprocess.TimeoutExpired:
            res.problems.append(f"smtp-source did not finish within {args.timeout:.0f}s")
            return
        elapsed = time.perf_counter() - t0
    finally:
        server.stop()
    note = server.stop_note()
    if note:
        res.problems.append(f"server {note}")
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-500:]
        res.problems.append(
            f"smtp-source exit status {proc.returncode}: {out}\nserver log tail:\n{server.log_tail(8)}"
        )
        return
    delivered = None
    if target.new_dir is not None:
        delivered = count_files(target.new_dir(data_dir))
        if delivered != args.messages:
            res.problems.append(f"{delivered} files in new/, expected {args.messages}")
    res.delivered.append(delivered)
    res.elapsed.append(elapsed)
    res.rates.append(args.messages / elapsed)


def fmt_rate(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f}" if rates else "-"


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    peer = next((r for r in results if r.target.name == "smtppeer" and r.rates), None)
    peer_rate = statistics.median(peer.rates) if peer else None
    print()
    print(
        f"{args.messages} messages, {args.size}-byte payload, {args.sessions} parallel sessions,"
        f" {args.repeat} round(s); msg/s is the median"
    )
    head = (
        f"{'target':<22} {'msg/s':>9} {'min..max msg/s':>17} {'elapsed s':>10}"
        f" {'stored':>8} {'smtppeer/this':>14}  status"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if r.skipped is not None:
            print(f"{r.target.name:<22} {'-':>9} {'':>17} {'':>10} {'':>8} {'':>14}  SKIPPED")
            continue
        if r.rates:
            spread = f"{min(r.rates):,.0f}..{max(r.rates):,.0f}"
            elapsed = f"{statistics.median(r.elapsed):.2f}"
            ok = [d for d in r.delivered if d is not None]
            stored = f"{min(ok)}" if ok else "no disk"
            ratio = f"{peer_rate / statistics.median(r.rates):.2f}x" if peer_rate is not None else "n/a"
        else:
            spread = elapsed = stored = ratio = "-"
        status = "FAIL" if r.problems else "ok"
        print(
            f"{r.target.name:<22} {fmt_rate(r.rates):>9} {spread:>17} {elapsed:>10}"
            f" {stored:>8} {ratio:>14}  {status}"
        )
    for r in results:
        if r.skipped is not None:
            print(f"\n{r.target.name} skipped: {r.skipped}")
        for p in dict.fromkeys(r.problems):
            print(f"\n{r.target.name} problem: {p}")
    if peer_rate is None:
        print("\nsmtppeer/this: n/a because smtppeer did not produce a result.")
    else:
        print("\nsmtppeer/this > 1 means smtppeer is faster than that target.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", "-s", type=int, default=20, help="smtp-source -s (20)")
    parser.add_argument("--messages", "-m", type=int, default=None, help="smtp-source -m (20000)")
    parser.add_argument("--size", "-l", type=int, default=1024, help="smtp-source -l bytes (1024)")
    parser.add_argument("--quick", action="store_true", help="use -m 2000 unless --messages given")
    add_common_arguments(parser)
    parser.add_argument("--timeout", type=float, default=900, help="smtp-source timeout s (900)")
    args = parser.parse_args(argv)
    if args.messages is None:
        args.messages = 2000 if args.quick else 20000
    if min(args.sessions, args.messages, args.size, args.repeat) < 1:
        parser.error("--sessions, --messages, --size and --repeat must be >= 1")
    if shutil.which("smtp-source") is None:
        parser.error("smtp-source (Postfix) not found on PATH")

    targets = select_targets(args.only)
    workdir = Path(tempfile.mkdtemp(prefix="bench-receive-", dir=args.workdir))
    for line in machine_info(workdir):
        print(line)
    print(f"client: {shlex.join(source_argv(args, 0)[:-1])} 127.0.0.1:<PORT>")
    for t in targets:
        print(f"target {t.name}: {t.description}")
        argv0 = t.argv(0, workdir / "DATA") + extra_args_for(t, args)
        print(f"  {shlex.join(argv0)}  (port 0 = chosen per run)")
    sys.stdout.flush()

    results = [Result(t) for t in targets]
    run_rounds(
        results,
        args,
        workdir,
        lambda res, data_dir: run_once(res.target, data_dir, args, res),
        lambda res: f"{res.rates[-1]:,.0f} msg/s ({res.elapsed[-1]:.2f}s)",
    )
    print_table(results, args)
    failed = any(r.problems for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
