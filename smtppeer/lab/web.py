"""The lab's HTTP API, its status page and its metrics (Twisted Web, JSON).

One leaf resource answers every path from a table of routes, so every
answer goes through one place that turns what went wrong into a status:
an unknown host, link, fault or message is a 404 with ``{"error": ...}``,
bad JSON or a bad parameter a 400 with the one-line reason (a fault goes
through the topology file's own checks, so its errors read the same), and
anything unexpected a 500 with the traceback in the lab's log, never in
the answer.  No request can stop the lab.

Two answers stay open: the long-poll ``wait`` (a cancellable
``Lab.wait_for_messages``: a client that goes away cancels it, and it is
never answered after that) and the event stream (server-sent events from
the lab's event stream, with a heartbeat comment, and what a reconnecting
client missed resent from ``Last-Event-ID``).  At stop both are ended and
every connection closed, so a stopped lab leaves no socket and no timer.

It binds to loopback by default: anyone who can reach it can read the
lab's mail and change its links.  A state-changing request sent by a page
of another site (its ``Origin`` is not this server) is refused.

``web_service(lab, endpoint)`` is what the lab's twistd service and the
test API start; once it listens it writes ``<data dir>/lab.json``
(``{"http": URL, "hosts": {name: {"smtp": port, ...}}}``), which is how
``smtppeer lab wait --data-dir DIR`` finds a running lab.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from smtppeer.service.configfile import ConfigError
from smtppeer.service.metrics import HTTPService, Metrics

from .faults import Fault
from .lab import Event, Lab, LabHost, Message, matcher
from .links import Link
from .topology import FaultSpec, TopologyReader

log = Logger()

DEFAULT_ENDPOINT = "tcp:0:interface=127.0.0.1"
HEARTBEAT = 15.0  # seconds between comments on an idle event stream
WAIT_DEFAULT, WAIT_LIMIT = 30.0, 300.0  # the long-poll's timeout, and the most a client may ask
MAX_BODY = 1024 * 1024
MATCH_FIELDS = ("subject", "mailbox", "from", "to")  # case-insensitive globs; "contains": raw text
MATCH = (*MATCH_FIELDS, "contains")
JSON = "application/json"
LAB_FILE = "lab.json"


class ApiError(Exception):
    """An answer other than success: its status and the one line that says why."""

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.extra = code, message, extra

    def response(self) -> Response:
        allow = self.extra.pop("allow", None)
        answer = Response(self.code, {"error": self.message, **self.extra})
        if allow:
            answer.headers["allow"] = allow
        return answer


@dataclass
class Response:
    code: int = 200
    body: Any = None  # JSON-able, or bytes of ``content_type``
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


STREAM = object()  # a handler that keeps its response open (the event stream)


class LabAPI(resource.Resource):
    """Every path of the lab's web server (``ROUTES``)."""

    isLeaf = True

    def __init__(self, lab: Lab, metrics: Metrics) -> None:
        super().__init__()
        self.lab = lab
        self.metrics = metrics
        self.streams: set[server.Request] = set()  # open event streams
        self.waiting: dict[server.Request, defer.Deferred] = {}  # answers still to come

    # -- answering ---------------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        try:
            result = self._dispatch(request)
        except ApiError as e:
            return self._respond(request, e.response())
        except Exception:
            log.failure("lab HTTP API: {method} {uri} failed", method=request.method, uri=request.uri)
            return self._respond(request, _internal_error())
        if result is STREAM:
            return server.NOT_DONE_YET
        if isinstance(result, defer.Deferred):
            return self._later(request, result)
        return self._respond(request, result)

    def _respond(self, request: server.Request, response: Response) -> bytes:
        request.setResponseCode(response.code)
        for name, value in response.headers.items():
            request.setHeader(name, value)
        if response.code == 204:
            return b""
        request.setHeader(b"content-type", response.content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        if isinstance(response.body, bytes):
            return response.body
        return json.dumps(response.body, default=str).encode() + b"\n"

    def _later(self, request: server.Request, pending: defer.Deferred) -> int:
        """Answer when ``pending`` fires, unless the client has gone by then: a client
        that goes away cancels it (a wait stops waiting), and nothing is written to it."""
        self.waiting[request] = pending
        gone: list[bool] = []

        def client_gone(reason: Failure) -> None:
            gone.append(True)
            pending.cancel()

        request.notifyFinish().addErrback(client_gone)

        def answer(response: Response) -> None:
            self.waiting.pop(request, None)
            if not gone:
                request.write(self._respond(request, response))
                request.finish()

        def failed(reason: Failure) -> None:
            if reason.check(ApiError):
                answer(reason.value.response())
            elif reason.check(defer.CancelledError):
                answer(Response(503, {"error": "the lab's web server is stopping"}))
            else:
                log.failure(
                    "lab HTTP API: {method} {uri} failed", reason, method=request.method, uri=request.uri
                )
                answer(_internal_error())

        pending.addCallbacks(answer, failed)
        pending.addErrback(lambda reason: log.failure("lab HTTP API: answering failed", reason))
        return server.NOT_DONE_YET

    def _dispatch(self, request: server.Request) -> Response | defer.Deferred | object:
        method = request.method.decode("ascii", "replace")
        method = "GET" if method == "HEAD" else method
        try:
            path = tuple(segment.decode("utf-8") for segment in request.postpath)
        except UnicodeDecodeError:
            raise ApiError(400, "the path is not UTF-8") from None
        if len(path) > 1 and path[-1] == "":
            path = path[:-1]  # /api/hosts/ is /api/hosts
        allowed = []
        for verb, pattern, handler in ROUTES:
            arguments = _match_path(pattern, path)
            if arguments is None:
                continue
            if verb != method:
                allowed.append(verb)
                continue
            if verb in ("POST", "PUT", "DELETE"):
                _same_origin(request)
            return handler(self, request, *arguments)
        if allowed:
            raise ApiError(
                405, f"{method} is not allowed here: {', '.join(allowed)}", allow=", ".join(allowed)
            )
        raise ApiError(404, f"nothing at /{'/'.join(path)}")

    # -- looking things up -------------------------------------------------------

    def _host(self, name: str) -> LabHost:
        host = self.lab.hosts.get(name)
        if host is None:
            raise ApiError(404, f"no host named {name!r} (hosts: {', '.join(self.lab.hosts)})")
        return host

    def _message(self, host: LabHost, key: str) -> Message:
        message = host.message(key)
        if message is None:
            raise ApiError(404, f"no message {key!r} on {host.name}")
        return message

    def _link(self, name: str) -> Link:
        try:
            return self.lab.link(name)
        except KeyError:
            raise ApiError(404, f"no link named {name!r} (links: {', '.join(self.lab.links)})") from None

    def _fault(self, key: str) -> Fault:
        fault = self.lab.faults.get(key)
        if fault is None:
            raise ApiError(404, f"no fault with the id or name {key!r}")
        return fault

    def _fault_spec(self, value: Any) -> FaultSpec:
        try:
            return TopologyReader("request").fault(value, (), self.lab.topology.hosts)
        except ConfigError as e:
            raise ApiError(400, str(e)) from None

    # -- the routes --------------------------------------------------------------

    def page(self, request: server.Request) -> Response:
        return Response(200, status_page(), "text/html; charset=utf-8")

    def metrics_page(self, request: server.Request) -> Response:
        body, content_type = self.metrics.exposition((request.getHeader(b"accept") or b"").decode("latin-1"))
        return Response(200, body, content_type)

    def describe_lab(self, request: server.Request) -> Response:
        _params(request)
        return Response(200, self.lab.describe())

    def hosts(self, request: server.Request) -> Response:
        _params(request)
        return Response(200, [host.describe() for host in self.lab.hosts.values()])

    def host(self, request: server.Request, name: str) -> Response:
        _params(request)
        return Response(200, self._host(name).describe())

    def messages(self, request: server.Request, name: str) -> Response:
        host = self._host(name)
        match = _message_match(_params(request, MATCH))
        return Response(200, [message.as_dict() for message in host.messages(match)])

    def delete_messages(self, request: server.Request, name: str) -> Response:
        _params(request)
        return Response(200, {"deleted": self._host(name).delete_messages()})

    def message(self, request: server.Request, name: str, key: str) -> Response:
        _params(request)
        message = self._message(self._host(name), key)
        return Response(200, {**message.as_dict(), "headers": _headers(message)})

    def raw(self, request: server.Request, name: str, key: str) -> Response:
        _params(request)
        return Response(200, self._message(self._host(name), key).raw, "message/rfc822")

    def headers(self, request: server.Request, name: str, key: str) -> Response:
        _params(request)
        return Response(200, _headers(self._message(self._host(name), key)))

    def delete_message(self, request: server.Request, name: str, key: str) -> Response:
        _params(request)
        host = self._host(name)
        if not host.delete_messages(key):
            raise ApiError(404, f"no message {key!r} on {host.name}")
        return Response(204)

    def wait(self, request: server.Request, name: str) -> defer.Deferred:
        """The long-poll: 200 once ``count`` matching messages are there, 504 (with
        what matched so far) after ``timeout`` seconds."""
        host = self._host(name)
        params = _params(request, (*MATCH, "count", "timeout"))
        count = _integer(params, "count", 1, minimum=1)
        timeout = _seconds(params, "timeout", WAIT_DEFAULT, WAIT_LIMIT)
        match = _message_match(params)
        waiting = self.lab.wait_for_messages(host.name, count, match, timeout)

        def timed_out(reason: Failure) -> Response:
            reason.trap(TimeoutError)
            so_far = [message.as_dict() for message in host.messages(match)]
            return Response(504, {"error": str(reason.value), "messages": so_far})

        return waiting.addCallbacks(
            lambda found: Response(200, {"messages": [message.as_dict() for message in found]}), timed_out
        )

    def queue(self, request: server.Request, name: str) -> Response:
        _params(request)
        return Response(200, self._host(name).queue())

    def held(self, request: server.Request, name: str) -> Response:
        peer = _params(request, ("peer",)).get("peer")
        return Response(200, self._host(name).held(peer))

    def poll(self, request: server.Request, name: str) -> defer.Deferred:
        host = self._host(name)
        peer = _params(request, ("peer",)).get("peer")
        poller = host.assembly.poller
        if poller is None:
            raise ApiError(409, f"{host.name} polls nobody (only a dial-up host polls)")
        if peer is not None and peer not in poller.schedules:
            raise ApiError(
                404, f"{host.name} does not poll {peer!r} (it polls {', '.join(poller.schedules)})"
            )

        def outcome(result: Any) -> Response:
            return Response(
                200,
                {
                    "peer": result.peer,
                    "line": result.line(),
                    "ok": result.ok,
                    "sent": result.sent,
                    "received": result.received,
                    "turned": result.turned,
                    "error": result.error,
                    "duration": result.duration,
                },
            )

        return _detached(host.poll(peer)).addCallback(outcome)

    def transcripts(self, request: server.Request, name: str) -> Response:
        _params(request)
        return Response(200, [t.as_dict() for t in self._host(name).transcripts.sessions])

    def links(self, request: server.Request) -> Response:
        _params(request)
        return Response(200, [link.describe() for link in self.lab.links.values()])

    def link(self, request: server.Request, name: str) -> Response:
        _params(request)
        return Response(200, self._link(name).describe())

    def set_link(self, request: server.Request, name: str) -> Response:
        """``{"up": true}`` or ``false`` sets the link by hand; ``null`` gives it back to its schedule."""
        _params(request)
        link = self._link(name)
        body = _json_body(request)
        if not isinstance(body, dict) or set(body) != {"up"} or body["up"] not in (True, False, None):
            raise ApiError(400, 'give {"up": true}, {"up": false} or {"up": null} (back to its schedule)')
        link.set(body["up"])
        return Response(200, link.describe())

    def faults(self, request: server.Request) -> Response:
        _params(request)
        return Response(200, [fault.describe() for fault in self.lab.faults.faults])

    def fault(self, request: server.Request, key: str) -> Response:
        _params(request)
        return Response(200, self._fault(key).describe())

    def add_fault(self, request: server.Request) -> Response:
        _params(request)
        spec = self._fault_spec(_json_body(request))
        if spec.name and any(fault.name == spec.name for fault in self.lab.faults.faults):
            raise ApiError(
                409, f"there is a fault named {spec.name!r} already (PUT /api/faults/NAME replaces it)"
            )
        return Response(201, self.lab.faults.add(spec).describe())

    def put_fault(self, request: server.Request, name: str) -> Response:
        """Create or replace the fault called ``name`` (its counters start again)."""
        _params(request)
        body = _json_body(request)
        if isinstance(body, dict):
            if body.setdefault("name", name) != name:
                raise ApiError(400, f"the body names the fault {body['name']!r}, the path {name!r}")
        spec = self._fault_spec(body)
        replaced = [fault for fault in self.lab.faults.faults if fault.name == name]
        for fault in replaced:
            self.lab.faults.remove(fault)
        return Response(200 if replaced else 201, self.lab.faults.add(spec).describe())

    def delete_fault(self, request: server.Request, key: str) -> Response:
        _params(request)
        self.lab.faults.remove(self._fault(key))
        return Response(204)

    def events(self, request: server.Request) -> Response:
        since = _integer(_params(request, ("since",)), "since", 0, minimum=0)
        return Response(
            200, {"events": [event.as_dict() for event in list(self.lab.events) if event.id > since]}
        )

    def stream(self, request: server.Request) -> object:
        """Server-sent events: each lab event as ``id``, ``event: <kind>`` and ``data: <json>``.
        A client that reconnects says the last id it saw (``Last-Event-ID``, or
        ``since`` on its first connection) and is sent what it missed first."""
        since = _integer(_params(request, ("since",)), "since", None, minimum=0)
        last = (request.getHeader(b"last-event-id") or b"").strip()
        if last.isdigit():
            since = int(last)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # a buffering proxy in front would hold events back
        request.write(b"retry: 2000\n\n")  # the headers go now, and a lost client retries after 2 s
        if since is not None:
            for event in list(self.lab.events):
                if event.id > since:
                    request.write(sse_frame(event))
        self.streams.add(request)
        request.notifyFinish().addBoth(lambda _: self.streams.discard(request))
        return STREAM

    def reset(self, request: server.Request) -> defer.Deferred:
        _params(request)
        return _detached(self.lab.reset()).addCallback(lambda _: Response(200, {"reset": True}))

    # -- what the service drives -------------------------------------------------

    def publish(self, event: Event) -> None:
        """A lab event, to every open stream (a closed one has left the set already)."""
        if self.streams:
            frame = sse_frame(event)
            for request in list(self.streams):
                request.write(frame)

    def heartbeat(self) -> None:
        """A comment line: a browser ignores it; a proxy or NAT sees the stream alive."""
        for request in list(self.streams):
            request.write(b": heartbeat\n\n")

    def close(self) -> None:
        """End every stream and answer every wait (503): the server is stopping."""
        for request in list(self.streams):
            self.streams.discard(request)
            request.finish()
        for pending in list(self.waiting.values()):
            pending.cancel()


Handler = Callable[..., Any]

# (method, path with {placeholders}, handler); HEAD is answered as GET.
ROUTES: list[tuple[str, tuple[str, ...], Handler]] = [
    (method, tuple(path.split("/")), handler)
    for method, path, handler in [
        ("GET", "", LabAPI.page),
        ("GET", "metrics", LabAPI.metrics_page),
        ("GET", "api/lab", LabAPI.describe_lab),
        ("GET", "api/hosts", LabAPI.hosts),
        ("GET", "api/hosts/{host}", LabAPI.host),
        ("GET", "api/hosts/{host}/messages", LabAPI.messages),
        ("DELETE", "api/hosts/{host}/messages", LabAPI.delete_messages),
        ("GET", "api/hosts/{host}/messages/{id}", LabAPI.message),
        ("DELETE", "api/hosts/{host}/messages/{id}", LabAPI.delete_message),
        ("GET", "api/hosts/{host}/messages/{id}/raw", LabAPI.raw),
        ("GET", "api/hosts/{host}/messages/{id}/headers", LabAPI.headers),
        ("GET", "api/hosts/{host}/wait", LabAPI.wait),
        ("GET", "api/hosts/{host}/queue", LabAPI.queue),
        ("GET", "api/hosts/{host}/held", LabAPI.held),
        ("POST", "api/hosts/{host}/poll", LabAPI.poll),
        ("GET", "api/hosts/{host}/transcripts", LabAPI.transcripts),
        ("GET", "api/links", LabAPI.links),
        ("GET", "api/links/{link}", LabAPI.link),
        ("PUT", "api/links/{link}", LabAPI.set_link),
        ("GET", "api/faults", LabAPI.faults),
        ("POST", "api/faults", LabAPI.add_fault),
        ("GET", "api/faults/{fault}", LabAPI.fault),
        ("PUT", "api/faults/{fault}", LabAPI.put_fault),
        ("DELETE", "api/faults/{fault}", LabAPI.delete_fault),
        ("GET", "api/events", LabAPI.events),
        ("GET", "api/events/stream", LabAPI.stream),
        ("POST", "api/reset", LabAPI.reset),
    ]
]


def _match_path(pattern: tuple[str, ...], path: tuple[str, ...]) -> list[str] | None:
    """The values of the pattern's placeholders in ``path``, or None if it is not this route."""
    if len(pattern) != len(path):
        return None
    arguments = []
    for want, got in zip(pattern, path, strict=True):
        if want.startswith("{"):
            if not got:
                return None
            arguments.append(got)
        elif want != got:
            return None
    return arguments


def _internal_error() -> Response:
    return Response(500, {"error": "internal error: the lab's log has the details"})


def _same_origin(request: server.Request) -> None:
    """A browser says where a page's request comes from; one from another site's page
    must not change the lab (a form can POST anywhere without asking)."""
    origin = request.getHeader(b"origin")
    if origin is not None and origin.partition(b"://")[2] != (request.getHeader(b"host") or b""):
        raise ApiError(403, "refused: a request from a page of another site (its Origin)")


def _params(request: server.Request, known: tuple[str, ...] = ()) -> dict[str, str]:
    """The query's parameters (the last of a repeated one); an unknown one is a 400, so a
    typo is not silently a wait for anything."""
    try:
        pairs = parse_qsl(urlsplit(request.uri.decode("utf-8")).query, keep_blank_values=True)
    except UnicodeDecodeError:
        raise ApiError(400, "the query is not UTF-8") from None
    params = dict(pairs)
    unknown = sorted(set(params) - set(known))
    if unknown:
        allowed = f"known here: {', '.join(known)}" if known else "none are known here"
        raise ApiError(400, f"unknown parameter {unknown[0]!r} ({allowed})")
    return params


def _integer(params: dict[str, str], name: str, default: Any, minimum: int) -> Any:
    if name not in params:
        return default
    text = params[name].strip()
    if not text.isdigit() or int(text) < minimum:
        raise ApiError(400, f"{name}={params[name]!r}: give a whole number, at least {minimum}")
    return int(text)


def _seconds(params: dict[str, str], name: str, default: float, limit: float) -> float:
    if name not in params:
        return default
    try:
        value = float(params[name])
    except ValueError:
        value = math.nan
    if not 0 < value <= limit:  # nan fails too
        raise ApiError(400, f"{name}={params[name]!r}: give seconds, more than 0 and at most {limit:g}")
    return value


def _message_match(params: dict[str, str]) -> Callable[[Message], bool]:
    """The query's match parameters as one predicate: globs on headers and the mailbox,
    and ``contains`` as text the raw message holds."""
    by_fields = matcher({name: params[name] for name in MATCH_FIELDS if name in params} or None)
    if "contains" not in params:
        return by_fields
    contains = matcher(params["contains"])
    return lambda message: by_fields(message) and contains(message)


def _headers(message: Message) -> list[list[str]]:
    return [[name, str(value)] for name, value in message.parsed.items()]


def _json_body(request: server.Request) -> Any:
    request.content.seek(0)
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, f"the body is over {MAX_BODY} octets")
    if not data.strip():
        raise ApiError(400, "a JSON body is needed")
    try:
        return json.loads(data)
    except ValueError as e:  # UnicodeDecodeError is one too
        raise ApiError(400, f"the body is not JSON: {e}") from None


