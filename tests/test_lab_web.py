"""The lab's HTTP API on a real lab in this process, over real loopback sockets.

Every route of ``smtppeer/lab/web.py`` is called as a client would (urllib in
a thread, or a raw Twisted client for the event stream), and every error
status checked: a request can neither crash the lab nor leave a socket or a
timer behind (the clean-reactor check runs after each test).  No assertion
is about time: waits are bounded, and a timeout only says what was missing.
"""

from __future__ import annotations

import json
import smtplib
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message as EmailHeaders
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, protocol, reactor, task, threads

from smtppeer.lab.lab import Lab
from smtppeer.lab.topology import loads_topology
from smtppeer.lab.web import LabWeb, web_service

from .test_lab import TWO_SITES

TOPOLOGY = (
    TWO_SITES
    + """
[[faults]]
name = "full"
host = "provider"
phase = "rcpt"
recipient = "full@*"
reply = "452 4.2.2 Mailbox full"
"""
)


@dataclass
class Answer:
    status: int
    headers: EmailHeaders
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    """One blocking request (run in a thread: the reactor serves it meanwhile)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as e:
        with e:
            return Answer(e.code, e.headers, e.read())


def send(
    address: tuple[str, int], sender: str, recipients: list[str], subject: str, text: str = "hello"
) -> dict:
    with smtplib.SMTP(*address, timeout=30) as client:
        message = f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\n{text}\r\n"
        return client.sendmail(sender, recipients, message.encode())


async def eventually(predicate, timeout: float = 20.0, what: str = "the condition") -> Any:
    """``predicate()`` once it is true, looked at every 20 ms for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout:g}s")
        await task.deferLater(reactor, 0.02, lambda: None)
    return value


class Client:
    def __init__(self, web: LabWeb) -> None:
        self.web = web

    def __call__(self, method: str, path: str, body: Any = None, **headers: str) -> defer.Deferred[Answer]:
        return threads.deferToThread(http, method, self.web.url + path, body, headers)

    def get(self, path: str, **headers: str) -> defer.Deferred[Answer]:
        return self("GET", path, **headers)


@pytest_twisted.async_yield_fixture
async def lab(tmp_path):
    lab = Lab(loads_topology(TOPOLOGY, "web.toml"), data_dir=str(tmp_path / "lab"))
    await lab.start()
    try:
        yield lab
    finally:
        await lab.stop()


@pytest_twisted.async_yield_fixture
async def web(lab):
    service = web_service(lab, "tcp:0:interface=127.0.0.1", heartbeat=0.2)
    service.startService()
    try:
        yield service
    finally:
        await service.stopService()


@pytest.fixture
def api(web):
    return Client(web)


async def mail(lab: Lab, host: str, recipients: list[str], subject: str, sender: str = "s@else.test", **kw):
    return await threads.deferToThread(send, lab.hosts[host].smtp, sender, recipients, subject, **kw)


# -- the lab, its hosts ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_lab_and_its_hosts(lab, web, api):
    answer = await api.get("/api/lab")
    assert answer.status == 200 and answer.content_type == "application/json"
    described = answer.json()
    assert set(described["hosts"]) == {"provider", "alpha", "beta"}
    assert set(described["links"]) == {"alpha-provider", "beta-provider", "provider-alpha", "provider-beta"}
    assert [f["name"] for f in described["faults"]] == ["full"]

    hosts = (await api.get("/api/hosts")).json()
    assert [h["name"] for h in hosts] == ["provider", "alpha", "beta"]
    alpha = (await api.get("/api/hosts/alpha/")).json()  # a trailing slash is the same path
    assert alpha["role"] == "dialup" and alpha["provider"] == "provider"
    assert alpha["ports"]["smtp"] == lab.hosts["alpha"].smtp[1]

    missing = await api.get("/api/hosts/gamma")
    assert missing.status == 404 and missing.content_type == "application/json"
    assert missing.json() == {"error": "no host named 'gamma' (hosts: provider, alpha, beta)"}

    # how the CLI finds a running lab
    about = json.loads((Path(lab.data_dir) / "lab.json").read_text())
    assert about["http"] == web.url == f"http://127.0.0.1:{web.port.getHost().port}"
    assert about["hosts"]["provider"]["smtp"] == lab.hosts["provider"].smtp[1]


