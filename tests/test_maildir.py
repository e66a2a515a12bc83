"""Durable Maildir writing: layout, links for several recipients, abort, unsafe names."""

from __future__ import annotations

import mailbox
import os
import shutil
import time

import pytest
import pytest_twisted

from smtppeer.store import maildir
from smtppeer.store.committer import Committer
from smtppeer.store.maildir import MaildirStore, mailbox_dirname


@pytest.fixture
def store(tmp_path):
    committer = Committer()
    committer.startService()
    yield MaildirStore(str(tmp_path), committer)
    stopped = committer.stopService()
    if stopped is not None:
        pytest_twisted.blockon(stopped)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("Alice", "alice"),
        ("a.b+tag", "a.b+tag"),
        ("../etc", "%2E./etc".replace("/", "%2F")),
        ("a/b", "a%2Fb"),
        (".hidden", "%2Ehidden"),
        ("sp ace", "sp%20ace"),
        ("jörg", "j%C3%B6rg"),
    ],
)
def test_mailbox_dirname_is_safe(local, expected):
    name = mailbox_dirname(local)
    assert name == expected
    assert "/" not in name and not name.startswith(".")


@pytest_twisted.inlineCallbacks
def test_one_copy_per_recipient_readable_by_mailbox_module(tmp_path, store):
    boxes = [store.path_for("example.test", u) for u in ("alice", "bob", "alice")]
    msg = store.new_message(boxes, b"Received: x\r\n", "QID1")
    msg.write(b"Subject: hi\r\n\r\nbody\r\n")
    result = yield msg.finish()
    assert result.code == 250 and "QID1" in result.text
    for user in ("alice", "bob"):
        box = mailbox.Maildir(str(tmp_path / "example.test" / user), create=False)
        messages = list(box)
        assert len(messages) == 1  # alice listed twice still gets one copy
        assert messages[0]["Subject"] == "hi"
        assert os.listdir(tmp_path / "example.test" / user / "tmp") == []
    assert (tmp_path / "example.test" / "alice" / "new").stat().st_mode & 0o777 == 0o700


@pytest_twisted.inlineCallbacks
def test_large_message_is_streamed_to_disk_before_the_end(tmp_path, store, monkeypatch):
    monkeypatch.setattr(maildir, "MEMORY_LIMIT", 1000)
    msg = store.new_message([store.path_for("d.test", "u")], b"H: 1\r\n", "Q")
    chunk = b"x" * 998 + b"\r\n"
    msg.write(chunk)
    msg.write(chunk)
    assert os.path.getsize(msg.tmp_path) == 6 + 2000  # already on disk, not in memory
    yield msg.finish()
    [name] = os.listdir(tmp_path / "d.test" / "u" / "new")
    assert (tmp_path / "d.test" / "u" / "new" / name).read_bytes() == b"H: 1\r\n" + chunk * 2


def test_abort_leaves_nothing_behind(tmp_path, store, monkeypatch):
    monkeypatch.setattr(maildir, "MEMORY_LIMIT", 10)
    msg = store.new_message([store.path_for("d.test", "u")], b"H: 1\r\n", "Q")
    msg.write(b"a" * 100)
    assert os.path.exists(msg.tmp_path)
    msg.abort()
    for sub in ("tmp", "new", "cur"):
        assert os.listdir(tmp_path / "d.test" / "u" / sub) == []


@pytest_twisted.inlineCallbacks
def test_a_maildir_removed_while_running_is_made_again(tmp_path, store):
    box = store.path_for("d.test", "u")
    yield store.new_message([box], b"H: 1\r\n", "Q1").finish()
    shutil.rmtree(tmp_path / "d.test")
    result = yield store.new_message([box], b"H: 2\r\n", "Q2").finish()
    assert result.code == 250
    assert len(os.listdir(tmp_path / "d.test" / "u" / "new")) == 1


@pytest_twisted.inlineCallbacks
def test_a_second_recipients_maildir_removed_while_running_is_made_again(tmp_path, store):
    boxes = [store.path_for("d.test", "u"), store.path_for("d.test", "v")]
    yield store.new_message(boxes, b"H: 1\r\n", "Q1").finish()
    shutil.rmtree(tmp_path / "d.test" / "v")
    result = yield store.new_message(boxes, b"H: 2\r\n", "Q2").finish()
    assert result.code == 250
    assert len(os.listdir(tmp_path / "d.test" / "v" / "new")) == 1
    assert len(os.listdir(tmp_path / "d.test" / "u" / "new")) == 2


def test_stale_tmp_files_are_swept_and_fresh_ones_kept(tmp_path, store):
    tmp = tmp_path / "d.test" / "u" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "old").write_bytes(b"partial, from a crash two days ago")
    (tmp / "fresh").write_bytes(b"another agent is writing this")
    two_days_ago = time.time() - 48 * 3600
    os.utime(tmp / "old", (two_days_ago, two_days_ago))
    assert store.sweep_tmp() == 1
    assert os.listdir(tmp) == ["fresh"]
