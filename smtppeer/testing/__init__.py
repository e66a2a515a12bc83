"""smtppeer for tests: a capturing SMTP server, or a whole lab, in the test's process.

For Twisted tests (pytest-twisted or trial), every call that takes time
returns a Deferred::

    from smtppeer.testing import start_capture, start_lab

    peer = yield start_capture()                    # one server that keeps everything
    send_mail_through(*peer.address)                # your code under test
    [message] = yield peer.wait_for_messages(1, {"subject": "Welcome*"})
    yield peer.stop()

    lab = yield start_lab(open("lab.toml").read())  # hosts, links, faults (docs/topology.rst)
    with lab.link_down("alpha-provider"): ...
    yield lab.stop()

With pytest, the ``smtp_peer`` and ``smtp_lab`` fixtures of the
``pytest_smtppeer`` plugin do the starting and stopping.  Nothing here is a
second SMTP implementation: a capturing peer is an smtppeer host that takes
mail for any domain into its Maildirs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

from smtppeer.lab.faults import Fault
from smtppeer.lab.lab import Event, Lab, LabHost, Match, Message, matcher
from smtppeer.lab.topology import Topology, load_topology, loads_topology

__all__ = [
    "CapturingPeer",
    "Event",
    "Lab",
    "LabHost",
    "Message",
    "capture_topology",
    "matcher",
    "start_capture",
    "start_lab",
]


def _topology(topology: Topology | str | os.PathLike[str]) -> Topology:
    if isinstance(topology, Topology):
        return topology
    if isinstance(topology, os.PathLike) or (isinstance(topology, str) and "\n" not in topology):
        return load_topology(topology)
    return loads_topology(topology, "<topology>")


def start_lab(
    topology: Topology | str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None
) -> defer.Deferred[Lab]:
    """Start a lab from a ``Topology``, TOML text or a file's path; fires with it
    once every host listens.  Its HTTP API is not started (a test has the lab
    itself); ``Lab.stop`` stops everything."""
    spec = dataclasses.replace(_topology(topology), http=None)  # the caller's Topology stays as it was
    lab = Lab(spec, data_dir=None if data_dir is None else os.fspath(data_dir))
    return lab.start()


def capture_topology(domains: Sequence[str] = ("example.test",)) -> Topology:
    """One host that takes mail for any domain (``accept_any_domain``): ``domains``
    are its own, the rest are kept all the same."""
    text = '[hosts.capture]\nrole = "local"\ndomains = [{}]\nconfig = {{ accept_any_domain = true }}\n'
    return loads_topology(text.format(", ".join(f'"{d}"' for d in domains)), "<capture>")


class CapturingPeer:
    """A running capturing server: where it listens, what it received, waits and faults."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.host: LabHost = lab.hosts["capture"]

    @property
    def address(self) -> tuple[str, int]:
        return self.host.smtp

    @property
    def port(self) -> int:
        return self.host.smtp[1]

    def messages(self, match: Match = None) -> list[Message]:
        return self.host.messages(match)

    def wait_for_messages(
        self, count: int = 1, match: Match = None, timeout: float = 10.0
    ) -> defer.Deferred[list[Message]]:
        return self.lab.wait_for_messages("capture", count, match, timeout)

    def wait_for_no_messages(self, duration: float = 1.0, match: Match = None) -> defer.Deferred[None]:
        return self.lab.wait_for_no_messages("capture", duration, match)

    def fault(self, **spec: Any):
        """A fault for a ``with`` block (``peer.fault(phase="rcpt", reply="452 4.2.2 Full")``)."""
        return self.lab.fault(host="capture", **spec)

    def add_fault(self, **spec: Any) -> Fault:
        return self.lab.add_fault({"host": "capture", **spec})

    def reset(self) -> defer.Deferred:
        return self.lab.reset()

    def stop(self) -> defer.Deferred:
        return self.lab.stop()


def start_capture(
    domains: Sequence[str] = ("example.test",), *, data_dir: str | os.PathLike[str] | None = None
) -> defer.Deferred[CapturingPeer]:
    """Start a capturing SMTP server on a free loopback port; fires with it."""
    d = start_lab(capture_topology(domains), data_dir=data_dir)
    return d.addCallback(CapturingPeer)
