"""Log output for machines: one JSON object per line.

Two ways to get it:

* ``json_log = true`` in the configuration: the service also writes every
  event to ``<data-dir>/smtppeer.log.jsonl`` (the usual text log goes on);
* ``twistd --logger smtppeer.service.logs.json_lines -n smtppeer ...``: JSON
  lines on standard output instead of text (twistd's own choice of log
  observer).

Each line has documented fields only (README, "Operations"), never Twisted's
internals (``log_logger``, ``log_source``, class UUIDs of
``jsonFileLogObserver``'s format), so a reader can rely on them:

``time``
    seconds since the epoch (a float);
``level``
    ``debug``, ``info``, ``warn``, ``error`` or ``critical``;
``namespace``
    the module that logged it (``smtppeer.relay.runner``, ``twisted.internet...``);
``text``
    the message as the text log shows it;
``failure``
    the traceback, only for an event that carries one;

and, for smtppeer's own events (``namespace`` starts with ``smtppeer``), each
field of the event whose value is a string, a number, a boolean or null
(``queue_id``, ``client``, ``peer``, ``line``...), so that events can be
filtered without parsing ``text``.  The five above win over a field of the
same name.

A line that cannot be written (the data directory's disk is full) is
dropped, not raised: an observer that raises makes Twisted log a traceback
for every later event.  The text log says so once, and once more with the
count when lines are written again; in the file a line is whole or absent.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO, TextIO

from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

log = Logger()

FILE_NAME = "smtppeer.log.jsonl"
FIELDS = ("time", "level", "namespace", "text", "failure")


def event_fields(event: dict[str, Any]) -> dict[str, Any]:
    """The documented fields of one ``twisted.logger`` event."""
    level = event.get("log_level")
    namespace = str(event.get("log_namespace") or "")
    fields: dict[str, Any] = {
        "time": event.get("log_time"),
        "level": level.name if isinstance(level, LogLevel) else "info",
        "namespace": namespace,
        "text": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            fields["failure"] = failure.getTraceback()
        except Exception:  # noqa: BLE001 -- a log line must never fail
            fields["failure"] = repr(failure)
    if namespace == "smtppeer" or namespace.startswith("smtppeer."):
        for key, value in event.items():
            if key.startswith("log_") or key in FIELDS:
                continue
            if value is None or isinstance(value, str | int | float | bool):
                fields[key] = value
    return fields


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event's documented fields as one JSON line to ``stream``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.dropped = 0  # lines not written since writing failed

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event_fields(event), ensure_ascii=False, default=str) + "\n"
        try:
            self.write(line)
        except OSError as e:
            self.dropped += 1
            if self.dropped == 1:  # (this line comes back here, and is dropped too)
                log.error("{line}", line=f"JSON log: cannot write ({e.strerror or e}); dropping lines")
            return
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            log.info("{line}", line=f"JSON log: writing again; {dropped} lines were dropped")

    def write(self, line: str) -> None:
        self.stream.write(line)
        self.stream.flush()


class _FileLines(JSONLinesObserver):
    """JSON lines to a file of our own (``BinaryIO``, unbuffered, appending), each
    line whole or not at all: a write the disk took only part of is taken back."""

    def write(self, line: str) -> None:
        fd = self.stream.fileno()
        end = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(line.encode("utf-8"))
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            os.ftruncate(fd, end)
            raise


def json_lines() -> JSONLinesObserver:
    """A log observer factory for ``twistd --logger``: JSON lines on standard output."""
    return JSONLinesObserver(sys.stdout)


class JSONLogFile(service.Service):
    """Writes every log event as a JSON line to a file while the service runs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._observer: JSONLinesObserver | None = None

    def startService(self) -> None:  # noqa: N802 -- twisted's name
        super().startService()
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._observer = _FileLines(self._file)
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:  # noqa: N802 -- twisted's name
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def json_log_path(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), FILE_NAME)
