"""The group committer: batches, failures kept per commit, clean stop."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from smtppeer.committer import Committer


class FileCommit:
    """Writes ``data`` to ``tmp/name``, then renames it to ``new/name``."""

    def __init__(self, root, name: str, data: bytes, fail_in: str | None = None) -> None:
        self.root, self.name, self.data, self.fail_in = root, name, data, fail_in

    def write_and_sync(self) -> None:
        if self.fail_in == "write":
            raise OSError("disk full")
        with open(self.root / "tmp" / self.name, "wb") as f:
            f.write(self.data)
            os.fdatasync(f.fileno())

    def publish(self):
        if self.fail_in == "publish":
            raise OSError("rename failed")
        os.rename(self.root / "tmp" / self.name, self.root / "new" / self.name)
        return [str(self.root / "new")] + ([str(self.root / "missing")] if self.fail_in == "dir" else [])


@pytest.fixture
def root(tmp_path):
    for sub in ("tmp", "new"):
        (tmp_path / sub).mkdir()
    return tmp_path


@pytest.fixture(params=[False, True], ids=["inline", "worker"])
def large(request):
    """Both paths: batched on the reactor thread, and on the worker thread."""
    return request.param


@pytest_twisted.inlineCallbacks
def test_many_commits_are_batched_and_all_land(root, large):
    committer = Committer()
    committer.startService()
    try:
        ds = [committer.submit(FileCommit(root, f"m{i}", b"x" * i), large=large) for i in range(200)]
        yield defer.gatherResults(ds)
    finally:
        yield committer.stopService()
    assert sorted(os.listdir(root / "new")) == sorted(f"m{i}" for i in range(200))
    assert os.listdir(root / "tmp") == []
    assert committer.commits == 200
    assert committer.batches < 200  # at least some commits shared a batch


@pytest_twisted.inlineCallbacks
def test_a_failing_commit_fails_alone(root, large):
    committer = Committer()
    committer.startService()
    try:
        results = yield defer.DeferredList(
            [
                committer.submit(FileCommit(root, "ok1", b"1"), large=large),
                committer.submit(FileCommit(root, "bad-write", b"2", fail_in="write"), large=large),
                committer.submit(FileCommit(root, "bad-publish", b"3", fail_in="publish"), large=large),
                committer.submit(FileCommit(root, "bad-dir", b"4", fail_in="dir"), large=large),
                committer.submit(FileCommit(root, "ok2", b"5"), large=large),
            ],
            consumeErrors=True,
        )
    finally:
        yield committer.stopService()
    assert [ok for ok, _ in results] == [True, False, False, False, True]
    assert "disk full" in str(results[1][1].value)
    assert sorted(os.listdir(root / "new")) == ["bad-dir", "ok1", "ok2"]  # bad-dir's fsync failed


@pytest_twisted.inlineCallbacks
def test_stop_finishes_what_was_queued(root, large):
    committer = Committer()
    committer.startService()
    ds = [committer.submit(FileCommit(root, f"m{i}", b"x"), large=large) for i in range(50)]
    yield committer.stopService()
    yield defer.gatherResults(ds)
    assert len(os.listdir(root / "new")) == 50
