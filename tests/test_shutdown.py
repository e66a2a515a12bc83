"""SIGTERM: sessions get 421, nothing unacknowledged is kept as accepted, queued mail stays."""

from __future__ import annotations

import json
import signal
import smtplib
import socket

from .conftest import wait_until


def test_sigterm_answers_421_to_a_session_mid_transaction_and_keeps_the_queue(twistd_peer):
    peer = twistd_peer("--route", "far.test=tcp:host=127.0.0.1:port=9", "--retry-interval", "3600")
    with smtplib.SMTP("127.0.0.1", peer.port) as s:  # one message queued for a next hop that is down
        s.sendmail("x@src.test", ["u@far.test"], b"Subject: queued\r\n\r\nx\r\n")
    queue = peer.data_dir / "spool" / "queue"

    def first_attempt_recorded() -> bool:  # then nothing changes in the queue for an hour
        envelopes = list(queue.glob("*.json"))
        return bool(envelopes) and json.loads(envelopes[0].read_text())["recipients"][0]["attempts"] == 1

    wait_until(first_attempt_recorded, what="the first attempt's result in the envelope")
    queued = sorted(p.name for p in queue.iterdir())
    assert len(queued) == 2
    with socket.create_connection(("127.0.0.1", peer.port), timeout=10) as c:
        f = c.makefile("rb")
        f.readline()
        c.sendall(b"EHLO client.test\r\nMAIL FROM:<x@src.test>\r\nRCPT TO:<u@localhost>\r\n")
        c.sendall(b"DATA\r\nSubject: half\r\n")
        lines = [f.readline()]
        while lines[-1][:4] != b"354 " and len(lines) < 30 and lines[-1]:
            lines.append(f.readline())
        assert lines[-1].startswith(b"354 "), lines
        peer.proc.send_signal(signal.SIGTERM)
        rest = f.read()
    assert rest.startswith(b"421 4.3.2 "), rest
    assert peer.stop() in (0, -signal.SIGTERM)
    assert sorted(p.name for p in queue.iterdir()) == queued  # the queued message is still there
    new = peer.maildir("localhost", "u") / "new"
    assert not new.exists() or not list(new.iterdir())  # the half message was never accepted
