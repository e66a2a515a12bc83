"""The entry points, above every floor: ``twistd smtppeer`` and the ``smtppeer`` command.

Both are the peer's (``service``) with the lab's added on top (``twistd
smtppeer lab``, ``smtppeer lab ...``): the service floor cannot import the
lab, which is built on it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from twisted.application import service

from smtppeer.lab.cli import LAB_COMMAND
from smtppeer.lab.service import LabOptions, make_lab_service
from smtppeer.service import assembly, cli
from smtppeer.service.options import Options as PeerOptions


class Options(PeerOptions):
    subCommands = [["lab", None, LabOptions, "Run a lab: hosts, links and faults from a topology file"]]


def makeService(options: Options) -> service.IService:  # noqa: N802 (the name ServiceMaker looks for)
    if options.subCommand == "lab":
        return make_lab_service(options.subOptions)
    return assembly.makeService(options)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, commands=[*cli.COMMANDS, LAB_COMMAND])


if __name__ == "__main__":
    sys.exit(main())
