"""The administrator's command ``smtppeer COMMAND ...``.

Each command is a ``usage.Options`` subclass (its options, arguments and
``--help``) plus a function ``run(options, out, err) -> exit status``; both
are registered in ``COMMANDS``: ``check-config``, ``send``, ``queue``,
``poll``, ``make-cert`` and ``hash-password``.  Commands that change the
queue go through the running service's control socket (``control.py``), so
they never race it for the spool.

Exit statuses: 0 success, 1 the command failed, 2 the configuration is
broken, 64 (``EX_USAGE``) the command line is wrong.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import getopt
import getpass
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from twisted.python import usage

from smtppeer import __version__
from smtppeer.engine.framing import message_problem
from smtppeer.peer import tls
from smtppeer.store.spool import HELD, PENDING, Spool

from . import control
from .config import Config, Listener, Mailbox, Peer, Poll, SendMode, TLSFiles
from .configfile import ConfigError, load_config
from .configfile.loops import hold_warnings, pair_warnings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_USAGE = 64


class CommandOptions(usage.Options):
    """The base of every subcommand's options.

    Each one has its own ``synopsis`` and ``longdesc`` (without one,
    ``usage.Options`` shows the ``__main__`` module's docstring)."""

    longdesc = ""

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"smtppeer {__version__}")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:  # noqa: N802 -- usage.Options'
        """Options before or after the arguments, as in most commands
        (``check-config provider.toml --peer dialup.toml``, ``lab wait beta --count 2``):
        usage.Options stops at the first argument, so a command without subcommands gets its
        options put first, and ``--`` before the arguments."""
        if getattr(self, "subCommands", None):  # the options after a subcommand's name are the subcommand's
            return super().parseOptions(options)
        argv = list(sys.argv[1:] if options is None else options)
        try:
            flags, rest = getopt.gnu_getopt(argv, self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        takes_value = {name[:-1] for name in self.longOpt if name.endswith("=")}
        ordered: list[str] = []
        for flag, value in flags:
            if flag.startswith("--"):
                ordered.append(f"{flag}={value}" if flag[2:] in takes_value else flag)
            else:
                ordered += [flag, value] if f"{flag[1]}:" in self.shortOpt else [flag]
        return super().parseOptions([*ordered, "--", *rest])

    def getSynopsis(self) -> str:  # noqa: N802 -- usage.Options' name
        # usage.Options writes a subcommand's synopsis after its parent's whole synopsis; with a
        # subcommand chosen ours is only the path to it: "Usage: smtppeer queue" + " list [-d DIR]".
        if getattr(self, "subCommand", None) is None:
            return super().getSynopsis()
        parent = getattr(self, "parent", None)
        return "Usage: smtppeer" if parent is None else f"{parent.getSynopsis()} {parent.subCommand}"


# -- check-config -------------------------------------------------------------


class CheckConfigOptions(CommandOptions):
    synopsis = "[--peer PEER-FILE ...] FILE"
    longdesc = (
        "Read a TOML configuration file and check everything in it without starting anything: "
        "print 'FILE: ok' and a summary (exit status 0), or one line naming the file, the key and "
        "what is wrong (exit status 2). Warnings ('FILE: warning: ...', exit status 0) name holds "
        "a peer cannot take: beyond its domains or, with --peer and that peer's own configuration, "
        "domains it routes back (a loop) or has no route for."
    )

    def __init__(self) -> None:
        super().__init__()
        self["peers"] = []

    def opt_peer(self, path: str) -> None:
        """The configuration of a peer of this host (another smtppeer), to check the pair
        for holds it cannot take (repeatable)"""
        self["peers"].append(path)

    opt_p = opt_peer

    def parseArgs(self, file: str) -> None:  # noqa: N802 -- usage.Options' name
        self["file"] = file


def check_config(options: CheckConfigOptions, out: TextIO, err: TextIO) -> int:
    try:
        config = load_config(options["file"])
        peers = [(path, load_config(path)) for path in options["peers"]]
    except ConfigError as e:
        print(e, file=err)
        return EXIT_CONFIG
    print(f"{options['file']}: ok", file=out)
    for line in summary(config):
        print("  " + line, file=out)
    source = options["file"]
    warnings = [(source, line) for line in hold_warnings(config)]
    for path, other in peers:  # each side's holds for the other, against the other's routes
        print(f"{path}: ok", file=out)
        warnings += [(source, line) for line in pair_warnings(config, other, path)]
        warnings += [(path, line) for line in pair_warnings(other, config, source)]
    for where, line in warnings:
        print(f"{where}: warning: {line}", file=err)
    return EXIT_OK


def summary(config: Config) -> list[str]:
    """A few lines saying what a configuration does (never a password)."""
    rows = [
        ("hostname", [config.hostname]),
        ("data_dir", [config.data_dir]),
        ("tls", [_tls(config.tls)] if config.tls else ["(none: STARTTLS is not offered)"]),
        ("listeners", [_listener(x, config) for x in config.listeners]),
        ("domains", [_domain(name, box) for name, box in config.domains.items()]),
        ("routes", [f"{domain} -> {target}" for domain, target in config.routes.items()]),
        ("holds", [f"{domain} -> {peer}" for domain, peer in config.holds.items()]),
        ("relay_from", config.relay_from),
        ("peers", [_peer(p) for p in config.peers.values()]),
        ("users", list(config.users)),
        ("polls", [_poll(p) for p in config.polls]),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name + ':':{width + 1}} {', '.join(items) if items else '(none)'}" for name, items in rows]


def _tls(files: TLSFiles) -> str:
    """The certificate file and whom it names (the file was checked; it may have changed since)."""
    from cryptography import x509  # noqa: PLC0415

    try:
        with open(files.certificate, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        until = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after  # cryptography < 42
        about = f"{cert.subject.rfc4514_string()}, until {until:%Y-%m-%d}"
    except (OSError, ValueError) as e:
        about = f"unreadable: {e}"
    return f"{files.certificate} ({about}; key {files.key})"


def _listener(listener: Listener, config: Config) -> str:
    flags = [listener.mode]
    if listener.turn:
        flags.append("turn")
    if config.tls is not None:
        flags.append("starttls" if listener.starttls else "no starttls")
    if listener.require_tls:
        flags.append("require_tls")
    if listener.auth_in_clear:
        flags.append("auth_in_clear")
    if listener.processes > 1:
        flags.append(f"{listener.processes} processes, receive only")
    return f"{listener.endpoint} ({', '.join(flags)})"


def _domain(name: str, box: Mailbox) -> str:
    parts = ["catch-all"] if box.catch_all else []
    if box.users:
        parts.append(f"{len(box.users)} user{'s' if len(box.users) != 1 else ''}")
    if box.aliases:
        parts.append(f"{len(box.aliases)} alias{'es' if len(box.aliases) != 1 else ''}")
    return f"{name} ({', '.join(parts)})"


def _peer(peer: Peer) -> str:
    parts = []
    if peer.domains:
        parts.append("for " + " ".join(peer.domains))
    if peer.addresses:
        parts.append("from " + " ".join(peer.addresses))
    if peer.endpoint:
        tls = f"tls {peer.tls}"
        if peer.tls_name:
            tls += f" for {peer.tls_name}"
        if peer.ca_file:
            tls += f" under {peer.ca_file}"
        parts.append(f"at {peer.endpoint} with {tls}")
        if peer.send != SendMode.NOW:
            parts.append(f"sends {peer.send}")
    if peer.odmr_endpoint:
        parts.append(f"ATRN at {peer.odmr_endpoint}")
    if peer.username:  # what kind of secret, never the secret
        parts.append(f"as {peer.username} with {'a password' if peer.password is not None else 'a hash'}")
    return f"{peer.name} ({'; '.join(parts)})" if parts else peer.name


def _poll(poll: Poll) -> str:
    method = " ".join([poll.method, *poll.domains])
    return f"{poll.peer} every {_seconds(poll.interval)} ±{poll.jitter:.0%} ({method})"


def _seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# -- commands on a data directory (send, queue, poll) --------------------------


class DataDirOptions(CommandOptions):
    """Where the service keeps its data: from ``--config`` or ``--data-dir``, given to
    the command or, for ``queue``, before its command (``smtppeer queue -d DIR list``)."""

    optParameters = [
        ["config", "c", None, "The service's configuration file (for its data directory and peers)"],
        ["data-dir", "d", None, "The service's data directory [default: ./smtppeer-data]"],
    ]

    def _given(self, name: str) -> str | None:
        options: usage.Options | None = self
        while isinstance(options, DataDirOptions):
            if options[name]:
                return options[name]
            options = getattr(options, "parent", None)
        return None

    _loaded: tuple[Config | None] | None = None

    def config(self) -> Config | None:
        """The file given by -c, read once (None without one)."""
        if self._loaded is None:
            path = self._given("config")
            self._loaded = (load_config(path) if path else None,)
        return self._loaded[0]

    def data_dir(self) -> str:
        given = self._given("data-dir")
        if given:
            return given
        config = self.config()
        return config.data_dir if config else "./smtppeer-data"


def _ask(options: DataDirOptions, payload: dict, err: TextIO) -> dict | None:
    """Send one request to the running service; None (after saying why) if that failed."""
    try:
        answer = control.request(options.data_dir(), payload)
    except ConfigError as e:
        print(e, file=err)
        return None
    except (control.ServiceNotRunning, OSError) as e:
        print(f"smtppeer: {e}", file=err)
        return None
    if not answer.get("ok"):
        print(f"smtppeer: {answer.get('error') or 'failed'}", file=err)
    return answer


class SendOptions(DataDirOptions):
    synopsis = "[-f FROM] [-t] [RECIPIENT ...] < message"
    longdesc = (
        "Read a message from standard input and give it to the running service, like sendmail: "
        "the exit status is 0 only once the message is on disk. LF and CRLF line ends are made CRLF; "
        "a message SMTP would refuse (a CR elsewhere, a NUL, a line over 998 octets) is refused, "
        "naming the line, with exit status 1. What a submission agent adds (RFC 6409 §8) is added "
        "when missing: From: (the -f address, else USER@HOST), Date: and Message-ID:."
    )
    optParameters = [["from", "f", "", "The envelope sender (empty: the null reverse-path <>)"]]
    optFlags = [["read-recipients", "t", "Take the recipients from To:, Cc: and Bcc: (Bcc: is removed)"]]

    def parseArgs(self, *recipients: str) -> None:  # noqa: N802 -- usage.Options' name
        self["recipients"] = list(recipients)


def send(options: SendOptions, out: TextIO, err: TextIO, stdin=None) -> int:
    data = (stdin or sys.stdin.buffer).read()
    message = re.sub(rb"\r?\n", b"\r\n", data)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    recipients = list(options["recipients"])
    if options["read-recipients"]:
        message, found = _header_recipients(message)
        recipients += found
    if not recipients:
        print("smtppeer send: no recipients", file=err)
        return EXIT_USAGE
    # The rule SMTP's DATA applies (the service checks again): never a bare CR to a next hop.
    # Lines are counted in the message as given, before the header fields we add.
    problem = message_problem(message)
    if problem is not None:
        print(f"smtppeer send: message refused: {problem}", file=err)
        return EXIT_FAILED
    try:
        config = options.config()
    except ConfigError as e:
        print(e, file=err)
        return EXIT_CONFIG
    message = complete_header(message, options["from"], config.hostname if config else socket.getfqdn())
    payload = {
        "command": "send",
        "from": options["from"],
        "to": recipients,
        "message": base64.b64encode(message).decode(),
    }
    answer = _ask(options, payload, err)
    if not answer or not answer.get("ok"):
        return EXIT_FAILED
    print(f"queued as {answer['id']}", file=out)
    return EXIT_OK


_FIELD = re.compile(rb"[!-9;-~]+:")  # a header field's name and colon (RFC 5322 §3.6.8)


def complete_header(message: bytes, sender: str, hostname: str) -> bytes:
    """Add the fields a submission agent adds when they are missing (RFC 6409 §8):
    ``From:`` (the envelope sender ``-f``, else the user's login at ``hostname``,
    as sendmail does), ``Date:`` and ``Message-ID:`` (``email.utils``).

    ``message`` has CRLF line ends; one that does not start with a header field
    is all body, and gets a header of its own."""
    if _FIELD.match(message):
        head, sep, body = message.partition(b"\r\n\r\n")
        lines = (head if sep else head.removesuffix(b"\r\n")).split(b"\r\n")  # (a header alone)
    else:
        lines, body = [], message
    names = {line.split(b":", 1)[0].strip().lower() for line in lines if line[:1] not in (b" ", b"\t")}
    added = []
    if b"from" not in names:
        added.append("From: " + (sender or f"{getpass.getuser()}@{hostname}"))
    if b"date" not in names:
        added.append("Date: " + email.utils.formatdate(localtime=True))
    if b"message-id" not in names:
        added.append("Message-ID: " + email.utils.make_msgid(domain=hostname))
    if not added:
        return message
    return b"\r\n".join(lines + [field.encode() for field in added]) + b"\r\n\r\n" + body


def _header_recipients(message: bytes) -> tuple[bytes, list[str]]:
    head, sep, body = message.partition(b"\r\n\r\n")
    parsed = email.message_from_bytes(head + b"\r\n\r\n", policy=email.policy.compat32)
    found = [
        addr
        for _, addr in email.utils.getaddresses(
            parsed.get_all("To", []) + parsed.get_all("Cc", []) + parsed.get_all("Bcc", [])
        )
        if addr
    ]
    lines = head.split(b"\r\n")
    kept, skipping = [], False
    for line in lines:  # drop Bcc: and its continuation lines
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body, found


class QueueIdOptions(DataDirOptions):
    synopsis = "[-c FILE | -d DIR] ID"

    def parseArgs(self, queue_id: str | None = None) -> None:  # noqa: N802 -- usage.Options' name
        if not queue_id:
            raise usage.UsageError("give a queue ID ('smtppeer queue list' shows them)")
        self["id"] = queue_id


class QueueShowOptions(QueueIdOptions):
    longdesc = "Print a queued message's envelope (JSON) and its header. No running service is needed."


class QueueHoldOptions(QueueIdOptions):
    longdesc = "Keep a queued message from being sent until it is released (through the running service)."


class QueueReleaseOptions(QueueIdOptions):
    longdesc = "Let a held message be sent again (through the running service)."


class QueueDeleteOptions(QueueIdOptions):
    longdesc = "Remove a queued message for good, without a bounce (through the running service)."


class QueueFlushOptions(DataDirOptions):
    synopsis = "[-c FILE | -d DIR] [PEER]"
    longdesc = (
        "Retry deferred mail now (through the running service); with PEER, only mail routed to that "
        "peer's endpoint (its name is looked up in --config)."
    )

    def parseArgs(self, peer: str | None = None) -> None:  # noqa: N802 -- usage.Options' name
        self["peer"] = peer


class QueueListOptions(DataDirOptions):
    synopsis = "[-c FILE | -d DIR]"
    longdesc = (
        "List every queued message (ID, arrival, size in octets, sender, '(on hold)') and why each "
        "recipient waits, then a total, as mailq does: '-- 3 Kbytes in 2 messages, 4 recipients.' "
        "An empty queue says 'Mail queue is empty'. No running service is needed."
    )


class QueueOptions(DataDirOptions):
    synopsis = "[-c FILE | -d DIR] list | show ID | flush [PEER] | hold ID | release ID | delete ID"
    longdesc = (
        "Look at the spool (list, show: no running service needed) or change it through the running "
        "service (flush: retry now; hold: keep back; release: let go; delete: drop for good). "
        "-c/-d may come before the command or after it: smtppeer queue list -d DIR."
    )
    subCommands = [
        ["list", None, QueueListOptions, "Every queued message, and why each recipient waits"],
        ["show", None, QueueShowOptions, "One message: its envelope and headers"],
        ["flush", None, QueueFlushOptions, "Retry deferred mail now (only that routed to PEER if given)"],
        ["hold", None, QueueHoldOptions, "Keep a message from being sent until released"],
        ["release", None, QueueReleaseOptions, "Let a held message be sent"],
        ["delete", None, QueueDeleteOptions, "Remove a message for good (no bounce)"],
    ]

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        if self.subCommand is None:
            raise usage.UsageError("give a queue command: list, show, flush, hold, release or delete")


def queue(options: QueueOptions, out: TextIO, err: TextIO) -> int:
    sub, opts = options.subCommand, options.subOptions
    if sub in ("list", "show"):
        try:
            data_dir = opts.data_dir()
            config = opts.config()
        except ConfigError as e:
            print(e, file=err)
            return EXIT_CONFIG
        if not os.path.isdir(data_dir):
            print(f"smtppeer queue {sub}: no data directory {data_dir}", file=err)
            return EXIT_FAILED
        spool_dir = os.path.join(data_dir, "spool")
        if not os.path.isdir(os.path.join(spool_dir, "queue")):  # (a Spool would make it)
            if sub == "list":
                print("Mail queue is empty", file=out)
                return EXIT_OK
            print(f"smtppeer queue show: no message {opts['id']!r}", file=err)
            return EXIT_FAILED
        spool = Spool(spool_dir, committer=None)
        return (
            _list(spool, out, config.on_poll_relays() if config else {})
            if sub == "list"
            else _show(spool, opts["id"], out, err)
        )
    if sub == "flush":
        route = None
        if opts["peer"]:
            config = opts.config()
            peer = config.peers.get(opts["peer"]) if config else None
            if peer is None or not peer.endpoint:
                print(
                    f"smtppeer queue flush: no peer {opts['peer']!r} with an endpoint (give --config)",
                    file=err,
                )
                return EXIT_USAGE
            route = peer.endpoint
        answer = _ask(opts, {"command": "flush", "route": route}, err)
        if answer and answer.get("ok"):
            print(f"{answer['count']} recipients will be tried now", file=out)
            return EXIT_OK
        return EXIT_FAILED
    answer = _ask(opts, {"command": sub, "id": opts["id"]}, err)
    if answer and answer.get("ok"):
        print(f"{opts['id']}: {_DONE[sub]}", file=out)  # as postsuper says what it did
        return EXIT_OK
    return EXIT_FAILED


_DONE = {"hold": "held", "release": "released", "delete": "deleted"}


def _list(spool: Spool, out: TextIO, polled: dict[str, str] | None = None) -> int:
    """mailq's shape: each message and its recipients, then a total (or that there is none)."""
    now = time.time()
    messages = octets = waiting = 0
    for envelope in spool.envelopes():
        flags = " (on hold)" if envelope.frozen else ""
        sender = envelope.reverse_path or "<>"
        arrived = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(envelope.arrival))
        print(f"{envelope.id}  {arrived}  {envelope.size:>9}  from {sender}{flags}", file=out)
        for r in envelope.recipients:
            print(f"    {r.address}: {_why(r, now, polled or {})}", file=out)
        messages += 1
        octets += envelope.size
        waiting += sum(1 for r in envelope.recipients if r.state in (PENDING, HELD))
    if not messages:
        print("Mail queue is empty", file=out)
        return EXIT_OK
    kbytes = -(-octets // 1024)
    print(f"-- {kbytes} Kbytes in {_count(messages, 'message')}, {_count(waiting, 'recipient')}.", file=out)
    return EXIT_OK


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _why(r, now: float, polled: dict[str, str]) -> str:
    if r.state == HELD:
        return f"held for peer {r.hold} until it calls in"
    if r.state == PENDING and r.relay in polled:
        last = f" (after {r.attempts} attempts: {r.last_reply})" if r.attempts else ""
        return f"waiting for the next poll of {polled[r.relay]}{last}"
    if r.state == PENDING:
        if r.attempts == 0:
            return "waiting for its first attempt"
        wait = max(0, int(r.next_attempt - now))
        return f"deferred after {r.attempts} attempts, next in {wait}s: {r.last_reply}"
    return f"{r.state}: {r.last_reply}"


def _show(spool: Spool, queue_id: str, out: TextIO, err: TextIO) -> int:
    try:
        with open(spool.envelope_path(queue_id)) as f:
            out.write(f.read())
        with open(spool.body_path(queue_id), "rb") as f:
            head = f.read(64 * 1024).split(b"\r\n\r\n", 1)[0]
    except FileNotFoundError:
        print(f"smtppeer queue show: no message {queue_id!r}", file=err)
        return EXIT_FAILED
    out.write(head.decode("utf-8", "replace").replace("\r\n", "\n") + "\n")
    return EXIT_OK


class PollOptions(DataDirOptions):
    synopsis = "PEER"
    longdesc = "Run one poll cycle with PEER now, through the running service, and print its summary."

    def parseArgs(self, peer: str) -> None:  # noqa: N802 -- usage.Options' name
        self["peer"] = peer


def poll(options: PollOptions, out: TextIO, err: TextIO) -> int:
    answer = _ask(options, {"command": "poll", "peer": options["peer"]}, err)
    if answer and answer.get("summary"):
        print(answer["summary"], file=out)
    return EXIT_OK if answer and answer.get("ok") else EXIT_FAILED


# -- make-cert -----------------------------------------------------------------


class MakeCertOptions(CommandOptions):
    synopsis = "[--hostname NAME] [--days N] CERT KEY"
    longdesc = "Write a self-signed certificate for a lab (PEM) and its private key (PEM, mode 0600)."
    optParameters = [
        ["hostname", None, None, "The name (or IP address) the certificate is for [default: this host]"],
        ["days", None, 825, "How long it is valid", int],
    ]

    def parseArgs(self, cert: str, key: str) -> None:  # noqa: N802 -- usage.Options' name
        self["cert"], self["key"] = cert, key


def make_cert(options: MakeCertOptions, out: TextIO, err: TextIO) -> int:
    hostname = options["hostname"] or socket.gethostname()
    try:
        tls.make_self_signed(hostname, options["cert"], options["key"], options["days"])
    except OSError as e:
        print(f"smtppeer make-cert: {e}", file=err)
        return EXIT_FAILED
    print(f"{options['cert']}: self-signed for {hostname}; key in {options['key']}", file=out)
    return EXIT_OK


# -- hash-password -------------------------------------------------------------

MIN_ITERATIONS = 4096  # RFC 7677 §4: at least 4096


class HashPasswordOptions(CommandOptions):
    synopsis = "[--iterations N] < password"
    longdesc = (
        "Print the RFC 5803 SCRAM-SHA-256 hash of a password, for password_hash in [users.NAME] or "
        "[peers.NAME]. The password is one line of standard input, or asked for twice on a terminal."
    )
    optParameters = [
        ["iterations", "i", MIN_ITERATIONS, f"PBKDF2 iterations (at least {MIN_ITERATIONS})", int],
    ]

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        if self["iterations"] < MIN_ITERATIONS:
            raise usage.UsageError(f"--iterations must be at least {MIN_ITERATIONS} (RFC 7677)")


def hash_password(options: HashPasswordOptions, out: TextIO, err: TextIO, stdin: TextIO | None = None) -> int:
    from smtppeer.engine.sasl import hash_password as scram_hash  # noqa: PLC0415 -- scramp only here

    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                print("smtppeer hash-password: the two passwords differ", file=err)
                return EXIT_FAILED
        except (EOFError, KeyboardInterrupt):
            print(file=err)
            return EXIT_FAILED
    else:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    if not password:
        print("smtppeer hash-password: no password (an empty line)", file=err)
        return EXIT_FAILED
    try:
        hashed = scram_hash(password, iterations=options["iterations"])
    except ValueError as e:  # SASLprep refuses the password (control characters ...), or too many iterations
        print(f"smtppeer hash-password: {e}", file=err)
        return EXIT_FAILED
    print(hashed, file=out)
    return EXIT_OK


# -- the command and its subcommands ------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    options: type[usage.Options]
    run: Callable[[usage.Options, TextIO, TextIO], int]
    help: str


COMMANDS = [
    Command("check-config", CheckConfigOptions, check_config, "Check a configuration file without starting"),
    Command("send", SendOptions, send, "Queue a message from standard input (sendmail-style)"),
    Command("queue", QueueOptions, queue, "List, show, flush, hold, release or delete queued mail"),
    Command("poll", PollOptions, poll, "Run one poll cycle with a peer now"),
    Command("make-cert", MakeCertOptions, make_cert, "Write a self-signed certificate for a lab"),
    Command("hash-password", HashPasswordOptions, hash_password, "Hash a password for password_hash"),
]


class Options(CommandOptions):
    """The ``smtppeer`` command's options for ``COMMANDS``; ``for_commands`` makes
    them for another list (the lab's command is added above this floor)."""

    synopsis = "Usage: smtppeer COMMAND [options] [arguments]"
    longdesc = (
        "Administer an smtppeer: 'smtppeer COMMAND --help' describes each command. "
        "Exit status: 0 success, 1 failure, 2 a broken configuration, 64 a wrong command line."
    )
    subCommands = [[c.name, None, c.options, c.help] for c in COMMANDS]

    def opt_config(self, path: str) -> None:
        """(goes after the command: smtppeer queue list -c FILE)"""
        raise usage.UsageError(f"-c/--config goes after the command, e.g. 'smtppeer queue list -c {path}'")

    def opt_data_dir(self, path: str) -> None:
        """(goes after the command: smtppeer queue list -d DIR)"""
        raise usage.UsageError(f"-d/--data-dir goes after the command, e.g. 'smtppeer queue list -d {path}'")

    opt_c = opt_config
    opt_d = opt_data_dir

    commands: Sequence[Command] = COMMANDS

    @classmethod
    def for_commands(cls, commands: Sequence[Command]) -> type[Options]:
        subs = [[c.name, None, c.options, c.help] for c in commands]
        return type("Options", (cls,), {"commands": list(commands), "subCommands": subs})

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        if self.subCommand is None:
            raise usage.UsageError("give a command (" + ", ".join(c.name for c in self.commands) + ")")


def main(
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    commands: Sequence[Command] = COMMANDS,
) -> int:
    """Run ``smtppeer`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    argv = sys.argv[1:] if argv is None else list(argv)
    options = Options() if commands is COMMANDS else Options.for_commands(commands)()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        path, chosen = ["smtppeer"], options  # "smtppeer lab wait": as far as the parse got
        while getattr(chosen, "subCommand", None):
            path.append(chosen.subCommand)
            chosen = chosen.subOptions
        print(f"{' '.join(path)}: {e}", file=err)
        print(f"Try '{' '.join(path)} --help'.", file=err)
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    command = next(c for c in commands if c.name == options.subCommand)
    return command.run(options.subOptions, out, err)


if __name__ == "__main__":
    sys.exit(main())
