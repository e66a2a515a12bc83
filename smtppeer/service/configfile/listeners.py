"""``[[listen]]``: the listeners, their modes, TLS and processes."""

from __future__ import annotations

from typing import Any

from ..config import DEFAULT_LISTEN, ODMR, ODMR_PORT, SMTP, Config, Listener, ListenerMode
from .errors import Key, _show
from .values import Values

MODES = tuple(ListenerMode)
MAX_PROCESSES = 64


class Listeners(Values):
    LISTENER = (
        "endpoint",
        "mode",
        "turn",
        "starttls",
        "require_tls",
        "auth_in_clear",
        "max_auth_failures",
        "processes",
    )

    def listeners(self, value: Any, config: Config) -> list[Listener]:
        if value is None:
            return [Listener(DEFAULT_LISTEN)]
        listeners: list[Listener] = []
        seen: dict[tuple, int] = {}
        for i, item in enumerate(self.check(value, ("listen",), list, "an array of listeners")):
            key: Key = ("listen", i)
            ekey: Key = (*key, "endpoint")
            if isinstance(item, str):  # listen = ["tcp:25"]
                item, ekey = {"endpoint": item}, key
            self.table(item, key, self.LISTENER)
            listener, parsed, ekey = self.listener(item, key, ekey, config)
            for other, j in seen.items():
                if _same_address(parsed, other):
                    previous = listeners[j].endpoint
                    also = f" ({_show(previous)})" if previous != listener.endpoint else ""
                    raise self.error(ekey, f"{_show(listener.endpoint)} duplicates listen[{j}]{also}")
            seen[parsed] = i
            listeners.append(listener)
        return listeners

    def listener(
        self, item: dict[str, Any], key: Key, ekey: Key, config: Config
    ) -> tuple[Listener, tuple, Key]:
        """One listener's table: the listener, its parsed endpoint (to find duplicates)
        and the key its endpoint is named by in errors."""
        mode = SMTP
        if "mode" in item:
            text = self.string(item["mode"], (*key, "mode")).strip().lower()
            if text not in MODES:
                modes = " or ".join(f'"{m}"' for m in MODES)
                raise self.error((*key, "mode"), f"{_show(item['mode'])} is not a mode: {modes}")
            mode = ListenerMode(text)
        if "endpoint" in item:
            listener = Listener(item["endpoint"], mode=mode)
            parsed = self.server_endpoint(item["endpoint"], ekey)
        elif mode == ODMR:  # RFC 2645's port
            listener, ekey = Listener(f"tcp:{ODMR_PORT}", mode=mode), key
            parsed = self.server_endpoint(listener.endpoint, ekey)
        else:
            raise self.error(key, 'missing "endpoint" (a server endpoint description such as "tcp:25")')
        if "turn" in item:
            listener.turn = self.boolean(item["turn"], (*key, "turn"))
            if listener.turn and mode == ODMR:
                raise self.error(
                    (*key, "turn"),
                    "an odmr listener turns with ATRN, not TURN (RFC 2645): set mode or turn",
                )
        self.listener_tls(item, key, listener, config)
        if "max_auth_failures" in item:
            listener.max_auth_failures = self.integer(
                item["max_auth_failures"], (*key, "max_auth_failures"), 1
            )
        if "processes" in item:
            self.processes(item["processes"], (*key, "processes"), listener)
        return listener, parsed, ekey

    def processes(self, value: Any, key: Key, listener: Listener) -> None:
        listener.processes = self.integer(value, key, 1)
        if listener.processes > MAX_PROCESSES:
            raise self.error(key, f"{listener.processes} is too many: at most {MAX_PROCESSES}")
        if listener.processes > 1 and (listener.mode == ODMR or listener.turn):
            raise self.error(
                key, "a listener served by several processes only receives: not with turn or odmr"
            )
        if listener.processes > 1 and listener.endpoint.split(":")[0].lower() not in ("tcp", "tcp6"):
            raise self.error(key, "several processes need a tcp or tcp6 endpoint")

    def listener_tls(self, item: dict[str, Any], key: Key, listener: Listener, config: Config) -> None:
        for name in ("starttls", "require_tls", "auth_in_clear"):
            if name in item:
                setattr(listener, name, self.boolean(item[name], (*key, name)))
        if config.tls is None:
            if listener.require_tls:
                raise self.error(
                    (*key, "require_tls"), "there is no certificate to offer STARTTLS with ([tls])"
                )
            if "starttls" in item and listener.starttls:
                raise self.error((*key, "starttls"), "there is no certificate to offer STARTTLS with ([tls])")
        if listener.require_tls and not listener.starttls:
            raise self.error((*key, "require_tls"), "TLS cannot be required where starttls = false")


def _same_address(a: tuple, b: tuple) -> bool:
    """Two parsed server endpoints that cannot both listen (identical, or TCP on one port with a wildcard)."""
    if a == b:
        return a[1] != ("0",)  # port 0: each gets a port of its own
    kind_a, args_a, kw_a = a
    kind_b, args_b, kw_b = b
    if kind_a != "TCP" or kind_b != "TCP" or args_a != args_b or args_a == ("0",):
        return False
    iface_a, iface_b = dict(kw_a).get("interface", ""), dict(kw_b).get("interface", "")
    return iface_a == iface_b or "" in (iface_a, iface_b) or "0.0.0.0" in (iface_a, iface_b)
