"""README.rst's "Layout of the code" names every module, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code_map() -> dict[str, str]:
    """Each package's entry in the map: its text, keyed by package path."""
    text = (REPO / "README.rst").read_text()
    section = text.split("Layout of the code\n==================\n", 1)[1].split("\n=====", 1)[0]
    entries: dict[str, str] = {}
    for match in re.finditer(r"^``(smtppeer/[\w/]*)``\n((?:    .*\n|\n)+)", section, re.M):
        entries[match.group(1).rstrip("/")] = match.group(2)
    return entries


def test_every_module_is_in_the_map_under_its_package():
    entries = code_map()
    missing = []
    for path in sorted((REPO / "smtppeer").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        package = str(path.parent.relative_to(REPO))
        if f"``{path.name}``" not in entries.get(package, ""):
            missing.append(f"{package}/{path.name}")
    assert not missing, f"modules the README's code map does not name: {missing}"


def test_every_file_the_map_names_exists():
    ghosts = []
    for package, text in code_map().items():
        for name in re.findall(r"``(\w+\.py)``", text):
            if not (REPO / package / name).exists() and not (REPO / "twisted/plugins" / name).exists():
                ghosts.append(f"{package}/{name}")
    assert not ghosts, f"the README's code map names files that do not exist: {ghosts}"
