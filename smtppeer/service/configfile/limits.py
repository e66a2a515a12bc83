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
    "client_ipv6_prefix_length",
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

# Counts of at least one.
_COUNTS = (
    "bad_commands",
    "max_connections",
    "max_received",
    "outgoing_connections",
    "outgoing_connections_per_destination",
    "messages_per_connection",
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
        values = {name: self._limit(name, raw, ("limits", name)) for name, raw in value.items()}
        for name in SERVICE:
            if name in values:
                setattr(config, name, values.pop(name))
        if "retry_interval_max" not in value:
            # A retry_interval over the default maximum is taken to mean "retry this
            # often" (before the maximum could be set, it was cut to an hour unsaid).
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

    def _limit(self, name: str, raw: Any, key: Key) -> Any:
        """One value of ``[limits]``, checked for what its key means."""
        if name == "message_size":
            return self.size(raw, key, 1024)
        if name == "command_line":
            return self.size(raw, key, 512, " (RFC 5321 §4.5.3.1.4)")
        if name == "text_line":
            return self.size(raw, key, 1000, " (RFC 5321 §4.5.3.1.6)")
        if name == "recipients":
            return self.integer(raw, key, 100, " (RFC 5321 §4.5.3.1.8)")
        if name in _COUNTS:
            return self.integer(raw, key, 1)
        if name in ("max_connections_per_client", "auth_failures_per_client"):
            return self.integer(raw, key, 0, " (0: no limit)")
        if name == "client_ipv6_prefix_length":
            bits = self.integer(raw, key, 1)
            if bits > 128:
                raise self.error(key, f"{bits} is too large: at most 128 bits")
            return bits
        if name == "queue_minfree":
            return self.size(raw, key, 0)
        # the timeouts, auth_backoff(_max), queue_lifetime, retry_interval(_max)
        return self.duration(raw, key)
