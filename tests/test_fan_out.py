"""One message, two stores: local recipients' Maildirs and the spool for the rest.

A message is accepted for all of its recipients or for none: when one store
fails, the copy the other one made is taken back before the ``451``, so the
client's retry does not deliver it twice.  The failures here are real file
system errors in a real ``twistd`` process, not mocks.  Also: the disk process
that commits Maildir deliveries never outlives the service.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess

import pytest

from tests.conftest import free_port, wait_until

MESSAGE = b"Subject: fan out\r\n\r\nfor a local and a relayed recipient\r\n"
RECIPIENTS = ["u@a.test", "v@b.test"]


def disk_processes(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if "-m smtppeer.store.commits" in line]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def peer(twistd_peer):
    # b.test is relayed to a port nobody listens on: what is spooled stays spooled
    return twistd_peer("--domain", "a.test", "--route", f"b.test=tcp:host=127.0.0.1:port={free_port()}")


def send(peer) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", peer.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("c@client.test")
        for rcpt in RECIPIENTS:
            assert client.rcpt(rcpt)[0] == 250
        return client.data(MESSAGE)


def queued(peer) -> list[str]:
    return sorted(os.listdir(peer.data_dir / "spool" / "queue"))


def attempted(peer) -> list[str]:
    """The spool's queue once the runner has recorded its first attempt at each entry (it
    fails: nobody listens); it leaves them alone after that, for the retry interval."""
    queue = peer.data_dir / "spool" / "queue"

    def recorded() -> list[str] | None:
        names = queued(peer)
        envelopes = [n for n in names if n.endswith(".json")]
        if not envelopes or any(n.endswith(".tmp") for n in names):  # none yet, or one being written
            return None
        for name in envelopes:
            if any(r["attempts"] < 1 for r in json.loads((queue / name).read_text())["recipients"]):
                return None
        return names

    return wait_until(recorded, timeout=20, what="the first attempt recorded", detail=lambda: queued(peer))


def test_both_stores_take_it(peer):
    code, _ = send(peer)
    assert code == 250
    assert len(os.listdir(peer.maildir("a.test", "u") / "new")) == 1
    assert len([n for n in queued(peer) if n.endswith(".json")]) == 1


def test_when_the_spool_fails_the_maildir_copy_is_taken_back(peer):
    assert send(peer)[0] == 250  # makes the Maildir and one spool entry
    before = attempted(peer)
    shutil.rmtree(peer.data_dir / "spool" / "incoming")  # the spool's commit cannot write the body
    code, text = send(peer)
    assert code == 451, text
    assert len(os.listdir(peer.maildir("a.test", "u") / "new")) == 1  # only the first message
    assert queued(peer) == before


def test_when_the_maildir_fails_the_spool_entry_is_taken_back(peer):
    assert send(peer)[0] == 250
    before = attempted(peer)
    disk = disk_processes(peer.proc.pid)
    tmp = peer.maildir("a.test", "u") / "tmp"
    tmp.rmdir()
    tmp.write_bytes(b"not a directory")  # the Maildir commit cannot write into tmp/
    code, text = send(peer)
    assert code == 451, text
    assert len(os.listdir(peer.maildir("a.test", "u") / "new")) == 1
    wait_until(
        lambda: queued(peer) == before,
        timeout=10,
        what="the spool entry taken back",
        detail=lambda: queued(peer),
    )
    assert disk_processes(peer.proc.pid) == disk  # a failed commit is an answer, not a crash


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_the_disk_process_ends_with_the_service(peer, sig):
    assert send(peer)[0] == 250
    [disk] = disk_processes(peer.proc.pid)
    peer.stop(sig)
    try:
        wait_until(lambda: not alive(disk), timeout=10, what="the disk process to end with the service")
    except AssertionError:
        os.kill(disk, signal.SIGKILL)
        raise
