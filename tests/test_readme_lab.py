"""The README's Lab section runs as printed: its Python test example with the
pytest plugin, and its topology and shell commands against a real lab."""

from __future__ import annotations

import re
import textwrap

from .conftest import REPO

README = (REPO / "README.rst").read_text()
SECTION = README.split("Lab: a network of peers on one machine\n", 1)[1].split("\nOperations\n", 1)[0]


def block(language: str) -> str:
    match = re.search(rf"\.\. code-block:: {language}\n\n((?:    .*\n|\n)+)", SECTION)
    assert match, f"the README's Lab section lost its {language} example"
    return textwrap.dedent(match.group(1))


def test_the_python_example_passes_as_a_test_suite(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_readme_example=block("python"))
    result = pytester.runpytest_subprocess(
        "-p", "no:smtppeer", "-p", "pytest_smtppeer", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)
