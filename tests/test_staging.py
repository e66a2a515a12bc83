"""Staged files: made ahead by a thread, in two directories used in turn, cleaned up."""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import defer

from smtppeer.staging import Staging


def test_leftovers_from_a_crash_are_removed_at_start(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "123.4").write_bytes(b"a partial message nobody acknowledged")
    staging = Staging(str(tmp_path))
    assert os.listdir(tmp_path / "a") == [] and os.listdir(tmp_path / "b") == []
    staging.stopService()


@pytest_twisted.inlineCallbacks
def test_files_come_from_both_directories_in_turn_and_stop_removes_the_spares(tmp_path):
    staging = Staging(str(tmp_path), batch=8)
    staging.startService()
    seen_dirs = []
    taken = []
    for _ in range(40):
        path, fd = staging.take()
        os.write(fd, b"x")
        os.close(fd)
        taken.append(path)
        seen_dirs.append(os.path.basename(os.path.dirname(path)))
        if staging._filling is not None:
            yield staging._filling  # let the worker finish its batch, as time would
    assert len(set(taken)) == 40  # every file is new
    assert set(seen_dirs) == {"a", "b"}
    yield defer.maybeDeferred(staging.stopService)
    left = {os.path.join(tmp_path, d, n) for d in ("a", "b") for n in os.listdir(tmp_path / d)}
    assert left == set(taken)  # the spares are gone; the files handed out are the caller's
