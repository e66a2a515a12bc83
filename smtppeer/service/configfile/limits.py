"""``[limits]``: sizes, counts and timeouts."""

from __future__ import annotations

import dataclasses
from typing import Any

from smtppeer.engine import Limits

from ..config import Config
from .errors import Key
from .values import Values, format_duration

# Keys of [limits] that are the service's (``Config``), not the engine's (``Limits``).
SERVICE = (
    "max_connections",
    "max_connections_per_client",
    "auth_failures_per_client",
    "auth_backoff",
    "auth_backoff_max",
    "queue_minfree",
    "max_received",
    "queue_lifetime",
    "retry_interval",
)


class LimitsSection(Values):
    LIMITS = tuple(f.name for f in dataclasses.fields(Limits)) + SERVICE

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
            elif name in ("max_connections_per_client", "auth_failures_per_client"):
                values[name] = self.integer(raw, key, 0, " (0: no limit)")
            elif name == "queue_minfree":
                values[name] = self.size(raw, key, 0)
            else:  # the timeouts, auth_backoff(_max), queue_lifetime, retry_interval
                values[name] = self.duration(raw, key)
        for name in SERVICE:
            if name in values:
                setattr(config, name, values.pop(name))
        if config.auth_backoff_max < config.auth_backoff:
            name = "auth_backoff_max" if "auth_backoff_max" in value else "auth_backoff"
            raise self.error(
                ("limits", name),
                f"auth_backoff_max ({format_duration(config.auth_backoff_max)}) is shorter than "
                f"auth_backoff ({format_duration(config.auth_backoff)})",
            )
        config.limits = Limits(**values)
