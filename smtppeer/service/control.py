"""The control socket: how ``smtppeer`` admin commands talk to a running service.

The service alone writes its spool while it runs; an admin command that
changes the queue (hold, release, delete, flush, send, poll) asks the service
to do it, over a UNIX socket ``<data-dir>/control.sock`` (mode 0600: only its
owner may use it).  So the two never write the same file at once.  Reading
(``queue list``/``show``) needs no service: envelopes are replaced atomically.

The protocol is one JSON object per line each way::

    {"command": "flush", "peer": "provider"}     ->  {"ok": true, "count": 3}
    {"command": "hold", "id": "..."}             ->  {"ok": false, "error": "no message ..."}
"""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Callable

from twisted.application import service, strports
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from smtppeer.engine.address import AddressError, parse_path

from .startup import fail

log = Logger()

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024 * 1024  # a "send" carries the message (base64)


def socket_path(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), SOCKET_NAME)


def endpoint_description(data_dir: str) -> str:
    path = socket_path(data_dir).replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:address={path}:mode=600:lockfile=1"


class ControlService(service.Service):
    """The control socket, opened in ``startService``: after twistd has switched to
    ``--uid``/``--gid``, so the socket (mode 0600) belongs to the user the
    service runs as, who can also remove it at the end.  It needs no privilege."""

    def __init__(self, data_dir: str, factory: Factory) -> None:
        self.path = socket_path(data_dir)
        self._listening = strports.service(endpoint_description(data_dir), factory)

    def startService(self) -> None:  # noqa: N802 -- twisted's name
        super().startService()
        try:
            self._listening.startService()  # it listens now: its privilegedStartService was not called
        except CannotListenError as e:
            fail(f"cannot open the control socket {self.path}: {_reason(e)}")

    def stopService(self) -> defer.Deferred | None:  # noqa: N802 -- twisted's name
        super().stopService()
        if self._listening.running:
            return self._listening.stopService()
        return None


def _reason(e: CannotListenError) -> str:
    cause = e.socketError
    return getattr(cause, "strerror", None) or str(cause) or str(e)


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def lineReceived(self, line: bytes) -> None:
        d = defer.ensureDeferred(self.factory.handle(line))
        d.addErrback(lambda f: {"ok": False, "error": f.getErrorMessage() or f.type.__name__})
        d.addCallback(lambda answer: self.sendLine(json.dumps(answer).encode()))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b'{"ok": false, "error": "request too large"}')
        self.transport.loseConnection()


class ControlFactory(Factory):
    protocol = ControlProtocol
    noisy = False

    def __init__(self, runner, policy, poll_now: Callable[[str], defer.Deferred] | None = None) -> None:
        self.runner = runner
        self.policy = policy
        self.poll_now = poll_now

    async def handle(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            command = request["command"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "expected a JSON object with a command"}
        handler = getattr(self, "do_" + str(command).replace("-", "_"), None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {command!r}"}
        log.info("control: {command}", command=command)
        return await handler(request)

    def _envelope(self, request: dict):
        queue_id = str(request.get("id", ""))
        if queue_id not in self.runner.entries:
            raise KeyError(f"no message {queue_id!r} in the queue")
        return queue_id

    async def do_status(self, request: dict) -> dict:
        return {"ok": True, "queued": len(self.runner.entries), "sending": self.runner.queue.sending}

    async def do_rescan(self, request: dict) -> dict:
        return {"ok": True, "count": self.runner.rescan()}

    async def do_flush(self, request: dict) -> dict:
        self.runner.rescan()
        return {"ok": True, "count": self.runner.flush(request.get("route"))}

    async def do_hold(self, request: dict) -> dict:
        await self.runner.set_frozen(self._envelope(request), True)
        return {"ok": True}

    async def do_release(self, request: dict) -> dict:
        await self.runner.set_frozen(self._envelope(request), False)
        return {"ok": True}

    async def do_delete(self, request: dict) -> dict:
        await self.runner.delete(self._envelope(request))
        return {"ok": True}

    async def do_poll(self, request: dict) -> dict:
        if self.poll_now is None:
            return {"ok": False, "error": "no poll schedules are configured"}
        peer = str(request.get("peer", ""))
        try:
            outcome = await self.poll_now(peer)
        except KeyError:
            return {"ok": False, "error": f"no poll schedule for peer {peer!r}"}
        return {"ok": outcome.ok, "summary": outcome.line(), "error": outcome.error}

    async def do_send(self, request: dict) -> dict:
        try:
            sender, _ = parse_path(f"<{request.get('from', '')}>", reverse=True, utf8=True)
            rcpts = [parse_path(f"<{r}>", reverse=False, utf8=True)[0] for r in request["to"]]
        except (AddressError, KeyError, TypeError) as e:
            return {"ok": False, "error": f"bad address: {e}"}
        if not rcpts:
            return {"ok": False, "error": "no recipients"}
        message = base64.b64decode(request.get("message", ""))
        try:
            # inject applies the rule SMTP's DATA applies (bare CR/LF, NUL, long lines)
            queue_id = await self.policy.inject(sender, rcpts, message)
        except ValueError as e:
            log.info("{line}", line=f"control: send refused: {e}")
            return {"ok": False, "error": str(e)}
        return {"ok": True, "id": queue_id}


class ServiceNotRunning(Exception):
    """Nobody listens on the control socket: the service is not running there."""


def request(data_dir: str, payload: dict, timeout: float = 600.0) -> dict:
    """One blocking request to the running service (used by the admin CLI)."""
    path = socket_path(data_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ServiceNotRunning(f"no smtppeer service is running with data directory {data_dir}") from e
        s.sendall(json.dumps(payload).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    if not answer:
        return {"ok": False, "error": "the service closed the connection"}
    return json.loads(answer)
