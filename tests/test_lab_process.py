"""``twistd -n smtppeer lab`` as a user runs it: the README's topology and shell
commands, driven from outside over the HTTP API, and a clean SIGTERM that
leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import textwrap

import pytest

from .conftest import REPO, TWISTD, cli_env, end_process, free_port, require_tool, smtppeer, wait_until

README = (REPO / "README.rst").read_text()
SECTION = README.split("Lab: a network of peers on one machine\n", 1)[1].split("\nOperations\n", 1)[0]


def readme_topology(port: int) -> str:
    match = re.search(r"\.\. code-block:: toml\n\n((?:    .*\n|\n)+)", SECTION)
    assert match, "the README's Lab section lost its topology"
    return textwrap.dedent(match.group(1)).replace("tcp:8025:", f"tcp:{port}:")


def readme_commands() -> list[str]:
    match = re.search(r"drive it from a shell::\n\n((?:    .*\n)+)", SECTION)
    assert match, "the README's Lab section lost its shell commands"
    return [line.split("#", 1)[0].strip() for line in textwrap.dedent(match.group(1)).splitlines()]


def children(pid: int) -> set[int]:
    """Every process below ``pid`` (the disk processes of the lab's hosts)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == parent and int(entry) not in found:
                    found.add(int(entry))
                    todo.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def lab_process(tmp_path):
    http = free_port()
    topology = tmp_path / "lab.toml"  # the README's, with a port and a data directory of the test's
    topology.write_text(readme_topology(http).replace("[lab]\n", '[lab]\ndata_dir = "lab-data"\n', 1))
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "smtppeer", "lab", "--topology", str(topology)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    info = tmp_path / "lab-data" / "lab.json"
    try:
        wait_until(lambda: info.exists() or proc.poll() is not None, timeout=30, what="the lab's lab.json")
        assert proc.poll() is None, (tmp_path / "lab.log").read_text()
        yield proc, json.loads(info.read_text()), tmp_path
    finally:
        end_process(proc, timeout=30)
        log.close()


def test_the_readme_lab_runs_as_printed(lab_process):
    swaks = require_tool("swaks")
    proc, info, tmp_path = lab_process
    api = info["http"]
    alpha = info["hosts"]["alpha"]["smtp"]
    outputs = []
    for command in readme_commands()[1:]:  # the first is the twistd command that runs this lab
        argv = shlex.split(command.replace("http://127.0.0.1:8025", api).replace("PORT", str(alpha)))
        if argv[0] == "swaks":
            done = subprocess.run([swaks, *argv[1:]], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            # Beta's line is up at the start, and its first ETRN poll may still be running
            # when the mail reaches the provider: then it goes to beta at once, not held.
            wait_until(
                lambda: _count(api, "provider/held") or _count(api, "beta/messages"),
                timeout=30,
                what="the provider holding beta's mail (or beta having it already)",
            )
            continue
        done = smtppeer(*argv[1:], text=True, cwd=tmp_path, timeout=90)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        outputs.append(done.stdout)
    status, polled, waited, linked = outputs
    assert "host alpha (dialup" in status and "host provider (relay" in status
    assert polled.startswith("poll provider: ")
    assert waited.startswith("b@beta.test\t")
    assert linked == "link beta-line: down\n"


def _count(api: str, what: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{api}/api/hosts/{what}", timeout=10) as response:
        return len(json.loads(response.read()))


def test_sigterm_stops_the_lab_and_every_process_it_started(lab_process):
    proc, info, tmp_path = lab_process
    below = children(proc.pid)
    assert below, "each host has a disk process"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    wait_until(lambda: not [pid for pid in below if alive(pid)], timeout=20, what="the lab's children gone")
    log = (tmp_path / "lab.log").read_text()
    assert "Traceback" not in log, log
