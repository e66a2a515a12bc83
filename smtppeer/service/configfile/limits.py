"""``[limits]``: sizes, counts and timeouts."""

from __future__ import annotations

import dataclasses
from typing import Any

from smtppeer.engine import Limits

from ..config import Config
from .errors import Key
from .values import Values


class LimitsSection(Values):
    LIMITS = tuple(f.name for f in dataclasses.fields(Limits)) + (
        "max_connections",
        "max_received",
        "queue_lifetime",
        "retry_interval",
    )

    def limits(self, value: Any, config: Config) -> None:
        self.table(
            value,
            ("limits",),
            self.LIMITS,
            {"max_message_size": "message_size", "max_recipients": "recipients"},
        )
        values: dict[str, Any] = {}
        for name, raw in value.items():
            key: Key = ("limits", name)
            if name == "message_size":
                values[name] = self.size(raw, key, 1024)
            elif name == "command_line":
                values[name] = self.size(raw, key, 512, " (RFC 5321 §4.5.3.1.4)")
            elif name == "text_line":
                values[name] = self.size(raw, key, 1000, " (RFC 5321 §4.5.3.1.6)")
            elif name == "recipients":
                values[name] = self.integer(raw, key, 100, " (RFC 5321 §4.5.3.1.8)")
            elif name in ("bad_commands", "max_connections", "max_received"):
                values[name] = self.integer(raw, key, 1)
            else:  # the timeouts, queue_lifetime, retry_interval
                values[name] = self.duration(raw, key)
        for name in ("max_connections", "max_received", "queue_lifetime", "retry_interval"):
            if name in values:
                setattr(config, name, values.pop(name))
        config.limits = Limits(**values)
