"""The group committer: batches, failures kept per commit, the disk process, clean stop."""

from __future__ import annotations

import errno
import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, task

from smtppeer.store.commits import Commit, run_batch, settle
from smtppeer.store.committer import RESPAWN_INTERVAL, CommitError, Committer

from .conftest import wait_until_async


def body(path, data: bytes, streamed: bool) -> dict:
    """A commit's file: written by the commit, or (``streamed``, as a large body is)
    written here first so that the commit only syncs it; then it runs on the worker."""
    if not streamed:
        return {"writes": ((str(path), data),)}
    if path.parent.is_dir():
        path.write_bytes(data)
    return {"syncs": (str(path),)}


def file_commit(root, name: str, data: bytes, target: str | None = None, streamed: bool = False) -> Commit:
    """Write ``tmp/name``, then rename it to ``new/name`` (or ``target``)."""
    tmp = root / "tmp" / name
    steps = (("rename", str(tmp), target or str(root / "new" / name)),)
    return Commit(steps=steps, **body(tmp, data, streamed))


@pytest.fixture
def root(tmp_path):
    for sub in ("tmp", "new"):
        (tmp_path / sub).mkdir()
    return tmp_path


@pytest.fixture(params=["inline", "process", "worker"])
def mode(request):
    """Every place a batch can run: the reactor thread, the disk process, the worker thread
    (for commits of streamed bodies)."""
    return request.param


@pytest.fixture
def streamed(mode):
    return mode == "worker"


@pytest.fixture
def committer(mode):
    committer = Committer(disk_process=mode == "process")
    committer.startService()
    yield committer
    if committer.running:
        pytest_twisted.blockon(committer.stopService())


@pytest_twisted.inlineCallbacks
def test_many_commits_are_batched_and_all_land(root, committer, streamed):
    ds = [committer.submit(file_commit(root, f"m{i}", b"x" * i, streamed=streamed)) for i in range(200)]
    yield defer.gatherResults(ds)
    assert sorted(os.listdir(root / "new")) == sorted(f"m{i}" for i in range(200))
    assert all((root / "new" / f"m{i}").read_bytes() == b"x" * i for i in range(200))
    assert os.listdir(root / "tmp") == []
    assert committer.commits == 200
    assert committer.batches < 200  # at least some commits shared a batch
    assert (committer._thread is not None) == streamed  # streamed bodies, and only they, on the worker


@pytest_twisted.inlineCallbacks
def test_a_failing_commit_fails_alone_and_leaves_nothing(root, committer, streamed):
    missing = root / "missing"
    tmp_c = str(root / "tmp" / "c")
    half_linked = Commit(
        steps=(("link", tmp_c, str(root / "new" / "c-copy")), ("link", tmp_c, str(missing / "c"))),
        **body(root / "tmp" / "c", b"3", streamed),
    )
    commits = [
        file_commit(root, "ok1", b"1", streamed=streamed),
        Commit(**body(missing / "x", b"2", streamed)),
        file_commit(root, "b", b"2", target=str(missing / "b"), streamed=streamed),
        half_linked,
        file_commit(root, "ok2", b"5", streamed=streamed),
    ]
    results = yield defer.DeferredList([committer.submit(c) for c in commits], consumeErrors=True)
    assert [ok for ok, _ in results] == [True, False, False, False, True]
    for _, failure in results[1:4]:
        assert isinstance(failure.value, CommitError)
        assert failure.value.errno == errno.ENOENT
        assert "missing" in str(failure.value)
    assert sorted(os.listdir(root / "new")) == ["ok1", "ok2"]  # the link to c-copy was taken back
    assert os.listdir(root / "tmp") == []  # and the failed commits' temporary files removed


@pytest_twisted.inlineCallbacks
def test_stop_finishes_what_was_queued(root, committer, streamed):
    ds = [committer.submit(file_commit(root, f"m{i}", b"x", streamed=streamed)) for i in range(50)]
    yield committer.stopService()
    yield defer.gatherResults(ds)
    assert len(os.listdir(root / "new")) == 50


def test_two_commits_of_one_file_in_a_batch_run_one_after_the_other(root):
    """Two updates of one envelope that end in the same iteration must not interleave
    (both writing the temporary name before either renames it)."""
    final = str(root / "new" / "env.json")
    tmp = final + ".tmp"
    first = Commit(writes=((tmp, b"first"),), steps=(("rename", tmp, final),))
    second = Commit(writes=((tmp, b"second"),), steps=(("rename", tmp, final),))
    other = file_commit(root, "other", b"o")
    dir_fds: dict[str, int] = {}
    try:
        assert run_batch([first, other, second], dir_fds) == [None, None, None]
    finally:
        for fd in dir_fds.values():
            os.close(fd)
    assert (root / "new" / "env.json").read_bytes() == b"second"
    assert sorted(os.listdir(root / "new")) == ["env.json", "other"]


def test_unlink_steps_tolerate_missing_files_and_sync_no_directory(root):
    (root / "new" / "a").write_bytes(b"a")
    commit = Commit(
        steps=(("unlink", str(root / "new" / "a"), ""), ("unlink", str(root / "new" / "gone"), ""))
    )
    dir_fds: dict[str, int] = {}
    assert run_batch([commit], dir_fds) == [None]
    assert dir_fds == {}
    assert os.listdir(root / "new") == []


@pytest_twisted.inlineCallbacks
def test_commits_the_disk_process_never_answered_fail_and_it_is_started_again(root):
    clock = task.Clock()  # times the restarts only; batches still run on the reactor
    committer = Committer(disk_process=True, clock=clock)
    committer.startService()
    try:
        first = committer._process
        os.kill(first.transport.pid, signal.SIGSTOP)  # it takes the batch but cannot act on it
        d = committer.submit(file_commit(root, "lost", b"1"))
        yield defer.ensureDeferred(
            wait_until_async(lambda: first.waiting, what="the batch sent to the process")
        )
        os.kill(first.transport.pid, signal.SIGKILL)
        with pytest.raises(CommitError, match="ended before finishing"):
            yield d
        assert os.listdir(root / "new") == []  # failed, and nothing of it visible
        assert committer._process is None
        # Started again for the next batch (at most once a second; inline meanwhile).
        yield committer.submit(file_commit(root, "soon", b"2"))
        assert committer._process is None  # less than a second since the last start: inline
        clock.advance(RESPAWN_INTERVAL)
        yield committer.submit(file_commit(root, "later", b"3"))
        assert committer._process is not None
        assert committer._process.transport.pid != first.transport.pid
    finally:
        yield committer.stopService()
    assert sorted(os.listdir(root / "new")) == ["later", "soon"]


def test_a_commit_its_process_published_before_dying_is_settled_as_done(root):
    """The process died after the rename (the last step) but before answering."""
    commit = file_commit(root, "m", b"data")
    (root / "new" / "m").write_bytes(b"data")  # as the dead process left it: synced, renamed
    assert settle(commit) is None
    assert (root / "new" / "m").read_bytes() == b"data"


def test_a_commit_its_process_left_half_done_is_taken_back(root):
    """Died between a link (a second recipient) and the rename: nobody may see it."""
    tmp, copy, final = str(root / "tmp" / "m"), str(root / "new" / "copy"), str(root / "new" / "m")
    commit = Commit(writes=((tmp, b"data"),), steps=(("link", tmp, copy), ("rename", tmp, final)))
    (root / "tmp" / "m").write_bytes(b"data")
    os.link(tmp, copy)
    failure = settle(commit)
    assert failure is not None and "before finishing" in failure[1]
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []
