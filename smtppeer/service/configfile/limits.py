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
    "retry_interval_max",
    "outgoing_connections",
    "outgoing_connections_per_destination",
    "messages_per_connection",
    "connect_timeout",
)

# Pairs of (shorter, longer) durations: the second may not be below the first.
_ORDERED = (("auth_backoff", "auth_backoff_max"), ("retry_interval", "retry_interval_max"))


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
            elif name in (
                "bad_commands",
                "max_connections",
                "max_received",
                "outgoing_connections",
                "outgoing_connections_per_destination",
                "messages_per_connection",
            ):
                values[name] = self.integer(raw, key, 1)
            elif name in ("max_connections_per_client", "auth_failures_per_client"):
                values[name] = self.integer(raw, key, 0, " (0: no limit)")
            elif name == "queue_minfree":
                values[name] = self.size(raw, key, 0)
            else:  # the timeouts, auth_backoff(_max), queue_lifetime, retry_interval(_max)
                values[name] = self.duration(raw, key)
        for name in SERVICE:
            if name in values:
                setattr(config, name, values.pop(name))
        if "retry_interval_max" not in value:
            # A retry_interval over the default maximum was valid before the maximum
            # could be set, and meant "retry this often": it still does.
            config.retry_interval_max = max(config.retry_interval_max, config.retry_interval)
        for short, long in _ORDERED:
            if getattr(config, long) < getattr(config, short):
                name = long if long in value else short
                raise self.error(
                    ("limits", name),
                    f"{long} ({format_duration(getattr(config, long))}) is shorter than "
                    f"{short} ({format_duration(getattr(config, short))})",
                )
        config.limits = Limits(**values)
