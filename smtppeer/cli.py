"""The administrator's command ``smtppeer COMMAND ...``.

Each command is a ``usage.Options`` subclass (its options, arguments and
``--help``) plus a function ``run(options, out, err) -> exit status``; both
are registered in ``COMMANDS``.  Today: ``check-config FILE``.  ``send``,
``queue ...`` and ``poll PEER`` slot in the same way.

Exit statuses: 0 success, 1 the command failed, 2 the configuration is
broken, 64 (``EX_USAGE``) the command line is wrong.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from twisted.python import usage

from . import __version__
from .config import Config, Listener, Mailbox, Peer, Poll
from .configfile import ConfigError, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_USAGE = 64


class CommandOptions(usage.Options):
    """The base of every subcommand's options."""

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"smtppeer {__version__}")
        sys.exit(0)


# -- check-config -------------------------------------------------------------


class CheckConfigOptions(CommandOptions):
    synopsis = "FILE"
    longdesc = (
        "Read a TOML configuration file and check everything in it without starting anything: "
        "print 'FILE: ok' and a summary (exit status 0), or one line naming the file, the key and "
        "what is wrong (exit status 2)."
    )

    def parseArgs(self, file: str) -> None:  # noqa: N802 -- usage.Options' name
        self["file"] = file


def check_config(options: CheckConfigOptions, out: TextIO, err: TextIO) -> int:
    try:
        config = load_config(options["file"])
    except ConfigError as e:
        print(e, file=err)
        return EXIT_CONFIG
    print(f"{options['file']}: ok", file=out)
    for line in summary(config):
        print("  " + line, file=out)
    return EXIT_OK


def summary(config: Config) -> list[str]:
    """A few lines saying what a configuration does (never a password)."""
    rows = [
        ("hostname", [config.hostname]),
        ("data_dir", [config.data_dir]),
        ("listeners", [_listener(x) for x in config.listeners]),
        ("domains", [_domain(name, box) for name, box in config.domains.items()]),
        ("routes", [f"{domain} -> {target}" for domain, target in config.routes.items()]),
        ("holds", [f"{domain} -> {peer}" for domain, peer in config.holds.items()]),
        ("relay_from", config.relay_from),
        ("peers", [_peer(p) for p in config.peers.values()]),
        ("polls", [_poll(p) for p in config.polls]),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name + ':':{width + 1}} {', '.join(items) if items else '(none)'}" for name, items in rows]


def _listener(listener: Listener) -> str:
    return f"{listener.endpoint} ({listener.mode}{', turn' if listener.turn else ''})"


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
        parts.append("at " + peer.endpoint)
    if peer.username:
        parts.append("as " + peer.username)
    return f"{peer.name} ({'; '.join(parts)})" if parts else peer.name


def _poll(poll: Poll) -> str:
    return f"{poll.peer} every {_seconds(poll.interval)} ±{poll.jitter:.0%} ({poll.method})"


def _seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# -- the command and its subcommands ------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    options: type[usage.Options]
    run: Callable[[usage.Options, TextIO, TextIO], int]
    help: str


COMMANDS = [
    Command("check-config", CheckConfigOptions, check_config, "Check a configuration file without starting"),
]


class Options(CommandOptions):
    synopsis = "Usage: smtppeer COMMAND [options] [arguments]"
    longdesc = (
        "Administer an smtppeer: 'smtppeer COMMAND --help' describes each command. "
        "Exit status: 0 success, 1 failure, 2 a broken configuration, 64 a wrong command line."
    )
    subCommands = [[c.name, None, c.options, c.help] for c in COMMANDS]

    def getSynopsis(self) -> str:  # noqa: N802 -- usage.Options' name
        # A subcommand's synopsis starts with ours: "Usage: smtppeer check-config FILE".
        return "Usage: smtppeer" if self.subCommand else super().getSynopsis()

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        if self.subCommand is None:
            raise usage.UsageError("give a command (" + ", ".join(c.name for c in COMMANDS) + ")")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``smtppeer`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    argv = sys.argv[1:] if argv is None else list(argv)
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        command = options.subCommand
        print(f"smtppeer{' ' + command if command else ''}: {e}", file=err)
        print(f"Try 'smtppeer{' ' + command if command else ''} --help'.", file=err)
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else EXIT_OK
    command = next(c for c in COMMANDS if c.name == options.subCommand)
    return command.run(options.subOptions, out, err)


if __name__ == "__main__":
    sys.exit(main())