@pytest_twisted.ensureDeferred
async def test_lab_json_waits_for_the_hosts_and_goes_at_stop(tmp_path):
    """Started as the lab's child before the lab has built its hosts, the web
    server writes lab.json once they listen; at stop it removes it."""
    lab = Lab(loads_topology(TOPOLOGY, "web.toml"), data_dir=str(tmp_path / "lab"))
    web_service(lab).setServiceParent(lab)  # the topology's http: a free loopback port
    await lab.start()
    path = Path(lab.data_dir) / "lab.json"
    try:
        about = json.loads(await eventually(lambda: path.exists() and path.read_text(), what="lab.json"))
        assert {name: ports["smtp"] for name, ports in about["hosts"].items()} == {
            name: host.smtp[1] for name, host in lab.hosts.items()
        }
        answer = await threads.deferToThread(http, "GET", about["http"] + "/api/hosts/beta")
        assert answer.json()["name"] == "beta"
    finally:
        await lab.stop()
    assert not path.exists()


# -- messages ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_messages_list_match_show_and_delete(lab, api):
    await mail(lab, "provider", ["ann@provider.test"], "First note", sender="x@else.test")
    await mail(
        lab, "provider", ["bob@provider.test"], "Second note", sender="y@else.test", text="the magic word"
    )
    await lab.wait_for_messages("provider", 2, timeout=20)

    listed = (await api.get("/api/hosts/provider/messages")).json()
    assert [m["subject"] for m in listed] == ["First note", "Second note"]
    assert {m["mailbox"] for m in listed} == {"ann@provider.test", "bob@provider.test"}
    for query, subjects in [
        ("subject=second*", ["Second note"]),
        ("subject=*NOTE", ["First note", "Second note"]),
        ("mailbox=ann@*", ["First note"]),
        ("from=x@*", ["First note"]),
        ("to=bob@provider.test", ["Second note"]),
        ("contains=magic%20word", ["Second note"]),
        ("contains=magic&subject=first*", []),
    ]:
        found = (await api.get(f"/api/hosts/provider/messages?{query}")).json()
        assert [m["subject"] for m in found] == subjects, query
    assert (await api.get("/api/hosts/alpha/messages")).json() == []

    first = listed[0]["id"]
    shown = (await api.get(f"/api/hosts/provider/messages/{first}")).json()
    assert shown["subject"] == "First note" and shown["received"] == 1
    assert ["Subject", "First note"] in shown["headers"]
    assert [name for name, _ in shown["headers"]][:2] == ["Return-Path", "Received"]
    headers = await api.get(f"/api/hosts/provider/messages/{first}/headers")
    assert headers.json() == shown["headers"]
    raw = await api.get(f"/api/hosts/provider/messages/{first}/raw")
    assert raw.status == 200 and raw.content_type == "message/rfc822"
    assert raw.body == lab.hosts["provider"].message(first).raw and b"Subject: First note\r\n" in raw.body

    for path in (
        "/api/hosts/provider/messages/nope",
        "/api/hosts/provider/messages/nope/raw",
        "/api/hosts/x/messages",
    ):
        assert (await api.get(path)).status == 404, path
    unknown = await api.get("/api/hosts/provider/messages?subjet=x")
    assert unknown.status == 400
    assert (
        unknown.json()["error"]
        == "unknown parameter 'subjet' (known here: subject, mailbox, from, to, contains)"
    )

    deleted = await api("DELETE", f"/api/hosts/provider/messages/{first}")
    assert deleted.status == 204 and deleted.body == b""
    assert (await api("DELETE", f"/api/hosts/provider/messages/{first}")).status == 404
    assert (await api("DELETE", "/api/hosts/provider/messages")).json() == {"deleted": 1}
    assert lab.hosts["provider"].messages() == []


# -- the long-poll -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wait_answers_as_the_mail_lands(lab, web, api):
    waiting = api.get("/api/hosts/provider/wait?count=1&subject=late*&timeout=120")
    await eventually(lambda: web.api.waiting, what="the wait is open")
    await mail(lab, "provider", ["u@provider.test"], "early bird")  # does not match: still waiting
    assert not waiting.called
    await mail(lab, "provider", ["u@provider.test"], "late news")
    answer = await waiting
    assert answer.status == 200
    assert [m["subject"] for m in answer.json()["messages"]] == ["late news"]
    assert not web.api.waiting


