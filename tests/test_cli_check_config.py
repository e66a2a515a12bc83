"""``smtppeer check-config FILE`` as an administrator runs it: a real process, exit status and output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smtppeer import __version__
from smtppeer.cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, main

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def smtppeer(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "smtppeer.cli", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_good_file():
    result = smtppeer("check-config", "examples/dialup.toml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "examples/dialup.toml: ok"
    summary = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines[1:]}
    assert summary["hostname"] == "dialup.example.org"
    assert summary["listeners"] == "tcp:2527:interface=127.0.0.1 (smtp)"
    assert summary["domains"] == "dialup.example.org (2 users, 2 aliases)"
    assert summary["routes"] == "* -> peer:provider"
    assert summary["holds"] == "(none)"
    assert summary["peers"] == "provider (for provider.example.org; at tcp:host=127.0.0.1:port=2526)"
    assert summary["polls"] == "provider every 5m ±10% (turn)"


@pytest.mark.parametrize("name", ["single-host.toml", "provider.toml", "dialup.toml"])
def test_every_example_checks(name):
    result = smtppeer("check-config", str(EXAMPLES / name))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{EXAMPLES / name}: ok\n")


def test_summary_never_shows_a_password(tmp_path):
    (tmp_path / "p.toml").write_text(
        '[peers.p]\naddresses = ["192.0.2.1"]\nusername = "u"\npassword = "s3cret"\n'
    )
    result = smtppeer("check-config", "p.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "p (from 192.0.2.1; as u)" in result.stdout
    assert "s3cret" not in result.stdout


def test_bad_file(tmp_path):
    (tmp_path / "smtppeer.toml").write_text(
        '[[listen]]\nendpoint = "tcp:2525"\n[[listen]]\nendpoint = "tcp:2525"\n'
    )
    result = smtppeer("check-config", "smtppeer.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == 'smtppeer.toml: listen[1].endpoint: "tcp:2525" duplicates listen[0]\n'


def test_unknown_peer_in_route(tmp_path):
    (tmp_path / "smtppeer.toml").write_text('[routes]\n"*" = "peer:provider"\n')
    result = smtppeer("check-config", "smtppeer.toml", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert (
        result.stderr
        == 'smtppeer.toml: routes."*": no peer named "provider" (there is no [peers.NAME] table)\n'
    )


def test_syntax_error_and_missing_file(tmp_path):
    (tmp_path / "broken.toml").write_text('hostname = "a.example"\n[limits\nrecipients = 100\n')
    result = smtppeer("check-config", "broken.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "broken.toml: line 2, column 8: TOML syntax error: Expected ']' at the end of a table declaration\n"
    )
    result = smtppeer("check-config", "missing.toml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "missing.toml: no such file\n")


def test_usage_errors():
    result = smtppeer("check-config")
    assert result.returncode == 64
    assert result.stderr.splitlines()[-1] == "Try 'smtppeer check-config --help'."
    result = smtppeer("check-config", "a.toml", "b.toml")
    assert result.returncode == 64
    result = smtppeer()
    assert result.returncode == 64
    assert "give a command (check-config, send, queue, poll, make-cert)" in result.stderr
    result = smtppeer("frobnicate")
    assert (result.returncode, result.stdout) == (64, "")
    assert "Unknown command: frobnicate" in result.stderr


def test_help():
    result = smtppeer("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: smtppeer COMMAND")
    assert "check-config" in result.stdout
    result = smtppeer("check-config", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: smtppeer check-config FILE\n")
    result = smtppeer("--version")
    assert (result.returncode, result.stdout) == (0, f"smtppeer {__version__}\n")


def test_main_in_process(tmp_path):
    """``main()`` returns the status (for the console script) and writes where it is told."""
    out, err = io.StringIO(), io.StringIO()
    assert main(["check-config", str(EXAMPLES / "provider.toml")], out, err) == EXIT_OK
    assert "holds:" in out.getvalue() and err.getvalue() == ""
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nrecipients = 10\n")
    out, err = io.StringIO(), io.StringIO()
    assert main(["check-config", str(bad)], out, err) == EXIT_CONFIG
    assert (
        err.getvalue() == f"{bad}: limits.recipients: 10 is too small: at least 100 (RFC 5321 §4.5.3.1.8)\n"
    )
    assert main([], io.StringIO(), io.StringIO()) == EXIT_USAGE
