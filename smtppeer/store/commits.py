"""What one acknowledgement needs on disk, as plain data, and the code that does it.

A ``250`` may only follow the disk: the message's bytes synced under a name
nobody reads, then linked or renamed to where readers look, then those
directories synced.  A :class:`Commit` describes that work as data, so that
it can be done wherever it costs least: on the reactor thread, on a thread
(a large message, whose sync takes long), or in the disk process, which is
this module run as ``python -m smtppeer.store.commits`` (``committer.py`` says
which and why).

:func:`run_batch` does many commits together: every write, then every sync
(after the first, the device has usually flushed the others' data already,
so the rest are cheap), then every link and rename, then one sync per
directory.  Correctness never depends on the batching: every file is synced
before its name appears, and every name is synced before its commit is
reported.

This module imports nothing of Twisted or of the rest of smtppeer, so the
disk process starts small and fast.
"""

from __future__ import annotations

import errno
import os
import pickle
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

# A step: ("link", source, target), ("rename", source, target) or ("unlink", path, "").
Step = tuple[str, str, str]
# How a commit failed: the errno (0 if none) and a message naming the file.
Failure = tuple[int, str]


class Commit(NamedTuple):
    """The disk work behind one acknowledgement.

    ``writes`` are files to create (or replace) with these bytes and
    ``syncs`` files already written (a body streamed to disk); both are
    temporary names that nobody reads.  Once all of them are synced,
    ``steps`` run in order, and the directories of every link and rename
    target are synced.  Unlinks are not synced: see ``spool._removal``.  If
    anything fails, the commit's temporary files and the links it made are
    removed again.
    """

    writes: tuple[tuple[str, bytes], ...] = ()
    syncs: tuple[str, ...] = ()
    steps: tuple[Step, ...] = ()


def run_batch(commits: Sequence[Commit], dir_fds: dict[str, int]) -> list[Failure | None]:
    """Do ``commits``; one result per commit, ``None`` for success.

    ``dir_fds`` caches open directories between batches.  Commits that touch
    a file an earlier one in the batch touches (two updates of one envelope)
    run after it, not interleaved with it.
    """
    results: list[Failure | None] = []
    for run in _independent_runs(commits):
        results.extend(_run(run, dir_fds))
    return results


def _independent_runs(commits: Sequence[Commit]) -> Iterator[Sequence[Commit]]:
    start, touched = 0, set()
    for i, commit in enumerate(commits):
        paths = {path for path, _ in commit.writes} | set(commit.syncs)
        paths.update(path for step in commit.steps for path in step[1:] if path)
        if not touched.isdisjoint(paths):
            yield commits[start:i]
            start, touched = i, set()
        touched |= paths
    yield commits[start:]