@pytest_twisted.ensureDeferred
async def test_wait_already_satisfied_and_timing_out(lab, api):
    await mail(lab, "provider", ["u@provider.test"], "one")
    await lab.wait_for_messages("provider", 1, timeout=20)
    now = await api.get("/api/hosts/provider/wait")  # count 1: there already
    assert now.status == 200 and [m["subject"] for m in now.json()["messages"]] == ["one"]
    late = await api.get("/api/hosts/provider/wait?count=2&timeout=0.3&mailbox=u@provider.test")
    assert late.status == 504 and late.content_type == "application/json"
    assert late.json()["error"] == "provider has 1 matching messages, not 2, after 0.3s"
    assert [m["subject"] for m in late.json()["messages"]] == ["one"]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("count=0", "count='0': give a whole number, at least 1"),
        ("count=two", "count='two': give a whole number, at least 1"),
        ("timeout=0", "timeout='0': give seconds, more than 0 and at most 300"),
        ("timeout=301", "timeout='301': give seconds, more than 0 and at most 300"),
        ("timeout=nan", "timeout='nan': give seconds, more than 0 and at most 300"),
        (
            "since=3",
            "unknown parameter 'since' (known here: subject, mailbox, from, to, contains, count, timeout)",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wait_refuses_bad_parameters(api, query, error):
    answer = await api.get(f"/api/hosts/provider/wait?{query}")
    assert (answer.status, answer.json()) == (400, {"error": error})


@pytest_twisted.ensureDeferred
async def test_a_wait_whose_client_goes_away_is_cancelled(lab, web):
    watchers = len(lab._watchers)
    client = socket.create_connection(("127.0.0.1", web.port.getHost().port))
    client.sendall(b"GET /api/hosts/provider/wait?timeout=200 HTTP/1.1\r\nHost: lab\r\n\r\n")
    await eventually(lambda: web.api.waiting, what="the wait is open")
    assert len(lab._watchers) == watchers + 1
    client.close()
    await eventually(lambda: not web.api.waiting, what="the wait is gone")
    assert len(lab._watchers) == watchers  # and its 200 s timer: the clean-reactor check


# -- queues, polls, transcripts ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_queue_held_poll_and_transcripts(lab, api):
    held = lab.wait_for_event("received", host="provider", timeout=20)
    await mail(lab, "alpha", ["b@beta.test"], "for beta", sender="a@alpha.test")
    await held
    [entry] = (await api.get("/api/hosts/provider/held")).json()
    assert entry["from"] == "a@alpha.test" and entry["recipients"][0]["hold"] == "beta"
    assert (await api.get("/api/hosts/provider/held?peer=beta")).json() == [entry]
    assert (await api.get("/api/hosts/provider/held?peer=alpha")).json() == []
    assert (await api.get("/api/hosts/provider/queue")).json() == [entry]
    assert (await api.get("/api/hosts/beta/queue")).json() == []

    refused = await api("POST", "/api/hosts/provider/poll")
    assert (refused.status, refused.json()) == (
        409,
        {"error": "provider polls nobody (only a dial-up host polls)"},
    )
    assert (await api("POST", "/api/hosts/beta/poll?peer=gamma")).status == 404
    polled = await api("POST", "/api/hosts/beta/poll")
    assert polled.status == 200
    outcome = polled.json()
    assert (outcome["ok"], outcome["received"], outcome["turned"], outcome["peer"]) == (
        True,
        1,
        True,
        "provider",
    )
    assert outcome["line"].startswith("poll provider: sent 0 messages to 0 recipients, received 1, turned")
    await lab.wait_for_messages("beta", 1, timeout=20)

    transcripts = (await api.get("/api/hosts/provider/transcripts")).json()
    assert "C: TURN" in transcripts[-1]["text"]  # beta's poll: the newest session, last
    assert [t["id"] for t in transcripts] == sorted(t["id"] for t in transcripts)


# -- links ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_link_set_down_and_back_through_the_api(lab, api):
    links = (await api.get("/api/links")).json()
    assert {link["name"]: link["up"] for link in links} == {
        "alpha-provider": True, "beta-provider": True, "provider-alpha": True, "provider-beta": True,
    }  # fmt: skip
    assert (await api.get("/api/links/alpha-provider")).json()["to"] == "provider"

    down = await api("PUT", "/api/links/alpha-provider", {"up": False})
    assert down.status == 200 and (down.json()["up"], down.json()["forced"]) == (False, False)
    deferred = lab.wait_for_event("deferred", host="alpha", timeout=20)
    await mail(lab, "alpha", ["p@provider.test"], "through the link", sender="a@alpha.test")
    assert (await deferred).fields["recipient"] == "p@provider.test"  # alpha cannot reach its provider
    assert lab.hosts["provider"].messages() == []

    back = await api("PUT", "/api/links/alpha-provider", {"up": None})  # its schedule: up, and alpha polls
    assert (back.json()["up"], back.json()["forced"]) == (True, None)
    [message] = await lab.wait_for_messages("provider", 1, timeout=20)
    assert message.subject == "through the link"


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{up: false}", 400), ({"up": "no"}, 400), ({}, 400), ({"up": True, "more": 1}, 400), (b"", 400)],
)
@pytest_twisted.ensureDeferred
async def test_a_link_refuses_bad_bodies(api, body, status):
    answer = await api("PUT", "/api/links/alpha-provider", body)
    assert answer.status == status and "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_unknown_links_and_methods(api):
    for method, body in (("GET", None), ("PUT", {"up": False})):
        answer = await api(method, "/api/links/alpha-nowhere", body)
        assert answer.status == 404 and answer.json()["error"].startswith("no link named 'alpha-nowhere'")
    answer = await api("DELETE", "/api/links/alpha-provider")
    assert answer.status == 405 and answer.headers["allow"] == "GET, PUT"
    assert answer.json() == {"error": "DELETE is not allowed here: GET, PUT"}


