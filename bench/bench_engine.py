"""CPU cost of the protocol code alone, without sockets or disk.

Why: the end-to-end benchmarks are dominated by the reactor's I/O and the
file system, and are noisy on shared machines.  This isolates what smtppeer's
own code costs per message, so a change to the engine or the adapter can be
judged on its own.  Two layers are measured on the lock-step workload of
``smtp-source`` (MAIL, RCPT, DATA, a 1 KiB body, one command per read):

* ``engine``: the sans-IO ``Receiver`` (bytes in, events out, replies out);
* ``adapter``: the whole ``SMTPPeer`` with ``ReceivingPolicy`` over a
  ``StringTransport`` and a store that discards messages.

Run: ``python bench/bench_engine.py [--messages N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from smtppeer.engine import Receiver, reply  # noqa: E402
from smtppeer.engine import events as ev  # noqa: E402
from smtppeer.peer.hooks import MessageSink  # noqa: E402
from smtppeer.peer.protocol import SMTPPeerFactory  # noqa: E402
from smtppeer.policy.receiving import ReceivingPolicy  # noqa: E402
from smtppeer.policy.routing import Router  # noqa: E402

BODY = (b"x" * 76 + b"\r\n") * 13 + b".\r\n"
COMMANDS = [b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@localhost>\r\n", b"DATA\r\n", BODY]


def engine(n: int) -> float:
    r = Receiver("bench.test")
    r.start()

    def drain() -> None:
        while True:
            e = r.next_event()
            if e is ev.NEED_DATA:
                return
            if isinstance(e, (ev.MailFrom, ev.RcptTo, ev.DataEnd)):
                r.answer(reply(250, "2.0.0", "OK"))

    r.receive_data(b"HELO x\r\n")
    drain()
    start = time.perf_counter()
    for _ in range(n):
        for c in COMMANDS:
            r.receive_data(c)
            drain()
            r.data_to_send()
    return time.perf_counter() - start


class _NullSink(MessageSink):
    def write(self, data: bytes) -> None:
        pass

    def finish(self):
        return defer.succeed(reply(250, "2.0.0", "Ok: queued as X"))


class _NullStore:
    def path_for(self, domain: str, local: str) -> str:
        return f"/nowhere/{domain}/{local}"

    def new_message(self, maildirs, header, queue_id) -> MessageSink:
        return _NullSink()


def adapter(n: int) -> float:
    hooks = ReceivingPolicy("bench.test", Router("bench.test", ["localhost"]), _NullStore())
    factory = SMTPPeerFactory("bench.test", hooks, clock=task.Clock())
    peer = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    peer.makeConnection(transport)
    peer.dataReceived(b"HELO x\r\n")
    start = time.perf_counter()
    for _ in range(n):
        for c in COMMANDS:
            peer.dataReceived(c)
        transport.clear()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    from twisted.logger import globalLogBeginner  # noqa: PLC0415

    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    print(f"python {sys.version.split()[0]}; {args.messages} lock-step 1 KiB messages per layer")
    for name, fn in (("engine", engine), ("adapter", adapter)):
        elapsed = fn(args.messages)
        print(
            f"{name:8s} {args.messages / elapsed:10,.0f} msg/s  {elapsed / args.messages * 1e6:7.1f} us/msg"
        )


if __name__ == "__main__":
    main()
