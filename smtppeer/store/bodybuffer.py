"""A message body on its way to disk: in memory while small, streamed to a file when large.

A small message (nearly all of them) is written in one go as part of its
commit, so it can be written wherever the commit runs (the disk process,
``committer.py``) and the reactor never touches the file system for it.  A
large one would cost its size in memory, so past ``MEMORY_LIMIT`` it goes to
its file as it arrives and memory stays flat whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from .commits import unlink

MEMORY_LIMIT = 256 * 1024


def create_file(path: str) -> BinaryIO:
    """A new file at ``path`` (never an existing one), unbuffered: the body is written in large pieces."""
    return open(path, "xb", buffering=0)  # noqa: SIM115


def _write_all(file: BinaryIO, data: bytes) -> None:
    """All of ``data``, or an ``OSError``.  An unbuffered file's ``write`` may take only
    part of it, without an error, when the disk fills up (the error comes at the next
    write): a body that ended on such a write would be committed cut short."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


class BodyBuffer:
    """The bytes of one message, destined for ``path`` (a name nobody reads yet)."""

    def __init__(
        self, path: str, first: bytes = b"", *, limit: int = MEMORY_LIMIT, create: Callable = create_file
    ) -> None:
        self.path = path
        self.limit = limit
        self.create = create
        self.size = 0
        self._chunks: list[bytes] = []
        self._file: BinaryIO | None = None
        if first:
            self.write(first)

    @property
    def large(self) -> bool:
        """True once the body is in its file rather than in memory."""
        return self._file is not None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            _write_all(self._file, data)
            return
        self._chunks.append(data)
        if self.size > self.limit:
            self._file = self.create(self.path)
            _write_all(self._file, b"".join(self._chunks))
            self._chunks = []

    def commit_parts(self) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
        """``(writes, syncs)`` for the ``Commit`` that makes the body durable at ``path``."""
        if self._file is None:
            return ((self.path, b"".join(self._chunks)),), ()
        self._file.close()
        return (), (self.path,)

    def discard(self) -> None:
        """Forget the body, and remove its file if it has one."""
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None
            unlink(self.path)
