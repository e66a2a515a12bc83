"""``smtppeer lab ...``: check a topology, and drive a running lab from a shell.

``check`` reads a topology without starting anything.  The others talk to a
running lab's HTTP API, found from ``--api URL``, or from the ``lab.json``
a lab writes into its data directory (``--data-dir`` or ``--topology``):
``wait`` exits 0 once a host has the messages asked for (1 on timeout), so a
CI script can wait for mail; ``link`` sets a link up or down or gives it
back to its schedule; ``status`` prints what the lab is doing.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from twisted.python import usage

from smtppeer.service.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, CommandOptions
from smtppeer.service.configfile import ConfigError

from .hosts import host_config
from .topology import Role, load_topology
from .web import WAIT_LIMIT  # what the API's long-poll allows

EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE: no lab answers there


class ApiOptions(CommandOptions):
    optParameters = [
        ["api", None, None, "The lab's HTTP API (http://127.0.0.1:PORT)"],
        ["data-dir", "d", None, "The lab's data directory (it holds lab.json, which names the API)"],
        ["topology", "t", None, "The lab's topology file (its data_dir holds lab.json)"],
    ]

    def api(self) -> str:
        if self["api"]:
            return self["api"].rstrip("/")
        data_dir = self["data-dir"]
        if data_dir is None and self["topology"]:
            data_dir = load_topology(self["topology"]).data_dir
        if data_dir is None:
            raise usage.UsageError("say where the lab is: --api URL, --data-dir DIR or --topology FILE")
        path = os.path.join(data_dir, "lab.json")
        try:
            with open(path) as f:
                return json.load(f)["http"].rstrip("/")
        except (OSError, ValueError, KeyError) as e:
            raise LabUnavailable(f"no running lab found through {path} ({e})") from None


class LabUnavailable(Exception):
    pass


def call(base: str, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """One request to the lab's API: ``(status, JSON answer)``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise LabUnavailable(f"the lab at {base} does not answer ({getattr(e, 'reason', e)})") from None
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode("utf-8", "replace")


# -- check ------------------------------------------------------------------------------


class CheckOptions(CommandOptions):
    synopsis = "FILE"
    longdesc = (
        "Read a lab's topology file and check it, and every host's configuration it means, without "
        "starting anything: print 'FILE: ok' and the hosts (exit status 0), or one line naming the "
        "file, the key and what is wrong (exit status 2)."
    )

    def parseArgs(self, file: str) -> None:  # noqa: N802 -- usage.Options' name
        self["file"] = file


def check(options: CheckOptions, out: TextIO, err: TextIO) -> int:
    try:
        topology = load_topology(options["file"])
        placeholders: dict[tuple[str, str, str], str] = {}

        def address(source: str, target: str, kind: str) -> str:  # a port of its own for each path
            return placeholders.setdefault(
                (source, target, kind), f"tcp:host=127.0.0.1:port={len(placeholders) + 1}"
            )

        for name in topology.hosts:  # each host's configuration, as the lab would write it
            host_config(topology, name, topology.data_dir or "lab-data", address)
    except ConfigError as e:
        print(e, file=err)
        return EXIT_CONFIG
    print(f"{options['file']}: ok", file=out)
    for host in topology.hosts.values():
        what = f"{host.role}, {', '.join(host.domains)}"
        if host.role == Role.DIALUP and host.poll is not None:
            what += f"; polls {host.provider} by {str(host.poll.method).upper()} every {host.poll.every:g}s"
        print(f"  host {host.name}: {what}", file=out)
    for link in topology.links.values():
        print(f"  link {link.name}: {link.source} -> {link.target}, {link.schedule.describe()}", file=out)
    for fault in topology.faults:
        print(f"  fault on {fault.host} at {fault.phase}: {fault.action}", file=out)
    return EXIT_OK


# -- wait -------------------------------------------------------------------------------


class WaitOptions(ApiOptions):
    synopsis = "HOST [options]"
    longdesc = (
        "Wait until HOST of a running lab has COUNT messages that match (in its Maildirs): exit "
        "status 0 and one line per message, or 1 when TIMEOUT seconds pass first."
    )
    optParameters = [
        ["count", "n", 1, "How many messages", int],
        ["timeout", None, 30.0, "Seconds to wait at most", float],
        ["subject", None, None, "Subject: matches this glob (case-insensitive)"],
        ["mailbox", None, None, "Delivered to a mailbox (user@domain) matching this glob"],
        ["from", None, None, "From: matches this glob"],
        ["to", None, None, "To: matches this glob"],
        ["contains", None, None, "The raw message contains this text"],
    ]

    def parseArgs(self, host: str) -> None:  # noqa: N802 -- usage.Options' name
        self["host"] = host

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        if self["count"] < 1:
            raise usage.UsageError("--count must be at least 1")
        if not 0 < self["timeout"] <= WAIT_LIMIT:
            raise usage.UsageError(f"--timeout must be more than 0 and at most {WAIT_LIMIT:g} seconds")


