"""The README's configuration-file commands run exactly as printed, on a fresh checkout."""

from __future__ import annotations

import re
import shlex
import shutil

from .conftest import REPO, smtppeer

README = (REPO / "README.rst").read_text()


def check_config_commands() -> list[list[str]]:
    """The literal block after "Check a file without starting anything", one command a line."""
    match = re.search(r"Check a file without starting anything.*?::\n\n((?:    [^\n]*\n)+)", README, re.S)
    assert match, "the README lost its check-config example"
    return [shlex.split(line) for line in match.group(1).splitlines()]


def test_readme_check_config_commands_run_as_written(tmp_path):
    commands = check_config_commands()
    assert [c[:2] for c in commands] == [["smtppeer", "make-cert"], ["smtppeer", "check-config"]]
    shutil.copytree(
        REPO / "examples", tmp_path / "examples"
    )  # a checkout: examples/ under the working directory
    for argv in commands:
        done = smtppeer(*argv[1:], cwd=tmp_path, text=True, timeout=120)
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stderr}"
    assert done.stdout.startswith("examples/provider.toml: ok\n")


def test_gitignore_covers_what_twistd_leaves_in_a_checkout():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "twistd.pid" in ignored and "twistd.log" in ignored
