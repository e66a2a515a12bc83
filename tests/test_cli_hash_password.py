"""``smtppeer hash-password``: an RFC 5803 SCRAM-SHA-256 hash for password_hash, from the real command."""

from __future__ import annotations

import io
import os
import pty
import select
import sys
import time

import pytest

from smtppeer.engine.sasl import Credentials, parse_secret
from smtppeer.service import cli
from smtppeer.service.configfile import loads_config

from .conftest import cli_env, smtppeer


def verifies(hashed: str, password: str) -> bool:
    return Credentials("someone", secret=parse_secret(hashed)).check_password(password)


def test_hash_from_standard_input():
    result = smtppeer("hash-password", stdin="correct horse battery staple\n", text=True)
    assert (result.returncode, result.stderr) == (0, "")
    [hashed] = result.stdout.splitlines()
    assert hashed.startswith("SCRAM-SHA-256$4096:")
    secret = parse_secret(hashed)
    assert secret.iterations == 4096 and len(secret.salt) >= 12
    assert verifies(hashed, "correct horse battery staple")
    assert not verifies(hashed, "correct horse battery staple\n")
    assert not verifies(hashed, "correct horse battery")


def test_the_hash_is_what_the_configuration_takes():
    hashed = smtppeer("hash-password", stdin="s3cret\n", text=True).stdout.strip()
    config = loads_config(f'[users.alice]\npassword_hash = "{hashed}"\n')
    assert config.users["alice"].password_hash == hashed


def test_one_line_only_and_crlf():
    hashed = smtppeer("hash-password", stdin="first line\nsecond line\n", text=True).stdout.strip()
    assert verifies(hashed, "first line") and not verifies(hashed, "second line")
    hashed = smtppeer("hash-password", stdin="windows\r\n", text=True).stdout.strip()
    assert verifies(hashed, "windows") and not verifies(hashed, "windows\r")
    hashed = smtppeer("hash-password", stdin="no newline", text=True).stdout.strip()
    assert verifies(hashed, "no newline")
    hashed = smtppeer("hash-password", stdin="  spaces kept  \n", text=True).stdout.strip()
    assert verifies(hashed, "  spaces kept  ") and not verifies(hashed, "spaces kept")


def test_salted_every_time():
    a = smtppeer("hash-password", stdin="same\n", text=True).stdout.strip()
    b = smtppeer("hash-password", stdin="same\n", text=True).stdout.strip()
    assert a != b and verifies(a, "same") and verifies(b, "same")


def test_iterations():
    result = smtppeer("hash-password", "--iterations", "8192", stdin="pw\n", text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SCRAM-SHA-256$8192:")
    assert parse_secret(result.stdout.strip()).iterations == 8192
    assert verifies(result.stdout.strip(), "pw")


def test_too_few_iterations_is_a_usage_error():
    result = smtppeer("hash-password", "--iterations", "1000", stdin="pw\n", text=True)
    assert (result.returncode, result.stdout) == (cli.EXIT_USAGE, "")
    assert "--iterations must be at least 4096" in result.stderr
    result = smtppeer("hash-password", "--iterations", "many", stdin="pw\n", text=True)
    assert result.returncode == cli.EXIT_USAGE


def test_empty_password_is_refused():
    for stdin in ("", "\n", "\r\n"):
        result = smtppeer("hash-password", stdin=stdin, text=True)
        assert (result.returncode, result.stdout) == (cli.EXIT_FAILED, ""), stdin
        assert result.stderr == "smtppeer hash-password: no password (an empty line)\n"


def test_a_password_saslprep_refuses():
    result = smtppeer("hash-password", stdin="bell\x07\n", text=True)
    assert (result.returncode, result.stdout) == (cli.EXIT_FAILED, "")
    assert result.stderr.startswith("smtppeer hash-password: ")


def test_help():
    result = smtppeer("hash-password", "--help", text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: smtppeer hash-password [--iterations N] < password\n")
    assert "hash-password" in smtppeer("--help", text=True).stdout


def _talk(fd: int, expect: bytes, timeout: float = 30.0) -> bytes:
    """Read from a pty until ``expect`` (or end of file); return everything read."""
    seen = b""
    deadline = time.monotonic() + timeout
    while expect not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"waited for {expect!r}, got {seen!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            break
        seen += chunk
    return seen


def _on_a_terminal(*answers: str) -> tuple[int, str]:
    """Run the real command on a pseudo-terminal, answer its prompts; (status, what the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and /dev/tty are the terminal
        try:
            os.execve(sys.executable, [sys.executable, "-m", "smtppeer", "hash-password"], cli_env())
        finally:
            os._exit(127)
    try:
        shown = b""
        for prompt, answer in zip((b"Password: ", b"Again: "), answers, strict=False):
            shown += _talk(fd, prompt)
            os.write(fd, answer.encode() + b"\n")
        shown += _talk(fd, b"\0")  # to the end
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode()


def test_prompts_twice_on_a_terminal():
    status, shown = _on_a_terminal("typed at a terminal", "typed at a terminal")
    assert status == 0, shown
    assert "typed at a terminal" not in shown  # getpass does not echo
    [hashed] = [line for line in shown.splitlines() if line.startswith("SCRAM-SHA-256$")]
    assert verifies(hashed.strip(), "typed at a terminal")


def test_the_two_must_agree_on_a_terminal():
    status, shown = _on_a_terminal("one thing", "another")
    assert status == cli.EXIT_FAILED
    assert "the two passwords differ" in shown and "SCRAM-SHA-256$" not in shown


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("answers, status", [(["pw", "pw"], 0), (["pw", "wp"], 1)])
def test_in_process_with_getpass(monkeypatch, answers, status):
    asked = iter(answers)
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: next(asked))
    options = cli.HashPasswordOptions()
    options.parseOptions([])
    out, err = io.StringIO(), io.StringIO()
    assert cli.hash_password(options, out, err, stdin=_Terminal()) == status
    if status == 0:
        assert verifies(out.getvalue().strip(), "pw") and err.getvalue() == ""
    else:
        assert out.getvalue() == "" and "differ" in err.getvalue()
