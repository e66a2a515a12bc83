"""A full disk (issue 13, item 4), for real: the data directory on a small tmpfs.

A real ``twistd smtppeer`` keeps its data directory on a 2 MiB tmpfs mounted
for the test (as root; skipped where ``mount`` is not allowed).  The disk is
filled; mail sent with smtplib must be refused with ``452 4.3.1 Insufficient
system storage`` (never a ``250``, never ``451 Local error`` or ``421
Internal error``), with one log line per message and no traceback; once the
space is freed the same mail gets its ``250``.  With ``--queue-minfree`` the
refusal comes at MAIL already.

The sending side on the same small disk: a delivery's result or a bounce
the full disk refuses is kept in memory, said once, and written when the
space returns; nothing is sent twice and no failure goes unreported.
"""

from __future__ import annotations

import errno
import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from smtppeer.store.bodybuffer import BodyBuffer
from smtppeer.store.committer import Committer
from smtppeer.store.spool import DELIVERED, PENDING, Spool

from .conftest import REPO, TwistdProcess, free_port
from .peerutil import Listener
from .test_runner import Harness, PickyHooks

SMALL = b"Subject: small\r\n\r\nhello\r\n"
LARGE = b"Subject: large\r\n\r\n" + (b"x" * 76 + b"\r\n") * 8000  # 624 KB: streamed to its file


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards (whatever the test left in it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield disk
    if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no room left, down to the last octet."""
    with open(path, "wb", buffering=0) as f:
        size = 1 << 16
        while size:
            try:
                f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                size //= 2


def send(port: int, message: bytes, to: str = "u@peer.test") -> tuple[int, bytes, str]:
    """(code, text, where): the reply that decided the message, and at which command."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        try:
            s.sendmail("a@x.test", [to], message)
        except smtplib.SMTPSenderRefused as e:
            return e.smtp_code, e.smtp_error, "MAIL"
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error, "DATA"
        return 250, b"", "DATA"


def start(disk: Path, *extra: str) -> TwistdProcess:
    # The data directory is the mount itself: the log goes beside it, on the real disk.
    return TwistdProcess(
        disk, "--domain", "peer.test", "--route", "far.test=tcp:host=127.0.0.1:port=9", *extra
    ).start()


def test_mail_is_refused_with_452_while_the_disk_is_full_and_accepted_after(small_disk):
    peer = start(small_disk)
    try:
        fill(small_disk / "filler")
        cases = [
            (SMALL, "u@peer.test"),  # a Maildir delivery, committed by the disk process
            (SMALL, "new@peer.test"),  # a Maildir made for it first
            (LARGE, "u@peer.test"),  # streamed to its file while it arrives
            (SMALL, "x@far.test"),  # the spool, committed on the reactor
            (LARGE, "x@far.test"),
        ]
        for message, to in cases:
            assert send(peer.port, message, to) == (452, b"4.3.1 Insufficient system storage", "DATA"), to
        log = peer.log()
        assert "Traceback" not in log and "critical" not in log, log
        assert log.count("not stored ([Errno 28] No space left on device") == len(cases), log
        (small_disk / "filler").unlink()
        for message, to in cases:
            assert send(peer.port, message, to) == (250, b"", "DATA"), to
        assert len(list((small_disk / "mail" / "peer.test" / "u" / "new").iterdir())) == 2
    finally:
        peer.stop()
    assert "Traceback" not in peer.log()


def test_queue_minfree_refuses_mail_at_mail_and_notices_space_coming_back(small_disk):
    peer = start(small_disk, "--queue-minfree", "256K")
    try:
        # (Filled before the first MAIL: a look that found room is trusted for a second.)
        fill(small_disk / "filler")
        for _ in range(3):
            assert send(peer.port, SMALL) == (452, b"4.3.1 Insufficient system storage", "MAIL")
        (small_disk / "filler").unlink()
        assert send(peer.port, SMALL) == (250, b"", "DATA")  # at once: a low disk is looked at every MAIL
        with smtplib.SMTP("127.0.0.1", peer.port, timeout=30) as s:  # RFC 1870: more than there is room for
            s.ehlo("c.test")
            assert s.mail("a@x.test", ["SIZE=1900000"])[0] == 452
        log = peer.log()
        assert log.count("below queue_minfree") == 1 and log.count("again: MAIL is accepted") == 1, log
        assert "Traceback" not in log
    finally:
        peer.stop()


def test_smtppeer_send_says_the_message_was_not_queued(small_disk):
    peer = start(small_disk)
    try:
        fill(small_disk / "filler")
        done = subprocess.run(
            [sys.executable, "-m", "smtppeer", "send", "-d", str(small_disk), "-f", "a@x.test", "x@far.test"],
            input=SMALL,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=60,
        )
        assert done.returncode == 1
        assert b"message not queued: 452 4.3.1 Insufficient system storage" in done.stderr, done.stderr
    finally:
        peer.stop()
    assert "Traceback" not in peer.log()


def test_a_body_cut_short_by_a_filling_disk_is_an_error_not_a_shorter_message(small_disk):
    """A raw file's write takes what fits and says nothing; only the next write fails.
    A body whose last write was such a short one would be committed cut short."""
    fill(small_disk / "filler")
    os.truncate(small_disk / "filler", os.path.getsize(small_disk / "filler") - 100_000)
    body = BodyBuffer(str(small_disk / "message"), limit=1000)
    with pytest.raises(OSError) as raised:
        body.write(b"y" * 150_000)  # one write: more than the room left
    assert raised.value.errno == errno.ENOSPC
    body.discard()


def test_the_json_log_on_the_full_disk_drops_lines_with_one_line_of_its_own(small_disk, tmp_path):
    """``json_log = true`` writes into the data directory: on a full disk its lines are
    dropped (each would otherwise be a traceback in the text log), the text log says
    so once, and the file keeps only whole lines."""
    port = free_port()
    config = tmp_path / "json.toml"
    config.write_text(
        f'hostname = "peer.test"\ndata_dir = "{small_disk}"\njson_log = true\n'
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\n[domains."peer.test"]\n'
    )
    peer = TwistdProcess(small_disk, config=config, port=port).start()
    try:
        fill(small_disk / "filler")
        for _ in range(40):  # more log than the last page of the JSON file holds
            assert send(peer.port, SMALL)[0] == 452
        (small_disk / "filler").unlink()
        assert send(peer.port, SMALL)[0] == 250
        log = peer.log()
        assert "Traceback" not in log and "critical" not in log, log
        assert log.count("JSON log: cannot write (No space left on device); dropping lines") == 1, log
        assert log.count("JSON log: writing again;") == 1, log
        lines = (small_disk / "smtppeer.log.jsonl").read_text().splitlines()
        assert all(json.loads(line)["text"] for line in lines)  # whole lines only
        assert any("accepted from" in json.loads(line)["text"] for line in lines)
    finally:
        peer.stop()


# -- the sending side: results the disk will not take ------------------------------


@pytest_twisted.async_yield_fixture
async def relay_on_small_disk(small_disk):
    """A queue runner (not started) whose spool is on the small disk, sending to a
    real SMTPPeer on loopback that refuses ``bad*`` with 550 and ``later*`` with
    450; its clock is a ``task.Clock``.  Yields (harness, the next hop's hooks,
    the log events)."""
    hooks = PickyHooks()
    listener = Listener("next.test", hooks)
    port = await listener.start()
    committer = Committer()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    harness = Harness(Spool(str(small_disk / "spool"), committer), port, jitter=0.0)
    try:
        yield harness, hooks, events
    finally:
        harness.runner.stopService()
        await harness.runner.idle()
        globalLogPublisher.removeObserver(events.append)
        await (committer.stopService() or defer.succeed(None))
        for peer in listener.peers:
            await peer.done
        await listener.stop()


def log_lines(events: list[dict]) -> list[str]:
    """The text of the log events of the relay, and any traceback as one line of its own."""
    return [
        "TRACEBACK " + e["log_failure"].getErrorMessage() if "log_failure" in e else formatEvent(e)
        for e in events
        if e.get("log_namespace", "").startswith("smtppeer.relay")
    ]


@pytest_twisted.inlineCallbacks
def test_a_delivery_state_the_full_disk_refuses_is_kept_and_written_when_room_returns(relay_on_small_disk):
    """One recipient delivered and one deferred while the disk is full: the state
    cannot be written, so it is kept in memory (the delivered one is not sent again),
    one line says so, and the next sweep after the space returns writes it."""
    harness, hooks, events = relay_on_small_disk
    spool = harness.spool
    yield harness.queue("D1", "ok@next.test", "later@next.test")
    fill(Path(spool.root).parent / "filler")
    harness.runner.startService()
    yield harness.run()
    assert [s.recipients for s in hooks.stored] == [["ok@next.test"]]
    on_disk = {r.address: r.state for r in spool.load("D1").recipients}
    assert on_disk == {"ok@next.test": PENDING, "later@next.test": PENDING}  # not written
    lines = log_lines(events)
    assert not [line for line in lines if line.startswith("TRACEBACK")], lines
    assert sum("D1: cannot write its delivery state (no room" in line for line in lines) == 1, lines
    yield harness.run(advance=harness.runner.settings.interval)  # still full: tried again, quietly
    assert sum("cannot write" in line for line in log_lines(events)) == 1
    (Path(spool.root).parent / "filler").unlink()
    yield harness.run(advance=harness.runner.settings.interval)
    on_disk = {r.address: r.state for r in spool.load("D1").recipients}
    assert on_disk == {"ok@next.test": DELIVERED, "later@next.test": PENDING}
    assert harness.runner.results.unsaved == {}
    assert any("D1: its state is written now" in line for line in log_lines(events))
    assert len(hooks.stored) == 1  # the delivered recipient was never sent again


@pytest_twisted.inlineCallbacks
def test_a_bounce_the_full_disk_refuses_is_made_when_room_returns(relay_on_small_disk):
    """A 550 while the disk is full: no bounce can be queued; the failure is not
    forgotten (as it would be until a restart) but bounced once there is room."""
    harness, hooks, events = relay_on_small_disk
    spool = harness.spool
    yield harness.queue("B1", "bad@next.test", sender="sender@next.test")
    fill(Path(spool.root).parent / "filler")
    harness.runner.startService()
    yield harness.run()
    assert hooks.stored == [] and spool.ids() == ["B1"]
    lines = log_lines(events)
    assert not [line for line in lines if line.startswith("TRACEBACK")], lines
    assert sum("B1: cannot write" in line for line in lines) == 1, lines
    (Path(spool.root).parent / "filler").unlink()
    yield harness.run(advance=harness.runner.settings.interval)
    yield harness.run()  # the bounce, queued now, goes out
    [bounced] = hooks.stored
    assert bounced.reverse_path == "<>" and bounced.recipients == ["sender@next.test"]
    assert b"bad@next.test" in bounced.body and b"550" in bounced.body
    assert spool.ids() == [] and harness.runner.entries == {}


@pytest_twisted.inlineCallbacks
def test_queue_hold_on_the_full_disk_fails_and_changes_nothing(relay_on_small_disk):
    """``smtppeer queue hold`` cannot be written: the command fails (the CLI says
    why) and the message is not held in memory only, to be sent after all."""
    harness, hooks, _ = relay_on_small_disk
    yield harness.queue("H1", "later@next.test")
    harness.runner.startService()
    yield harness.run()  # deferred by the next hop's 450
    fill(Path(harness.spool.root).parent / "filler")
    with pytest.raises(OSError) as raised:
        yield defer.ensureDeferred(harness.runner.set_frozen("H1", True))
    assert raised.value.errno == errno.ENOSPC
    assert harness.runner.entries["H1"].frozen is False
    assert harness.spool.load("H1").frozen is False
    (Path(harness.spool.root).parent / "filler").unlink()
    yield defer.ensureDeferred(harness.runner.set_frozen("H1", True))  # held, on disk
    fill(Path(harness.spool.root).parent / "filler")
    for frozen in (True, False):  # held again, or released: neither written, and it stays held
        with pytest.raises(OSError):
            yield defer.ensureDeferred(harness.runner.set_frozen("H1", frozen))
        assert harness.runner.entries["H1"].frozen is True and harness.spool.load("H1").frozen is True
