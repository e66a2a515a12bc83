"""Queue IDs: short, unique across restarts and processes, sortable by arrival time."""

from __future__ import annotations

import itertools
import os
import time

_counter = itertools.count()


def new_queue_id() -> str:
    """Microseconds since the epoch, then 12 bits of pid and 16 of a counter, in hex (20 characters).

    Two processes sharing a data directory (the service and the admin CLI)
    differ in pid; one process would need 65,536 IDs in one microsecond to
    repeat itself.
    """
    return f"{time.time_ns() // 1000:013X}{os.getpid() & 0xFFF:03X}{next(_counter) & 0xFFFF:04X}"
