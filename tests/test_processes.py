"""A listener served by several processes (``--processes N``): real twistd
processes with workers, fed by Postfix's smtp-source and smtplib."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
from pathlib import Path

from .conftest import free_port, require_tool, wait_until
from .trustlab import RawSession, insecure_context, make_cert


def workers_of(pid: int) -> set[int]:
    """The worker processes the service started (its ``smtppeer.service.workers`` children)."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True)
    return {int(line.split()[0]) for line in out.stdout.splitlines() if "smtppeer.service.workers" in line}


def queue_id_pids(maildir: Path) -> set[str]:
    """The process part of the queue IDs in the messages' Received: headers (ids.py)."""
    pids = set()
    for path in (maildir / "new").iterdir():
        header = path.read_bytes().split(b"\r\n\r\n", 1)[0]
        queue_id = header.split(b" id ", 1)[1][:20]
        pids.add(queue_id[13:16].decode())
    return pids


def test_two_processes_share_a_listener_and_lose_nothing(twistd_peer):
    smtp_source = require_tool("smtp-source")
    peer = twistd_peer("--processes", "2")
    wait_until(lambda: len(workers_of(peer.proc.pid)) == 1, what="the worker process")
    wait_until(lambda: "accepting on" in peer.log(), what="the worker to accept")
    done = subprocess.run(
        [
            smtp_source,
            "-s",
            "20",
            "-d",
            "-l",
            "1024",
            "-m",
            "2000",
            "-f",
            "a@x.test",
            "-t",
            "u@localhost",
            f"127.0.0.1:{peer.port}",
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    box = peer.maildir("localhost", "u")
    assert len(list((box / "new").iterdir())) == 2000
    assert len(queue_id_pids(box)) == 2  # both processes took sessions (SO_REUSEPORT spreads them)
    service_pid = peer.proc.pid
    worker_pids = workers_of(service_pid)
    assert peer.stop() in (0, -signal.SIGTERM)
    for pid in worker_pids:  # the workers ended with the service
        wait_until(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), what=f"worker {pid} to end")


def test_mail_a_worker_spools_is_relayed_by_the_service(twistd_peer):
    far = twistd_peer("--domain", "far.test", hostname="far.test")
    near = twistd_peer("--processes", "3", "--route", f"far.test=tcp:host=127.0.0.1:port={far.port}")
    wait_until(lambda: len(workers_of(near.proc.pid)) == 2, what="the workers")
    wait_until(lambda: near.log().count("accepting on") == 2, what="the workers to accept")
    for n in range(30):  # one connection each: they land on every process
        with smtplib.SMTP("127.0.0.1", near.port, timeout=30) as s:
            s.sendmail("a@x.test", [f"user{n}@far.test"], f"Subject: {n}\r\n\r\nrelay {n}\r\n".encode())
    delivered = far.data_dir / "mail" / "far.test"
    wait_until(  # (a mailbox appears before its new/)
        lambda: len(list(delivered.glob("*/new/*"))) == 30, what="every relayed message at the next hop"
    )
    wait_until(lambda: not list((near.data_dir / "spool" / "queue").iterdir()), what="the spool to empty")
    assert "worker " in near.log() and "announced" not in near.log()  # no entry went missing


def test_a_worker_that_dies_is_started_again(twistd_peer):
    peer = twistd_peer("--processes", "2")
    [first] = wait_until(lambda: workers_of(peer.proc.pid), what="the worker")
    os.kill(first, signal.SIGKILL)
    [second] = wait_until(lambda: workers_of(peer.proc.pid) - {first}, what="a new worker")
    assert second != first
    wait_until(lambda: "worker 1 ended; starting it again" in peer.log(), what="the restart in the log")
    for n in range(10):
        with smtplib.SMTP("127.0.0.1", peer.port, timeout=30) as s:
            s.sendmail("a@x.test", ["u@localhost"], f"Subject: {n}\r\n\r\nafter\r\n".encode())
    assert len(list((peer.maildir("localhost", "u") / "new").iterdir())) == 10


def test_sigterm_closes_sessions_in_every_process(twistd_peer):
    peer = twistd_peer("--processes", "2")
    wait_until(lambda: "accepting on" in peer.log(), what="the worker to accept")
    sessions = []
    for _ in range(6):  # some in each process
        s = RawSession(peer.port)
        assert s.reply()[0] == 220
        assert s.command("EHLO c.test")[0] == 250
        assert s.command("MAIL FROM:<a@x.test>")[0] == 250
        sessions.append(s)
    peer.proc.send_signal(signal.SIGTERM)
    for s in sessions:
        code, text = s.reply()
        assert (code, text[0][:5]) == (421, "4.3.2")
        s.close()
    assert peer.stop() in (0, -signal.SIGTERM)


def test_a_multi_process_listener_never_turns(twistd_config, tmp_path):
    """TURN and ETRN need the queue runner's hold queues: refused in every process alike."""
    cert, key = make_cert(tmp_path, "multi.test")
    port = free_port()
    peer = twistd_config(
        f"""
hostname = "multi.test"
data_dir = "{{data_dir}}"
[tls]
certificate = "{cert}"
key = "{key}"
[[listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"
processes = 2
[holds]
"cust.test" = "cust"
[peers.cust]
domains = ["cust.test"]
username = "cust"
password = "s3cret"
""",
        port,
    )
    wait_until(lambda: "accepting on" in peer.log(), what="the worker to accept")
    for _ in range(8):
        s = RawSession(port)
        assert s.reply()[0] == 220
        code, lines = s.command("EHLO c.test")
        assert code == 250 and "ETRN" not in lines
        s.starttls()
        assert s.command("EHLO c.test")[0] == 250
        assert s.auth_plain("cust", "s3cret") == 235
        code, text = s.command("TURN")
        assert (code, text[0]) == (502, "5.5.1 TURN is not available on this port")
        assert s.command("ETRN cust.test")[0] == 500
        assert s.command("QUIT")[0] == 221
        s.close()
    assert insecure_context  # the sessions above were secured; nothing else to check
