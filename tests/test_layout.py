"""The shape of the code: no import circle between tunefleet's subpackages, and no source file
over 600 lines (docs/architecture.md). Every import counts, including those inside functions
and under ``TYPE_CHECKING``: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tunefleet"
MAX_LINES = 600


def _unit(module: str) -> str:
    """The unit a module belongs to: its subpackage (``tunefleet.hub``), or itself for a
    top-level module (``tunefleet._api``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tunefleet"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("tunefleet"):
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("tunefleet.") and " " not in node.value:
            found.add(node.value.split(":")[0])  # lazy tables: "tunefleet.hub._run"
    return found


def _graph() -> dict[str, set[str]]:
    # The package's own __init__ (``import tunefleet``) is the facade above everything: it is
    # not a unit (``from tunefleet import _attrs`` depends on ``tunefleet._attrs``).
    units = {_unit(_module_name(p)) for p in SRC.rglob("*.py")} - {"tunefleet"}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in SRC.rglob("*.py"):
        me = _unit(_module_name(path))
        if me not in units:
            continue
        for name in _imports(path):
            other = _unit(name)
            if other != me and other in units:
                graph[me].add(other)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_between_subpackages():
    graph = _graph()
    assert graph["tunefleet.hub"], "the import scan found nothing: the test is broken"
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_scan_sees_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("arrow", [("tunefleet.hub", "tunefleet.backends"),
                                   ("tunefleet.hub", "tunefleet.cli"),
                                   ("tunefleet.transport", "tunefleet.hub"),
                                   ("tunefleet.backends", "tunefleet.cli")])
def test_arrows_point_down(arrow):
    low, high = arrow
    assert high not in _graph()[low], f"{low} imports {high}"


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
