"""Crash safety: SIGKILL the receiving twistd process while clients stream mail into it.

Process B is a plain peer for ``b.test``; process A takes ``a.test`` into its
Maildirs and spools ``b.test`` to relay it to B.  Several client threads send
messages to A (local, relayed, and both) while A is killed with SIGKILL at
random moments and restarted on the same data directory and port.  Each
client records, per message, what it saw:

``acked``     the final ``250`` after DATA: the message must be delivered to
              every recipient (A's Maildir, or B's after relaying);
``unknown``   the connection broke after the body was sent but before the
              reply: delivered complete, or not at all;
``refused``   a non-250 final reply after DATA: never delivered;
``unsent``    failed before the body was sent: never delivered.

Every file in a Maildir must be one complete, byte-identical message behind
the trace headers the peers prepend.  Duplicates (a relay attempt cut off
after B's ``250`` but before A recorded it; or an ``unknown`` message the
client gave up on) are allowed and counted.

Set ``SMTPPEER_CRASH_SEED`` to rerun with a run's kill delays and message contents (the
interleaving with the clients still depends on timing).
"""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import wait_until

pytestmark = pytest.mark.slow

CLIENTS = 6
KILLS = 5
SENDER = "c@client.test"
LOCAL, RELAYED = "u@a.test", "v@b.test"
KINDS = [[LOCAL], [RELAYED], [LOCAL], [RELAYED], [LOCAL, RELAYED]]
BIG_EVERY = 10  # every so often a message over 256 KiB (streamed to disk, committed on a worker)
CHUNK = 32 * 1024
_TEXT = b"abcdefghijklmnopqrstuvwxyz .0123456789"
ALPHABET = bytes(_TEXT[i % len(_TEXT)] for i in range(256))  # random octets -> text (dots at line starts too)

ACKED, UNKNOWN, REFUSED, UNSENT = "acked", "unknown", "refused", "unsent"
SUBJECT = re.compile(rb"^Subject: crash (\S+)\r$", re.M)
TRACE = re.compile(rb"^(Return-Path:|Received:|[ \t])")


@dataclass
class Sent:
    token: str
    rcpts: list[str]
    data: bytes
    outcome: str = UNSENT
    detail: str = ""


class SMTP(smtplib.SMTP):
    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        # While A is down, a connect() to its port may get that very port as its own ephemeral
        # port: a TCP self-connect, which would wait for a greeting and keep A from binding again.
        if sock.getsockname() == sock.getpeername():
            sock.close()
            raise ConnectionRefusedError("TCP self-connect")
        return sock


@dataclass
class Client:
    number: int
    port: int
    stop: threading.Event
    rng: random.Random
    records: list[Sent] = field(default_factory=list)
    sessions: int = 0
    connect_failures: int = 0
    error: BaseException | None = None

    def message(self, seq: int) -> Sent:
        token = f"c{self.number}m{seq}-{self.rng.getrandbits(32):08x}"
        rcpts = KINDS[(seq + self.number) % len(KINDS)]
        lines = [
            f"From: <{SENDER}>",
            "To: " + ", ".join(f"<{r}>" for r in rcpts),
            f"Subject: crash {token}",
            f"Message-ID: <{token}@client.test>",
            "",
            f"token {token}",
            ".a line that needs dot-stuffing",
            ".",
            "..",
        ]
        target = 600 * 1024 if seq % BIG_EVERY == BIG_EVERY - 1 else self.rng.randint(50, 4000)
        text = self.rng.randbytes(target).translate(ALPHABET)  # cheap: no Python loop per octet
        pos = 0
        while pos < len(text):
            width = self.rng.randint(0, 998)
            lines.append(text[pos : pos + width].decode())
            pos += width
        lines.append(f"end {token}")
        return Sent(token, rcpts, ("\r\n".join(lines) + "\r\n").encode())

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            try:
                s = SMTP("127.0.0.1", self.port, local_hostname=f"client{self.number}.test", timeout=10)
            except (OSError, smtplib.SMTPException):
                self.connect_failures += 1
                time.sleep(0.05)
                continue
            self.sessions += 1
            try:
                s.ehlo()
                for _ in range(self.rng.randint(1, 8)):
                    if self.stop.is_set():
                        break
                    sent = self.message(seq)
                    seq += 1
                    self.records.append(sent)
                    send(s, sent, self.rng)
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                s.close()


