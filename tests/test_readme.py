"""The README's examples run: the smtplib snippet and the Maildir reader work as printed."""

from __future__ import annotations

import os
import re
import shlex
import smtplib
import subprocess
import sys

from .conftest import REPO, TWISTD, free_port, wait_for_port, wait_until

README = (REPO / "README.rst").read_text()


def _heredoc() -> str:
    match = re.search(r"python - <<'EOF'\n(.*?)\n    EOF\n", README, re.S)
    assert match, "the README lost its smtplib example"
    return "\n".join(line[4:] for line in match.group(1).splitlines())


def _one_liner() -> str:
    match = re.search(r'python -c "(import mailbox.*?)"\n', README)
    assert match, "the README lost its Maildir example"
    return match.group(1)


def test_readme_examples_work_against_the_default_layout(twistd_peer):
    peer = twistd_peer()
    snippet = _heredoc().replace('"127.0.0.1", 2525', f'"127.0.0.1", {peer.port}')
    assert str(peer.port) in snippet
    subprocess.run([sys.executable, "-c", snippet], check=True, timeout=30)
    reader = _one_liner().replace("smtppeer-data", str(peer.data_dir))
    out = subprocess.run(
        [sys.executable, "-c", reader], check=True, timeout=30, capture_output=True, text=True
    )
    assert out.stdout.startswith("hello from ")
    assert "by peer.test (smtppeer) with ESMTP" in out.stdout


def _twistd_commands() -> list[list[str]]:
    """The three-peer example of "Relaying and holding": ``twistd -n ...`` lines with their
    continuations (the Lab section's own command has a test of its own)."""
    section = README.split("Relaying and holding\n", 1)[1].split("\nConfiguration file\n", 1)[0]
    text = section.replace("\\\n", " ")
    return [
        shlex.split(line.strip())[1:]
        for line in text.splitlines()
        if line.strip().startswith("twistd -n --pidfile=")
    ]


def test_readme_relay_example_runs(tmp_path):
    commands = _twistd_commands()
    assert len(commands) == 3
    ports = {str(p): str(free_port()) for p in (2601, 2602, 2603)}
    procs = []
    try:
        for argv in commands:
            joined = " ".join(argv)
            for old, new in ports.items():
                joined = joined.replace(old, new)
            proc = subprocess.Popen(
                [*TWISTD, *shlex.split(joined)],
                cwd=tmp_path,  # the example's relative data dirs and pid files land here
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            port = int(re.search(r"tcp:(\d+):", joined).group(1))
            wait_for_port(port, proc)
        with smtplib.SMTP("127.0.0.1", int(ports["2601"])) as s:
            s.sendmail("me@example.test", ["u@c.test"], b"Subject: via a and b\r\n\r\nhi\r\n")
            s.sendmail("me@example.test", ["x@dialup.test"], b"Subject: held\r\n\r\nhi\r\n")
        new = tmp_path / "c-data" / "mail" / "c.test" / "u" / "new"
        [delivered] = wait_until(
            lambda: new.is_dir() and list(new.iterdir()), what="the message relayed through a and b at c"
        )
        assert delivered.read_bytes().count(b"Received: from ") == 3
        assert len(list((tmp_path / "a-data" / "spool" / "queue").glob("*.json"))) == 1  # the held one
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)