def _detached(source: defer.Deferred) -> defer.Deferred:
    """A Deferred with ``source``'s result that leaves ``source`` as it was: a poll's
    Deferred is shared with the lab's own callers, and cancelling an answer (its
    client went away) must not cancel the lab's work (a reset half done)."""
    copy: defer.Deferred = defer.Deferred()

    def forward(result: Any) -> Any:
        if copy.called:
            pass  # cancelled: its client went away
        elif isinstance(result, Failure):
            copy.errback(result)
        else:
            copy.callback(result)
        return result

    source.addBoth(forward)
    return copy


def sse_frame(event: Event) -> bytes:
    data = json.dumps(event.as_dict(), default=str)  # one line: JSON escapes line ends in strings
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


@cache
def status_page() -> bytes:
    """The page, shipped beside this module (``setup.cfg``'s package_data)."""
    return resources.files(__package__).joinpath("status.html").read_bytes()


class _LinkCollector:
    """``smtppeer_lab_link_up{link, source, target}``: 1 while a link is up, read at scrape time."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "smtppeer_lab_link_up",
            "1 while the link is up, 0 while down",
            labels=["link", "source", "target"],
        )
        for name, link in sorted(self.lab.links.items()):
            family.add_metric([name, link.spec.source, link.spec.target], 1.0 if link.up else 0.0)
        yield family

    def describe(self) -> list[Metric]:
        return []


class LabWeb(HTTPService):
    """The lab's web server as a service: ``port`` and ``url`` once it listens."""

    def __init__(self, lab: Lab, endpoint: str | None = None, *, heartbeat: float = HEARTBEAT) -> None:
        self.lab = lab
        self.metrics = Metrics()
        self.metrics.registry.register(_LinkCollector(lab))
        self.faults_fired = Counter(
            "smtppeer_lab_faults_fired",
            "Faults that struck, per fault",
            ["host", "fault"],
            registry=self.metrics.registry,
        )
        self.api = LabAPI(lab, self.metrics)
        super().__init__(endpoint or lab.topology.http or DEFAULT_ENDPOINT, self.api, lab.reactor)
        self._heartbeat = task.LoopingCall(self.api.heartbeat)
        self._heartbeat.clock = lab.reactor  # real time, whatever clock the lab's schedules use
        self._heartbeat_interval = heartbeat
        self._unwatch: list[Callable[[], object]] = []
        self._write_later = None
        self._lab_file: str | None = None

    def startService(self) -> None:  # noqa: N802 -- Twisted's name
        self.lab.build()  # the hosts exist (their services may start after this one)
        super().startService()
        for name, host in self.lab.hosts.items():
            self._unwatch.append(self.metrics.watch(name, host.assembly.activity, host.assembly.runner))
        self._unwatch.append(self.lab.watch(self._event))
        self._heartbeat.start(self._heartbeat_interval, now=False)
        self._write_lab_file()
        log.info(
            "{line}",
            line=f"lab {self.lab.topology.source}: status page and API at {self.url or self.endpoint}",
        )

    def _event(self, event: Event) -> None:
        if event.kind == "fault":
            self.faults_fired.labels(str(event.host), str(event.fields.get("fault"))).inc()
        self.api.publish(event)

    def _write_lab_file(self) -> None:
        """``lab.json``, once every host listens (they may start just after this service)."""
        self._write_later = None
        if not self.running:
            return
        if not all(
            served.port is not None for h in self.lab.hosts.values() for served in h.assembly.listeners
        ):
            self._write_later = self.lab.reactor.callLater(0.01, self._write_lab_file)
            return
        about = {
            "http": self.url,
            "pid": os.getpid(),
            "hosts": {name: host.ports for name, host in self.lab.hosts.items()},
        }
        path = os.path.join(self.lab.data_dir, LAB_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(about, f, indent=2)
        os.replace(path + ".tmp", path)
        self._lab_file = path

    def closing(self) -> None:
        self.api.close()

    def stopService(self) -> defer.Deferred:  # noqa: N802 -- Twisted's name
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._write_later is not None and self._write_later.active():
            self._write_later.cancel()
        self._write_later = None
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch = []
        if self._lab_file is not None:  # no longer the way to a running lab
            try:
                os.remove(self._lab_file)
            except FileNotFoundError:
                pass
            self._lab_file = None
        return super().stopService()


def web_service(lab: Lab, endpoint: str | None = None, *, heartbeat: float = HEARTBEAT) -> LabWeb:
    """The lab's HTTP API and status page on ``endpoint`` (default: the topology's
    ``[lab] http``, else a free loopback port).  Start it with (or after) the lab;
    its ``port`` is the bound port once it has started."""
    return LabWeb(lab, endpoint, heartbeat=heartbeat)


__all__ = ["ApiError", "LabAPI", "LabWeb", "sse_frame", "status_page", "web_service"]