# -- faults --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_fault_posted_fires_then_is_replaced_and_deleted(lab, api):
    fault = {"name": "busy", "host": "provider", "phase": "rcpt", "reply": "452 4.2.2 Busy"}
    created = await api("POST", "/api/faults", {**fault, "recipient": "busy@*"})
    assert created.status == 201
    assert {k: created.json()[k] for k in ("name", "host", "phase", "action", "reply", "fired")} == {
        **fault, "action": "reply", "fired": 0,
    }  # fmt: skip
    assert (await api("POST", "/api/faults", fault)).status == 409  # one name, one fault

    fired = lab.wait_for_event("fault", host="provider", timeout=20)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await mail(lab, "provider", ["busy@provider.test"], "busy?")
    assert refused.value.recipients["busy@provider.test"] == (452, b"4.2.2 Busy")
    assert (await fired).fields["fault"] == "busy"
    assert (await api.get("/api/faults/busy")).json()["fired"] == 1
    assert [f["name"] for f in (await api.get("/api/faults")).json()] == ["full", "busy"]

    replaced = await api(
        "PUT", "/api/faults/busy", {**fault, "recipient": "busy@*", "reply": "550 5.2.1 Gone"}
    )
    assert replaced.status == 200 and (replaced.json()["reply"], replaced.json()["fired"]) == (
        "550 5.2.1 Gone",
        0,
    )
    created = await api("PUT", "/api/faults/slow", {"host": "alpha", "phase": "ehlo", "delay": "1s"})
    assert created.status == 201 and created.json()["name"] == "slow"
    mismatch = await api(
        "PUT", "/api/faults/slow", {"name": "other", "host": "alpha", "phase": "ehlo", "delay": 1}
    )
    assert (mismatch.status, mismatch.json()) == (
        400,
        {"error": "the body names the fault 'other', the path 'slow'"},
    )

    assert (await api("DELETE", "/api/faults/busy")).status == 204
    assert (await api("DELETE", "/api/faults/busy")).status == 404
    slow_id = (await api.get("/api/faults/slow")).json()["id"]
    assert (await api("DELETE", f"/api/faults/{slow_id}")).status == 204
    assert [f["name"] for f in (await api.get("/api/faults")).json()] == ["full"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"host": "gamma", "phase": "rcpt", "reply": "452"}, 'request: host: no host named "gamma"'),
        ({"host": "alpha", "phase": "rcpt"}, 'request: say what happens: "reply", "delay", "disconnect" or'),
        (
            {"host": "alpha", "phase": "rcpt", "reply": "250 ok"},
            'request: reply: "250 ok" is not a reply such as',
        ),
        ({"host": "alpha", "phase": "rcpt", "reply": "452", "colour": 1}, "request: colour: unknown key"),
        (["host", "alpha"], "request: expected a table, got an array"),
        (b'{"host": ', "the body is not JSON: Expecting value: line 1 column 10 (char 9)"),
        (b"\xff\xfe{", "the body is not JSON:"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_fault_is_a_400_with_the_topology_files_reason(api, body, error):
    answer = await api("POST", "/api/faults", body)
    assert answer.status == 400 and answer.json()["error"].startswith(error), answer.json()
    assert "\n" not in answer.json()["error"]


# -- events --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_since_an_id(lab, api):
    await api("PUT", "/api/links/beta-provider", {"up": False})
    await api("PUT", "/api/links/beta-provider", {"up": True})
    events = (await api.get("/api/events")).json()["events"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    links = [(e["kind"], e["link"]) for e in events if "link" in e]
    assert links == [("link-down", "beta-provider"), ("link-up", "beta-provider")]
    down = next(e["id"] for e in events if e["kind"] == "link-down")
    later = (await api.get(f"/api/events?since={down}")).json()["events"]
    earlier = [e for e in events if e["id"] > down]  # and maybe more since: beta polls when its link is up
    assert later[: len(earlier)] == earlier and "link-up" in [e["kind"] for e in later]
    assert (await api.get("/api/events?since=x")).status == 400


class EventStream(protocol.Protocol):
    """A raw HTTP/1.0 client of the event stream (no chunking: the bytes are the stream)."""

    def __init__(self, path: str, last_event_id: int | None = None) -> None:
        self.path, self.last_event_id = path, last_event_id
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        extra = f"Last-Event-ID: {self.last_event_id}\r\n" if self.last_event_id is not None else ""
        self.transport.write(f"GET {self.path} HTTP/1.0\r\nHost: lab\r\n{extra}\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(None)

    @property
    def head(self) -> str:
        return self.received.partition(b"\r\n\r\n")[0].decode()

    @property
    def frames(self) -> list[list[str]]:
        body = self.received.partition(b"\r\n\r\n")[2].decode()
        return [frame.split("\n") for frame in body.split("\n\n")[:-1]]

    @property
    def events(self) -> list[dict]:
        found = []
        for frame in self.frames:
            fields = dict(line.split(": ", 1) for line in frame if not line.startswith(":"))
            if "data" in fields:
                found.append(
                    {"id": int(fields["id"]), "event": fields["event"], **json.loads(fields["data"])}
                )
        return found

    def close(self) -> defer.Deferred:
        self.transport.loseConnection()
        return self.closed


async def open_stream(web: LabWeb, path: str = "/api/events/stream", last_event_id: int | None = None):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", web.port.getHost().port)
    stream = await endpoints.connectProtocol(endpoint, EventStream(path, last_event_id))
    await eventually(lambda: b"retry: 2000" in stream.received, what="the stream's start")
    return stream


@pytest_twisted.ensureDeferred
async def test_the_event_stream_sends_events_heartbeats_and_what_was_missed(lab, web, api):
    stream = await open_stream(web)
    try:
        assert "200 OK" in stream.head and "text/event-stream" in stream.head.lower()
        await api("PUT", "/api/links/alpha-provider", {"up": False})
        [down] = await eventually(
            lambda: [e for e in stream.events if e["kind"] == "link-down"], what="an event on the stream"
        )
        assert (down["event"], down["kind"], down["link"], down["host"]) == (
            "link-down", "link-down", "alpha-provider", None,
        )  # fmt: skip
        await mail(lab, "provider", ["u@provider.test"], "streamed")
        received = await eventually(
            lambda: [e for e in stream.events if e["kind"] == "received"], what="a received event"
        )
        assert received[0]["host"] == "provider" and received[0]["recipients"] == ["u@provider.test"]
        await eventually(lambda: [f for f in stream.frames if f == [": heartbeat"]], what="a heartbeat")
    finally:
        await stream.close()
    await eventually(lambda: not web.api.streams, what="the closed stream forgotten")

    # a client that comes back says the last id it saw, and is sent what it missed first
    again = await open_stream(web, last_event_id=down["id"])
    since = await open_stream(web, f"/api/events/stream?since={down['id']}")
    try:
        for replay in (again, since):
            missed = await eventually(lambda r=replay: r.events, what="the missed events")
            assert (
                missed[0]["id"] == down["id"] + 1 and missed[0]["id"] == lab.events[-1].id - len(missed) + 1
            )
    finally:
        await again.close()
        await since.close()


@pytest_twisted.ensureDeferred
async def test_stopping_ends_open_streams_and_waits(lab, web):
    stream = await open_stream(web)
    waiting = threads.deferToThread(http, "GET", web.url + "/api/hosts/beta/wait?timeout=200")
    await eventually(lambda: web.api.waiting, what="the wait is open")
    await web.stopService()
    await stream.closed  # the server closed it
    answer = await waiting
    assert (answer.status, answer.json()) == (503, {"error": "the lab's web server is stopping"})
    assert not web.api.streams and not web.api.waiting


# -- reset, the page, errors ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reset(lab, api):
    await mail(lab, "provider", ["u@provider.test"], "before")
    await lab.wait_for_messages("provider", 1, timeout=20)
    await api("PUT", "/api/links/alpha-provider", {"up": False})
    await api("POST", "/api/faults", {"host": "alpha", "phase": "ehlo", "delay": 1})
    before = lab.events[-1].id
    answer = await api("POST", "/api/reset")
    assert (answer.status, answer.json()) == (200, {"reset": True})
    assert (await api.get("/api/hosts/provider/messages")).json() == []
    assert (await api.get("/api/links/alpha-provider")).json()["up"] is True
    assert [f["name"] for f in (await api.get("/api/faults")).json()] == ["full"]
    # the events before it are gone (alpha polls when its link comes back: that is after)
    assert all(e["id"] > before for e in (await api.get("/api/events")).json()["events"])


@pytest_twisted.ensureDeferred
async def test_the_status_page_is_served(api):
    page = await api.get("/")
    assert page.status == 200 and page.content_type == "text/html; charset=utf-8"
    assert b"new EventSource(" in page.body and b"/api/events/stream" in page.body
    assert b"<link" not in page.body and b"src=" not in page.body  # self-contained


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/favicon.ico", 404, "nothing at /favicon.ico"),
        ("GET", "/api/nothing", 404, "nothing at /api/nothing"),
        ("GET", "/api/hosts/provider/nothing", 404, "nothing at /api/hosts/provider/nothing"),
        ("GET", "/api/hosts/%ff", 400, "the path is not UTF-8"),
        ("POST", "/api/lab", 405, "POST is not allowed here: GET"),
        ("GET", "/api/lab?x=1", 400, "unknown parameter 'x' (none are known here)"),
        ("GET", "/api/faults/nope", 404, "no fault with the id or name 'nope'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests(api, method, path, status, error):
    answer = await api(method, path)
    assert (answer.status, answer.content_type, answer.json()) == (
        status,
        "application/json",
        {"error": error},
    )


@pytest_twisted.ensureDeferred
async def test_a_page_of_another_site_cannot_change_the_lab(lab, api):
    other = await api("POST", "/api/reset", None, Origin="http://evil.example")
    assert (other.status, other.json()) == (
        403,
        {"error": "refused: a request from a page of another site (its Origin)"},
    )
    own = await api("PUT", "/api/links/alpha-provider", {"up": False}, Origin=api.web.url)
    assert own.status == 200
    assert (await api.get("/api/lab", Origin="http://evil.example")).status == 200  # reading is not changing


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_limit_is_refused(api):
    answer = await api("POST", "/api/faults", b" " * (1024 * 1024 + 1))
    assert (answer.status, answer.json()) == (413, {"error": "the body is over 1048576 octets"})


@pytest_twisted.ensureDeferred
async def test_a_bug_is_a_500_without_a_traceback_and_the_lab_goes_on(lab, api, monkeypatch):
    def broken():
        raise RuntimeError("secret detail")

    monkeypatch.setattr(lab, "describe", broken)
    answer = await api.get("/api/lab")
    assert (answer.status, answer.json()) == (500, {"error": "internal error: the lab's log has the details"})
    assert b"secret" not in answer.body and b"Traceback" not in answer.body
    assert (await api.get("/api/hosts/alpha")).status == 200


# -- metrics -------------------------------------------------------------------------------


class Scrape:
    """A scrape parsed by prometheus_client's own parser: ``scrape("name", label=value)``."""

    def __init__(self, text: str) -> None:
        self.values = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.values[(name, frozenset(labels.items()))]


@pytest_twisted.ensureDeferred
async def test_metrics_of_a_lab(lab, api):
    # delivered by alpha to the provider, held there for beta, released to it by a poll
    landed = lab.wait_for_messages("beta", 1, timeout=20)
    await mail(lab, "alpha", ["b@beta.test"], "hop", sender="a@alpha.test")
    await lab.wait_until(lambda: lab.hosts["provider"].held("beta"), what="held for beta")
    held = Scrape((await api.get("/metrics")).body.decode())
    assert held("smtppeer_queue_messages", host="provider", state="held") == 1
    assert held("smtppeer_queue_messages", host="provider", state="pending") == 0
    await api("POST", "/api/hosts/beta/poll")
    await landed
    # refused: relaying denied; and a fault, which is not a refusal of the policy
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await mail(lab, "provider", ["x@elsewhere.test"], "relay?")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await mail(lab, "provider", ["full@provider.test"], "full?")
    # failed for good at the next hop: bounced to the sender
    await api(
        "POST", "/api/faults", {"host": "provider", "phase": "rcpt", "recipient": "gone@*", "reply": "550"}
    )
    bounced = lab.wait_for_event("bounced", host="alpha", timeout=20)
    await mail(lab, "alpha", ["gone@provider.test"], "gone", sender="a@alpha.test")
    await bounced
    await api("PUT", "/api/links/beta-provider", {"up": False})

    scrape = await api.get("/metrics")
    assert scrape.status == 200 and scrape.content_type == "text/plain; version=0.0.4; charset=utf-8"
    m = Scrape(scrape.body.decode())
    assert m("smtppeer_received_total", host="alpha") == 2
    assert m("smtppeer_received_total", host="provider") == 1
    assert m("smtppeer_received_total", host="beta") == 1
    assert m("smtppeer_refused_total", host="provider", stage="rcpt") == 1
    assert m("smtppeer_deliveries_total", host="alpha", outcome="delivered") == 1
    assert m("smtppeer_deliveries_total", host="provider", outcome="delivered") == 1
    assert m("smtppeer_deliveries_total", host="alpha", outcome="failed") == 1
    assert m("smtppeer_bounces_total", host="alpha") == 1
    assert m("smtppeer_bounces_total", host="provider") == 0
    assert m("smtppeer_delivery_latency_seconds_count", host="alpha") == 1  # delivered ones only
    assert m("smtppeer_delivery_latency_seconds_bucket", host="alpha", le="+Inf") == 1
    polls = [e for e in lab.events if e.kind == "polled" and e.host == "beta"]  # one at start, and ours
    assert m("smtppeer_polls_total", host="beta", peer="provider", result="ok") == len(polls)
    releases = [e for e in lab.events if e.kind == "released" and e.fields["peer"] == "beta"]
    assert m("smtppeer_releases_total", host="provider", peer="beta", verb="TURN") == len(releases)
    assert m("smtppeer_released_messages_total", host="provider", peer="beta") == 1
    assert m("smtppeer_queue_messages", host="provider", state="held") == 0
    assert m("smtppeer_lab_link_up", link="alpha-provider", source="alpha", target="provider") == 1
    assert m("smtppeer_lab_link_up", link="beta-provider", source="beta", target="provider") == 0
    assert m("smtppeer_lab_faults_fired_total", fault="full", host="provider") == 1

    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    openmetrics = await api.get("/metrics", Accept=accept)
    assert openmetrics.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert openmetrics.body.endswith(b"# EOF\n")
