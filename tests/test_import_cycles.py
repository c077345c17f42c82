"""No import cycles inside a package: each of `agent`, `fleet`, `shared` and `simulators`
imports its own modules as a directed acyclic graph.

A cycle means two modules own one concept between them, and it breaks as soon as one
of them is imported first; hiding it behind an import inside a function only moves the
failure to run time. So imports inside functions count here too. Imports under
``if TYPE_CHECKING:`` do not: they never run.

The graph is read with `ast`, without importing anything: ``import a.b``, ``from a
import b`` (an edge to the submodule ``a.b`` if it is one, else to the package ``a``)
and relative imports, resolved against the importing module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("agent", "fleet", "shared", "simulators")

Graph = dict[str, set[str]]


def _module_names(folder: Path, package: str) -> dict[str, Path]:
    """Every module under ``folder`` by dotted name, ``folder`` itself being ``package``."""
    modules: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import in ``node``, at any depth, except under ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _import_nodes(child)


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` (read from ``path``) imports."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            anchor = module.split(".")
            if not is_package:
                anchor.pop()
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            found.add(submodule if submodule in known else base)
    return (found & known) - {module}


def import_graph(folder: Path, package: str) -> Graph:
    """Which module of ``package`` (the tree at ``folder``) imports which of its others."""
    modules = _module_names(folder, package)
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules, sorted.

    Tarjan's algorithm finds the groups; a breadth-first search inside each names one
    concrete cycle through its first module, which is enough to point at the fix.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_cycle_through(min(group), group, graph) for group in groups)


def _cycle_through(start: str, group: set[str], graph: Graph) -> list[str]:
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node] & group):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{sorted(group)} is strongly connected but has no cycle")


@pytest.mark.parametrize("side", SIDES)
def test_package_has_no_import_cycle(side: str) -> None:
    cycles = find_cycles(import_graph(ROOT / side, f"edgefleet.{side}"))
    shown = "\n".join("  " + " -> ".join(cycle) for cycle in cycles)
    assert not cycles, f"import cycles in {side}/ (move the shared piece to its owner):\n{shown}"


def test_the_detector_sees_cycles_however_they_are_written(tmp_path: Path) -> None:
    """The check above would pass on a graph it cannot read: make sure it can fail."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def later() -> None:\n    from .sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import a\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.e\n",
        "e.py": "import pkg.d\nimport pkg.f\n",
        "f.py": "from pkg.sub import c\nimport pkg.g as g\n",
        "g.py": "from pkg import NAME\nfrom . import e\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)

    graph = import_graph(pkg, "pkg")

    assert graph["pkg.b"] == {"pkg.sub.c"}  # inside a function, relative
    assert graph["pkg.sub.c"] == {"pkg.a"}  # `from .. import a`: the submodule
    assert graph["pkg.d"] == set()  # under TYPE_CHECKING
    assert graph["pkg.g"] == {"pkg", "pkg.e"}  # `NAME` is not a module: the package
    assert find_cycles(graph) == [
        ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"],
        ["pkg.e", "pkg.f", "pkg.g", "pkg.e"],
    ]