def send(s: smtplib.SMTP, sent: Sent, rng: random.Random) -> None:
    """One transaction, keeping track of whether the body went out; raises on a broken connection."""
    code, text = s.mail(SENDER)
    if code != 250:
        sent.detail = f"MAIL {code} {text!r}"
        s.rset()
        return
    for rcpt in sent.rcpts:
        code, text = s.rcpt(rcpt)
        if code != 250:
            sent.detail = f"RCPT {code} {text!r}"
            s.rset()
            return
    code, text = s.docmd("DATA")
    if code != 354:
        sent.detail = f"DATA {code} {text!r}"
        s.rset()
        return
    sent.outcome = UNKNOWN  # from the first byte of the body on, the server may have it all
    # In pieces with pauses, so that kills land in the middle of DATA too (a half-received body).
    wire = re.sub(rb"(?m)^\.", b"..", sent.data) + b".\r\n"
    cut = rng.randrange(1, len(wire))
    s.send(wire[:cut])
    for start in range(cut, len(wire), CHUNK):
        time.sleep(rng.uniform(0, 0.02))
        s.send(wire[start : start + CHUNK])
    code, text = s.getreply()
    sent.outcome = ACKED if code == 250 else REFUSED
    sent.detail = f"{code} {text!r}"


def maildir_files(maildir: Path) -> list[Path]:
    return [
        p for sub in ("new", "cur") if (maildir / sub).is_dir() for p in sorted((maildir / sub).iterdir())
    ]


