"""The lab at scale: how long ten hosts take to start, and how fast mail crosses three hops.

    python bench/bench_lab.py [--messages 1000] [--sessions 10] [--per-destination N]

A ten-host lab in this process (the same code as ``twistd smtppeer lab``):
a dial-up site ``alpha`` sends everything through its provider ``edge``,
which routes ``far.test`` to the relay ``core``, which delivers it to the
local host ``far``: three hops, each through a link (a proxy).  Six more
hosts (dial-up sites and local hosts) make the ten and idle.  Postfix's
``smtp-source`` submits the messages to ``alpha``; the clock runs until the
last one is in ``far``'s Maildir, durably at every hop.

For a ratio in the same run (the machine is shared and noisy), the same
number of messages is then sent straight to ``far``: one hop, no links.
Prints the start time, both rates and their ratio.  ``--per-destination N``
sets ``outgoing_connections_per_destination`` on the three sending hosts
(default: smtppeer's own, 4).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

TOPOLOGY = """
[hosts.edge]
domains = ["edge.test"]
routes = { "far.test" = "host:core" }

[hosts.core]
domains = ["core.test"]

[hosts.far]
role = "local"
domains = ["far.test"]

[hosts.alpha]
role = "dialup"
domains = ["alpha.test"]
provider = "edge"
poll = { method = "turn", every = "1h" }

{extra}
"""

IDLE = ["beta", "gamma", "delta"]
LOCALS = ["west", "east", "north"]


SENDERS = ["edge", "core", "alpha"]


def topology_text(per_destination: int | None = None) -> str:
    text = TOPOLOGY
    if per_destination is not None:
        limits = f"config = {{ limits = {{ outgoing_connections_per_destination = {per_destination} }} }}\n"
        for name in SENDERS:
            text = text.replace(f"[hosts.{name}]\n", f"[hosts.{name}]\n{limits}")
    extra = []
    for name in IDLE:
        extra.append(
            f'[hosts.{name}]\nrole = "dialup"\ndomains = ["{name}.test"]\nprovider = "edge"\n'
            'poll = { method = "etrn", every = "1h" }\n'
        )
    for name in LOCALS:
        extra.append(f'[hosts.{name}]\nrole = "local"\ndomains = ["{name}.test"]\n')
    return text.replace("{extra}", "\n".join(extra))


def smtp_source(port: int, messages: int, sessions: int, recipient: str) -> list[str]:
    return [
        shutil.which("smtp-source") or "/usr/sbin/smtp-source",
        "-s", str(sessions), "-m", str(messages), "-l", "1024", "-d",
        "-f", "bench@alpha.test", "-t", recipient, f"127.0.0.1:{port}",
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--per-destination", type=int, default=None)
    args = parser.parse_args()
    if not (shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()):
        print("smtp-source is needed (apt-get install postfix)", file=sys.stderr)
        return 2

    from twisted.internet import defer, reactor, task, threads

    from smtppeer.lab.lab import Lab
    from smtppeer.lab.topology import loads_topology

    work = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    results: dict[str, float] = {}

    async def run() -> None:
        topology = loads_topology(topology_text(args.per_destination), "bench-lab")
        topology.http = None
        lab = Lab(topology, data_dir=str(work / "lab"))
        started = time.perf_counter()
        await lab.start()
        results["hosts"] = len(lab.hosts)
        results["start"] = time.perf_counter() - started
        try:
            alpha, far = lab.hosts["alpha"], lab.hosts["far"]
            began = time.perf_counter()
            command = smtp_source(alpha.smtp[1], args.messages, args.sessions, "u@far.test")
            await threads.deferToThread(subprocess.run, command, check=True, timeout=args.timeout)
            await lab.wait_for_messages("far", args.messages, timeout=args.timeout)
            results["three_hops"] = args.messages / (time.perf_counter() - began)
            far.delete_messages()
            began = time.perf_counter()
            command = smtp_source(far.smtp[1], args.messages, args.sessions, "v@far.test")
            await threads.deferToThread(subprocess.run, command, check=True, timeout=args.timeout)
            await lab.wait_for_messages("far", args.messages, timeout=args.timeout)
            results["one_hop"] = args.messages / (time.perf_counter() - began)
        finally:
            await lab.stop()

    def done(result):
        reactor.stop()
        return result

    d = defer.ensureDeferred(run())
    d.addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr), results.setdefault("error", 1.0)))
    d.addBoth(done)
    task.deferLater(reactor, 0, lambda: None)
    reactor.run()
    shutil.rmtree(work, ignore_errors=True)
    if "error" in results:
        return 1
    print(f"lab of {results['hosts']:.0f} hosts started in {results['start']:.2f}s")
    print(
        f"{args.messages} messages of 1 KiB, {args.sessions} sessions: "
        f"3 hops {results['three_hops']:.0f} msg/s, 1 hop {results['one_hop']:.0f} msg/s, "
        f"ratio {results['three_hops'] / results['one_hop']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
