"""The packages are floors: each imports only from the floors below it, and no
module imports itself round a cycle, not even for type hints.

``engine`` (sans-IO SMTP) < ``peer`` (the Twisted protocol) < ``store``
(durable storage) < ``policy`` (receiving decisions) < ``relay`` (sending)
< ``service`` (the running product).  A lower floor that needs something from
a higher one takes it as an argument (the hooks), never by import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "smtppeer"

FLOORS = {
    "smtppeer.twisted_private": 0,
    "smtppeer.engine": 0,
    "smtppeer.peer": 1,
    "smtppeer.store": 2,
    "smtppeer.policy": 3,
    "smtppeer.relay": 4,
    "smtppeer.service": 5,
    "smtppeer.lab": 6,
    "smtppeer.testing": 7,
    "smtppeer.__main__": 8,
    "smtppeer.app": 8,
    "smtppeer": 0,  # the package's __init__: its version only
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every smtppeer module ``name`` imports, anywhere in the file (type-checking
    blocks and function bodies included)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import module`` depends on that module; ``from pkg import name`` on pkg
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for target in targets:
            if target in known:
                found.add(target)
    found.discard(name)
    return found


def floor_of(name: str) -> tuple[int, str]:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return FLOORS[prefix], prefix
    raise AssertionError(f"{name} is on no floor: add its package to FLOORS")


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_every_module_is_on_a_floor():
    for name in all_modules():
        floor_of(name)


def test_imports_go_only_downward():
    upward = []
    for name, targets in graph().items():
        floor, _ = floor_of(name)
        for target in targets:
            target_floor, _ = floor_of(target)
            if target_floor > floor:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports going up a floor:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    """Tarjan's strongly connected components: any with two modules is a cycle."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("floor", ["smtppeer.engine"])
def test_the_engine_does_no_io_and_reads_no_clock(floor):
    """The sans-IO promise, checked: no Twisted, sockets, files, threads or clocks."""
    forbidden = {"twisted", "socket", "os", "time", "threading", "asyncio", "selectors", "io", "datetime"}
    found = []
    for name, path in all_modules().items():
        if not name.startswith(floor):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            roots = []
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                roots = ["open()"]
            found += [f"{name}: {root}" for root in roots if root in forbidden or root == "open()"]
    assert not found, "I/O or clocks in the engine:\n" + "\n".join(found)
