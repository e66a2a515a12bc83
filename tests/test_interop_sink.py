"""smtppeer's sender role against Postfix's ``smtp-sink``.

``smtp-sink`` runs as a subprocess on a loopback port (always killed).  Its
options make it misbehave on purpose (``-f`` 5xx, ``-r`` 4xx, ``-q`` hang up,
``-Q`` 421, ``-e`` no ESMTP, ``-8`` no 8BITMIME) and ``-d`` dumps every
message it received so the bytes on the wire can be checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from smtppeer.engine.sender import Envelope
from smtppeer.peer.hooks import ReceiverHooks, SenderJob

from .conftest import end_process, free_port, require_tool, wait_for_port
from .peerutil import connect_sender

pytestmark = pytest.mark.interop

SESSION_TIMEOUT = 60


class Sink:
    def __init__(self, port: int, proc: subprocess.Popen, dump_dir: Path | None) -> None:
        self.port = port
        self.proc = proc
        self.dump_dir = dump_dir

    def dumps(self) -> list[bytes]:
        assert self.dump_dir is not None
        return [p.read_bytes() for p in sorted(self.dump_dir.iterdir())]


@pytest.fixture
def smtp_sink():
    """Start ``smtp-sink -u nobody [options] 127.0.0.1:PORT 256``; always killed."""
    binary = require_tool("smtp-sink")
    started: list[tuple[subprocess.Popen, Path | None]] = []

    def start(*options: str, dump: bool = False) -> Sink:
        dump_dir = None
        args = [binary, "-u", "nobody", *options]
        if dump:
            # Written after the switch to "nobody": a world-writable directory of its own.
            dump_dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
            os.chmod(dump_dir, 0o777)
            args += ["-d", str(dump_dir / "msg.")]
        port = free_port()
        proc = subprocess.Popen(
            [*args, f"127.0.0.1:{port}", "256"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        started.append((proc, dump_dir))
        try:
            wait_for_port(port, proc, timeout=10)
        except Exception:
            out = proc.stdout.read() if proc.poll() is not None else b""
            raise RuntimeError(f"smtp-sink did not start: {out!r}") from None
        return Sink(port, proc, dump_dir)

    yield start
    for proc, dump_dir in started:
        end_process(proc, timeout=10)
        proc.stdout.close()
        if dump_dir is not None:
            shutil.rmtree(dump_dir, ignore_errors=True)


@pytest_twisted.inlineCallbacks
def send(port: int, envelopes: list[Envelope]):
    """One sender session with these envelopes; returns (summary, job)."""
    job = SenderJob(list(envelopes))
    peer = yield connect_sender("sender.test", ReceiverHooks(), job, port)
    summary = yield peer.done.addTimeout(SESSION_TIMEOUT, reactor)
    return summary, job


def body(n: int) -> bytes:
    return (
        f"From: <a@a.test>\r\nTo: <u@b.test>\r\nSubject: message {n}\r\n\r\n.dotted\r\nline {n}\r\n".encode()
    )


def codes(job: SenderJob) -> list[int]:
    return [r.code for result in job.results for r in result.results.values()]


# -- the happy path -----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_200_messages_over_one_connection(smtp_sink):
    sink = smtp_sink()
    envelopes = [Envelope("a@a.test", [f"u{n}@b.test"], body(n), tag=n) for n in range(200)]
    summary, job = yield send(sink.port, envelopes)
    assert summary.clean and summary.error is None, summary
    assert [r.envelope.tag for r in job.results] == list(range(200))
    assert codes(job) == [250] * 200
    assert all(r.delivered == r.envelope.recipients for r in job.results)
    assert len(summary.sent) == 200


def dump_parts(dump: bytes) -> tuple[dict[str, list[str]], bytes]:
    """smtp-sink's X- records, and the message as received (LF line ends, unstuffed)."""
    head, sep, message = dump.partition(b"\nReceived: ")
    assert sep, dump[:300]
    records: dict[str, list[str]] = {}
    for line in head.split(b"\n"):
        key, _, value = line.decode().partition(": ")
        records.setdefault(key, []).append(value)
    # The three-line Received: header that smtp-sink adds, then the message.
    message = message.split(b"\n", 3)[3]
    return records, message


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def big_body() -> bytes:
    """A body whose dot lines start exactly around the sender's 64 KiB read chunks.

    At the k-th chunk boundary a line holding only "." (then "..", ".x")
    starts at offset ``65536 * k + shift`` for shift -2..2, so the CRLF before
    it, or the dot itself, falls on either side of a chunk edge.
    """
    out = bytearray(b"Subject: big\r\n\r\n")
    for k, shift in enumerate((-2, -1, 0, 1, 2), start=1):
        target = 65536 * k + shift
        while target - len(out) > 1000:
            out += b"z" * 498 + b"\r\n"
        out += b"z" * (target - len(out) - 2) + b"\r\n"
        assert len(out) == target
        out += b".\r\n..\r\n.x\r\n"
    return bytes(out + b"end\r\n")


