"""Log output for machines: one JSON object per line (``twisted.logger``'s format).

Two ways to get it:

* ``json_log = true`` in the configuration: the service also writes every
  event to ``<data-dir>/smtppeer.log.jsonl`` (the usual text log goes on);
* ``twistd --logger smtppeer.service.logs.json_lines -n smtppeer ...``: JSON lines on
  standard output instead of text (twistd's own choice of log observer).

Message events carry their fields (``queue_id``, ``peer``...) beside the
formatted ``line``, so they can be filtered without parsing text.
"""

from __future__ import annotations

import os
import sys

from twisted.application import service
from twisted.logger import globalLogPublisher, jsonFileLogObserver

FILE_NAME = "smtppeer.log.jsonl"


def json_lines():
    """A log observer factory for ``twistd --logger``: JSON lines on standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


class JSONLogFile(service.Service):
    """Writes every log event as a JSON line to a file while the service runs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = None
        self._observer = None

    def startService(self) -> None:
        super().startService()
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._observer = jsonFileLogObserver(self._file, recordSeparator="")
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


def json_log_path(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), FILE_NAME)
