"""The README's examples run: the smtplib snippet and the Maildir reader work as printed."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import REPO

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