@pytest_twisted.inlineCallbacks
def test_bytes_on_the_wire_dot_stuffing_and_8bit(smtp_sink):
    sink = smtp_sink(dump=True)
    big_line = b"y" * 998 + b"\r\n"
    bodies = {
        "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.a\r\nend\r\n",
        "first-line-dot": b".first line is a dot line\r\n\r\nbody\r\n",
        "8bit": b"Subject: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe \xe2\x82\xac \x80\xff\r\n",
        "long-lines": b"Subject: long\r\n\r\n" + big_line * 3,
        "big": big_body(),
    }
    envelopes = [
        Envelope(f"{tag}@a.test", ["r1@b.test", "r2@b.test"], data, params={"BODY": "8BITMIME"}, tag=tag)
        for tag, data in bodies.items()
    ]
    summary, job = yield send(sink.port, envelopes)
    assert summary.clean, summary
    assert codes(job) == [250] * (2 * len(bodies))

    seen = {}
    for dump in sink.dumps():
        records, message = dump_parts(dump)
        tag = records["X-Mail-Args"][0].split("@")[0].lstrip("<")
        seen[tag] = (records, message)
    assert sorted(seen) == sorted(bodies)
    for tag, data in bodies.items():
        records, message = seen[tag]
        assert records["X-Client-Proto"] == ["ESMTP"]
        assert records["X-Helo-Args"] == ["sender.test"]
        assert records["X-Mail-Args"] == [f"<{tag}@a.test> BODY=8BITMIME"]
        assert records["X-Rcpt-Args"] == ["<r1@b.test>", "<r2@b.test>"]
        # smtp-sink writes LF line ends and one empty line after the message.
        assert message == lf(data) + b"\n", tag


# -- a misbehaving server --------------------------------------------------------------------------

# (smtp-sink options, expected reply class for every recipient, session ends with QUIT?)
MISBEHAVIOUR = [
    (("-f", "MAIL"), 5, True),
    (("-r", "MAIL"), 4, True),
    (("-f", "RCPT"), 5, True),
    (("-r", "RCPT"), 4, True),
    (("-f", "DATA"), 5, True),
    (("-r", "DATA"), 4, True),
    (("-f", "."), 5, True),
    (("-r", "."), 4, True),
    (("-q", "DATA"), 4, False),  # hangs up without a reply: everything deferred
    (("-q", "RCPT"), 4, False),
    (("-Q", "MAIL"), 4, False),  # 421 and close
]


@pytest.mark.parametrize(
    ("options", "klass", "clean"), MISBEHAVIOUR, ids=[" ".join(m[0]) for m in MISBEHAVIOUR]
)
@pytest_twisted.inlineCallbacks
def test_refusals_give_per_recipient_results(smtp_sink, options, klass, clean):
    sink = smtp_sink(*options)
    envelopes = [Envelope("a@a.test", [f"u{n}@b.test", f"v{n}@b.test"], body(n), tag=n) for n in range(3)]
    summary, job = yield send(sink.port, envelopes)
    assert [r.envelope.tag for r in job.results] == [0, 1, 2], "every message gets a result"
    for result in job.results:
        assert list(result.results) == result.envelope.recipients
        assert result.delivered == []
        for rcpt, rep in result.results.items():
            assert rep.code // 100 == klass, (options, rcpt, rep)
            assert rep.enhanced is None or rep.enhanced[0] == str(klass), rep
    assert summary.clean is clean, summary
    if options[0] == "-Q":
        assert {rep.code for r in job.results for rep in r.results.values()} == {421}


@pytest_twisted.inlineCallbacks
def test_no_esmtp_falls_back_to_helo(smtp_sink):
    sink = smtp_sink("-e", dump=True)
    envelopes = [
        Envelope("a@a.test", ["u@b.test"], body(n), params={"BODY": "8BITMIME"}, tag=n) for n in range(3)
    ]
    summary, job = yield send(sink.port, envelopes)
    assert summary.clean, summary
    assert codes(job) == [250] * 3
    dumps = [dump_parts(d) for d in sink.dumps()]
    assert len(dumps) == 3
    for records, _ in dumps:
        assert records["X-Client-Proto"] == ["SMTP"]
        assert records["X-Helo-Args"] == ["sender.test"]
        assert records["X-Mail-Args"] == ["<a@a.test>"], "no ESMTP parameters after HELO"
    assert sorted(m for _, m in dumps) == sorted(lf(body(n)) + b"\n" for n in range(3))


@pytest_twisted.inlineCallbacks
def test_no_8bitmime_drops_body_parameter(smtp_sink):
    sink = smtp_sink("-8", dump=True)
    envelope = Envelope("a@a.test", ["u@b.test"], body(0), params={"BODY": "8BITMIME"})
    summary, job = yield send(sink.port, [envelope])
    assert summary.clean and codes(job) == [250]
    [(records, _)] = [dump_parts(d) for d in sink.dumps()]
    assert records["X-Client-Proto"] == ["ESMTP"]
    assert records["X-Mail-Args"] == ["<a@a.test>"]


@pytest_twisted.inlineCallbacks
def test_no_pipelining_lockstep(smtp_sink):
    sink = smtp_sink("-p")
    envelopes = [Envelope("a@a.test", [f"u{n}@b.test", f"v{n}@b.test"], body(n)) for n in range(20)]
    summary, job = yield send(sink.port, envelopes)
    assert summary.clean, summary
    assert codes(job) == [250] * 40
