"""Queue IDs: short, unique across restarts, sortable by arrival time."""

from __future__ import annotations

import itertools
import os
import time

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"  # no vowels: IDs never spell words
_counter = itertools.count()


def _encode(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_queue_id() -> str:
    """Microsecond time, then process and counter bits: 16 characters."""
    stamp = _encode(time.time_ns() // 1000, 11)
    tail = _encode((os.getpid() & 0xFFF) << 12 | next(_counter) & 0xFFF, 5)
    return stamp + tail
