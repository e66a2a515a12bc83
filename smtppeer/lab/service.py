"""``twistd -n smtppeer lab --topology FILE``: a lab as a twistd service.

The lab's hosts, links and faults, and its HTTP API with the status page
on the topology's ``[lab] http`` endpoint (loopback by default).  SIGTERM
stops it like any twistd service: every host closes its sessions with 421
and its disk work, and the lab's proxies and web server close too.
"""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from .lab import Lab
from .topology import Topology, load_topology


class LabOptions(usage.Options):
    synopsis = "--topology FILE [--data-dir DIR] [--http ENDPOINT]"
    longdesc = (
        "Run a lab: every host of the topology file as an smtppeer service on loopback, the links "
        "between them, faults, and an HTTP API with a status page. docs/topology.rst has the format."
    )
    optParameters = [
        ["topology", "t", None, "The topology file (TOML)"],
        [
            "data-dir",
            "d",
            None,
            "Where the hosts keep their data [default: the file's data_dir, or a temporary one]",
        ],
        [
            "http",
            None,
            None,
            "The HTTP API's server endpoint [default: the file's, tcp:0:interface=127.0.0.1]",
        ],
    ]

    def postOptions(self) -> None:  # noqa: N802 -- usage.Options' name
        if not self["topology"]:
            raise usage.UsageError("--topology FILE is needed")
        self.topology: Topology = load_topology(self["topology"])  # a ConfigError: one line, exit 2
        if self["http"]:
            self.topology.http = self["http"]
        if self["data-dir"]:
            self.topology.data_dir = self["data-dir"]


def make_lab_service(options: LabOptions) -> service.MultiService:
    return lab_service(options.topology)


def lab_service(topology: Topology) -> service.MultiService:
    """The lab and, when the topology names an endpoint for it, its HTTP API."""
    from .web import web_service  # noqa: PLC0415 - Twisted Web only where a lab serves it

    top = service.MultiService()
    lab = Lab(topology)
    lab.setServiceParent(top)
    if topology.http:
        web_service(lab, topology.http).setServiceParent(top)
    top.lab = lab
    return top