def _run(commits: Sequence[Commit], dir_fds: dict[str, int]) -> list[Failure | None]:
    failed: dict[int, Failure] = {}
    opened: list[tuple[int, int]] = []
    for i, commit in enumerate(commits):
        try:
            for path, data in commit.writes:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                opened.append((i, fd))
                write_all(fd, data)
            for path in commit.syncs:
                opened.append((i, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
        except OSError as e:
            failed[i] = _failure(e)
    for i, fd in opened:
        try:
            if i not in failed:
                os.fdatasync(fd)
        except OSError as e:
            failed[i] = _failure(e)
        finally:
            os.close(fd)
    dirs: dict[str, list[int]] = {}
    linked: dict[int, list[str]] = {}
    for i, commit in enumerate(commits):
        if i not in failed:
            error = _publish(commit, i, dirs, linked.setdefault(i, []))
            if error is not None:
                failed[i] = error
    for path, members in dirs.items():
        try:
            _sync_directory(path, dir_fds)
        except OSError as e:
            for i in members:
                failed.setdefault(i, _failure(e))
    for i in failed:
        _take_back(commits[i], linked.get(i, []))
    return [failed.get(i) for i in range(len(commits))]


def _take_back(commit: Commit, links: list[str]) -> None:
    """Remove a failed commit's temporary files and the ``links`` it made.  Best
    effort: the failure may be the very directory they are in."""
    for path in [path for path, _ in commit.writes] + list(commit.syncs) + links:
        try:
            os.unlink(path)
        except OSError:
            pass


def _publish(commit: Commit, index: int, dirs: dict[str, list[int]], linked: list[str]) -> Failure | None:
    try:
        for op, source, target in commit.steps:
            if op == "link":
                os.link(source, target)
                linked.append(target)
            elif op == "rename":
                os.rename(source, target)
            elif op == "unlink":
                unlink(source)
                continue
            else:
                raise ValueError(f"unknown step {op!r}")
            dirs.setdefault(os.path.dirname(target), []).append(index)
    except (OSError, ValueError) as e:
        return _failure(e)
    return None


def settle(commit: Commit) -> Failure | None:
    """Decide a commit whose process died before answering, so that the answer is true.

    Names appear only after every file is synced, and the last step is what
    makes a commit whole (a Maildir's rename comes after its links).  So if
    every link and rename target exists, the commit got far enough: its
    directories are synced here and it succeeded.  Otherwise whatever of it
    appeared is taken back and it failed.  This holds for commits whose
    targets are new names, as every Maildir delivery's are (the disk process
    runs nothing else); a rename over an existing file could not be told apart.
    """
    targets = [target for op, _, target in commit.steps if op in ("link", "rename")]
    if targets and all(os.path.lexists(target) for target in targets):
        opened: dict[str, int] = {}
        try:
            for directory in dict.fromkeys(os.path.dirname(target) for target in targets):
                _sync_directory(directory, opened)
        except OSError as e:
            return _failure(e)
        finally:
            for fd in opened.values():
                os.close(fd)
        return None
    _take_back(commit, [t for op, _, t in commit.steps if op == "link" and os.path.lexists(t)])
    return (0, "the disk process ended before finishing")


def _sync_directory(path: str, dir_fds: dict[str, int]) -> None:
    """``fsync`` a directory, through ``dir_fds``, a bounded cache of open ones
    (an entry that failed is dropped from it)."""
    fd = dir_fds.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if len(dir_fds) >= 256:
            os.close(dir_fds.pop(next(iter(dir_fds))))
        dir_fds[path] = fd
    try:
        os.fsync(fd)
    except OSError:
        os.close(dir_fds.pop(path))
        raise


def _failure(e: Exception) -> Failure:
    return (getattr(e, "errno", None) or 0, str(e))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- the disk process ------------------------------------------------------------------
#
# Parent and child exchange frames: a 4-byte length, then a pickle.  The parent
# sends a list of commits (as plain tuples) per frame; the child answers every
# frame, in order, with the list of results.  Only the parent ever writes to the
# child, which is its own process: the pickles are trusted.

HEADER = struct.Struct("!I")


def frame(value: object) -> bytes:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> Iterator[Any]:
    """Take every complete frame off the front of ``buffer``."""
    offset = 0
    while len(buffer) - offset >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer, offset)
        end = offset + HEADER.size + size
        if len(buffer) < end:
            break
        yield pickle.loads(buffer[offset + HEADER.size : end])
        offset = end
    del buffer[:offset]


def serve(requests: int = 0, answers: int = 1) -> None:
    """The disk process: run what arrives, as one batch per read, until the parent
    closes the pipe (having sent everything it wants done)."""
    dir_fds: dict[str, int] = {}
    buffer = bytearray()
    while True:
        data = os.read(requests, 1 << 20)
        if not data:
            return
        buffer += data
        frames = [[Commit(*c) for c in batch] for batch in unframe(buffer)]
        if not frames:
            continue
        results = run_batch([c for batch in frames for c in batch], dir_fds)
        out, start = [], 0
        for batch in frames:
            out.append(frame(results[start : start + len(batch)]))
            start += len(batch)
        write_all(answers, b"".join(out))


if __name__ == "__main__":
    import signal

    # The parent decides when this process ends, by closing the pipe once its
    # last commit is answered: a terminal's ^C or a service manager's SIGTERM
    # to the whole group must not cut a batch short while the parent drains.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve()
    except BrokenPipeError:  # the parent went away; what it did not hear of was never acknowledged
        raise SystemExit(errno.EPIPE) from None