def wait(options: WaitOptions, out: TextIO, err: TextIO) -> int:
    query = {"count": options["count"], "timeout": options["timeout"]}
    for name in ("subject", "mailbox", "from", "to", "contains"):
        if options[name] is not None:
            query[name] = options[name]
    path = f"/api/hosts/{urllib.parse.quote(options['host'])}/wait?{urllib.parse.urlencode(query)}"
    status, answer = call(options.api(), "GET", path, timeout=options["timeout"] + 30)
    if status == 200:
        for message in answer["messages"]:
            print(f"{message['mailbox']}\t{message.get('subject') or ''}", file=out)
        return EXIT_OK
    print(f"smtppeer lab wait: {_error(answer, status)}", file=err)
    return EXIT_FAILED


def _error(answer: Any, status: int) -> str:
    return answer.get("error", str(answer)) if isinstance(answer, dict) else f"HTTP {status}: {answer}"


# -- link -------------------------------------------------------------------------------


class LinkOptions(ApiOptions):
    synopsis = "NAME up|down|schedule"
    longdesc = "Set a link of a running lab up or down by hand, or give it back to its schedule."

    def parseArgs(self, name: str, state: str) -> None:  # noqa: N802 -- usage.Options' name
        if state not in ("up", "down", "schedule"):
            raise usage.UsageError(f"{state!r}: say up, down or schedule")
        self["name"], self["state"] = name, state


def link(options: LinkOptions, out: TextIO, err: TextIO) -> int:
    up = {"up": True, "down": False, "schedule": None}[options["state"]]
    status, answer = call(
        options.api(), "PUT", f"/api/links/{urllib.parse.quote(options['name'])}", {"up": up}
    )
    if status != 200:
        print(f"smtppeer lab link: {_error(answer, status)}", file=err)
        return EXIT_FAILED
    print(f"link {answer['name']}: {'up' if answer['up'] else 'down'}", file=out)
    return EXIT_OK


# -- poll -------------------------------------------------------------------------------


class PollOptions(ApiOptions):
    synopsis = "HOST"
    longdesc = (
        "Have a dial-up host of a running lab poll its provider now; exit status 0 if the poll went well."
    )

    def parseArgs(self, host: str) -> None:  # noqa: N802 -- usage.Options' name
        self["host"] = host


def poll(options: PollOptions, out: TextIO, err: TextIO) -> int:
    status, answer = call(options.api(), "POST", f"/api/hosts/{urllib.parse.quote(options['host'])}/poll", {})
    if status != 200:
        print(f"smtppeer lab poll: {_error(answer, status)}", file=err)
        return EXIT_FAILED
    print(answer["line"], file=out)
    return EXIT_OK if answer.get("ok") else EXIT_FAILED


# -- status -----------------------------------------------------------------------------


class StatusOptions(ApiOptions):
    longdesc = "Print a running lab's hosts and links."


def status(options: StatusOptions, out: TextIO, err: TextIO) -> int:
    code, answer = call(options.api(), "GET", "/api/lab")
    if code != 200:
        print(f"smtppeer lab status: {_error(answer, code)}", file=err)
        return EXIT_FAILED
    for host in answer["hosts"].values():
        ports = ", ".join(f"{kind} {port}" for kind, port in host["ports"].items())
        print(
            f"host {host['name']} ({host['role']}, {ports}): {host['messages']} messages, "
            f"{host['queued']} queued, {host['held']} held",
            file=out,
        )
    for each in answer["links"].values():
        print(
            f"link {each['name']}: {each['from']} -> {each['to']}, {'up' if each['up'] else 'down'}", file=out
        )
    return EXIT_OK


# -- the command ------------------------------------------------------------------------

SUBCOMMANDS = {"check": check, "wait": wait, "link": link, "poll": poll, "status": status}


class LabCommandOptions(CommandOptions):
    synopsis = "check FILE | wait HOST | link NAME STATE | poll HOST | status"
    longdesc = "Check a lab's topology file, or drive a running lab (twistd -n smtppeer lab --topology FILE)."
    subCommands = [
        ["check", None, CheckOptions, "Check a topology file without starting anything"],
        ["wait", None, WaitOptions, "Wait for messages at a host of a running lab"],
        ["link", None, LinkOptions, "Set a link up, down, or back to its schedule"],
        ["poll", None, PollOptions, "Have a dial-up host poll its provider now"],
        ["status", None, StatusOptions, "Show a running lab's hosts and links"],
    ]

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        if self.subCommand is None:
            raise usage.UsageError("give a lab command (check, wait, link, poll, status)")


def run(options: LabCommandOptions, out: TextIO, err: TextIO) -> int:
    try:
        return SUBCOMMANDS[options.subCommand](options.subOptions, out, err)
    except usage.UsageError as e:
        print(f"smtppeer lab {options.subCommand}: {e}", file=err)
        return EXIT_USAGE
    except ConfigError as e:
        print(e, file=err)
        return EXIT_CONFIG
    except LabUnavailable as e:
        print(f"smtppeer lab {options.subCommand}: {e}", file=err)
        return EXIT_UNAVAILABLE


LAB_COMMAND = Command("lab", LabCommandOptions, run, "Check a lab's topology, or drive a running lab")
