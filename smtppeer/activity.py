"""What happens to mail, as records for programs that watch: the lab's event
stream and its waits, and metrics.

The log says the same things in lines for people; these are values, so no
program has to parse log text.  Each service (each host of a lab) has one
``Activity``; the receiving policy, the queue runner and the poll cycles
report to it.  With nobody watching, a report costs one test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from twisted.logger import Logger

log = Logger()


class Kind(StrEnum):
    RECEIVED = "received"  # a message was accepted (250 after DATA, or a local injection)
    REFUSED = "refused"  # a recipient or a message was refused
    DELIVERED = "delivered"  # one recipient, to its next hop
    DEFERRED = "deferred"  # one recipient: a temporary failure, to be retried (or held again)
    FAILED = "failed"  # one recipient, for good
    BOUNCED = "bounced"  # a delivery status notification was queued for the sender
    RELEASED = "released"  # a peer's hold queue was given to it (TURN, ATRN, ETRN)
    POLLED = "polled"  # one poll cycle of a peer ended


@dataclass(frozen=True)
class Record:
    kind: Kind
    time: float  # the service's clock
    fields: dict[str, Any] = field(default_factory=dict)


Watcher = Callable[[Record], object]


class Activity:
    def __init__(self, clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # noqa: PLC0415
        self.clock = clock
        self._watchers: list[Watcher] = []

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher`` with every record from now on; returns the way to stop."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher) if watcher in self._watchers else None

    @property
    def watched(self) -> bool:
        return bool(self._watchers)

    def report(self, kind: Kind, **fields: Any) -> None:
        if not self._watchers:
            return
        record = Record(kind, self.clock.seconds(), fields)
        for watcher in list(self._watchers):
            try:
                watcher(record)
            except Exception:  # a watcher's bug must not cost the mail system anything
                log.failure("an activity watcher failed on {kind}", kind=str(kind))