def children(parent: int, module: str) -> list[int]:
    """Child processes of ``parent`` running ``python -m module``."""
    ps = ["ps", "-o", "pid=,args=", "--ppid", str(parent)]
    out = subprocess.run(ps, capture_output=True, text=True, check=False)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if f"-m {module}" in line]


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "with-a-worker"])
def test_sigkill_at_random_points_loses_nothing_acknowledged(twistd_peer, processes):
    """Each kill hits, at random, a disk process (``committer.py``: its unanswered
    commits must be settled truthfully), a worker (if there is one), or the
    whole service."""
    seed = int(os.environ.get("SMTPPEER_CRASH_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\ncrash-safety seed {seed} (SMTPPEER_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    started = time.monotonic()

    b = twistd_peer("--domain", "b.test", hostname="b.test")
    a = twistd_peer(
        "--domain",
        "a.test",
        "--route",
        f"b.test=tcp:host=127.0.0.1:port={b.port}",
        "--retry-interval",
        "1",
        "--processes",
        str(processes),
        hostname="a.test",
    )
    stop = threading.Event()
    clients = [Client(n, a.port, stop, random.Random(rng.getrandbits(64))) for n in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, name=f"client{c.number}", daemon=True) for c in clients]
    kills = worker_kills = disk_kills = 0
    try:
        for t in threads:
            t.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.7, 2.5))
            workers = children(a.proc.pid, "smtppeer.service.workers")
            disks = [pid for p in [a.proc.pid, *workers] for pid in children(p, "smtppeer.store.commits")]
            choice = rng.random()
            if disks and choice < 0.3:
                os.kill(rng.choice(disks), signal.SIGKILL)  # its committer starts it again
                disk_kills += 1
            elif workers and choice < 0.7:
                os.kill(rng.choice(workers), signal.SIGKILL)  # the service starts it again
                worker_kills += 1
            else:
                a.stop(signal.SIGKILL)
                time.sleep(rng.uniform(0.05, 0.6))
                a.start()
            kills += 1
        time.sleep(1.5)  # traffic into the last incarnation too
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a client thread did not stop"
    for c in clients:
        assert c.error is None, f"client {c.number} crashed: {c.error!r}"

    # A relays what it still has; B's 250 means B has it on disk.
    queue = a.data_dir / "spool" / "queue"
    try:
        wait_until(
            lambda: not any(queue.iterdir()),
            timeout=30,
            what="A's spool to drain",
            detail=lambda: f"{sorted(p.name for p in queue.iterdir())}\n{a.log()[-3000:]}",
        )
    finally:
        a.stop()
        b.stop()
    assert not list((a.data_dir / "spool" / "incoming").iterdir()), "leftover in A's spool/incoming"
    assert not list(queue.iterdir()), "leftover in A's spool/queue"

    records = {s.token: s for c in clients for s in c.records}
    boxes = {LOCAL: a.maildir("a.test", "u"), RELAYED: b.maildir("b.test", "v")}
    delivered: Counter[tuple[str, str]] = Counter()
    corrupt: list[str] = []
    for rcpt, maildir in boxes.items():
        for path in maildir_files(maildir):
            raw = path.read_bytes()
            found = SUBJECT.search(raw)
            sent = records.get(found.group(1).decode()) if found else None
            if sent is None:
                corrupt.append(f"{path}: no known token ({len(raw)} octets)")
                continue
            head = raw[: len(raw) - len(sent.data)]
            if not raw.endswith(sent.data) or not head.startswith(f"Return-Path: <{SENDER}>\r\n".encode()):
                corrupt.append(f"{path}: {sent.token} is not the message sent ({len(raw)} octets)")
                continue
            if not all(TRACE.match(line) for line in head.split(b"\r\n")[:-1]) or not head.endswith(b"\r\n"):
                corrupt.append(f"{path}: {sent.token} has something besides trace headers in front")
                continue
            if rcpt not in sent.rcpts:
                corrupt.append(f"{path}: {sent.token} was not addressed to {rcpt}")
                continue
            delivered[sent.token, rcpt] += 1
    leftover_tmp = sum(len(list((m / "tmp").iterdir())) for m in boxes.values() if (m / "tmp").is_dir())

    outcomes = Counter(s.outcome for s in records.values())
    lost = [
        (s.token, r)
        for s in records.values()
        if s.outcome == ACKED
        for r in s.rcpts
        if not delivered[s.token, r]
    ]
    wrongly = [
        (s.token, s.outcome, s.detail)
        for s in records.values()
        if s.outcome in (REFUSED, UNSENT) and any(delivered[s.token, r] for r in s.rcpts)
    ]
    unknown = [s for s in records.values() if s.outcome == UNKNOWN]
    unknown_delivered = sum(1 for s in unknown if any(delivered[s.token, r] for r in s.rcpts))
    unknown_partly = sum(
        1 for s in unknown if 0 < sum(1 for r in s.rcpts if delivered[s.token, r]) < len(s.rcpts)
    )
    duplicates = sum(n - 1 for n in delivered.values() if n > 1)
    relayed = sum(n for (_, r), n in delivered.items() if r == RELAYED)

    sessions = sum(c.sessions for c in clients)
    print(
        f"crash-safety: {kills} kills ({worker_kills} of a worker, {disk_kills} of a disk process), "
        f"{len(records)} messages in {sessions} sessions "
        f"({sum(c.connect_failures for c in clients)} refused connections); "
        f"acknowledged {outcomes[ACKED]}, unknown {outcomes[UNKNOWN]} "
        f"(delivered {unknown_delivered}, of which to some recipients only {unknown_partly}; "
        f"not delivered {len(unknown) - unknown_delivered}), refused {outcomes[REFUSED]}, "
        f"not sent {outcomes[UNSENT]}; Maildir files {sum(delivered.values())} "
        f"({relayed} relayed via B), duplicates {duplicates}, corrupt {len(corrupt)}, "
        f"lost {len(lost)}, delivered without 250 after refusal {len(wrongly)}, "
        f"leftover Maildir tmp/ files {leftover_tmp}; {time.monotonic() - started:.1f}s"
    )
    assert kills == KILLS
    assert not corrupt, "partial or corrupt messages in a Maildir:\n" + "\n".join(corrupt[:20])
    assert not lost, f"acknowledged but not delivered: {lost[:20]}"
    assert not wrongly, f"delivered although refused or never sent: {wrongly[:20]}"
    assert outcomes[ACKED] >= 100, "too little traffic to say anything"
