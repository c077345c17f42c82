"""The import rules of the design: `edgefleet.shared` never imports the agent or the
fleet; the agent never imports the fleet (a device installs no FastAPI or SQLModel); the
fleet never imports the agent; and nothing imports the old top-level names (`agent`,
`fleet`, `shared`, `simulators`), which the distribution no longer installs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("agent", "fleet", "shared", "simulators")
FORBIDDEN = {"shared": {"agent", "fleet"}, "agent": {"fleet"}, "fleet": {"agent"}}


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _sides_imported(path: Path) -> set[str]:
    """The edgefleet sides (``agent``, ``fleet``, ...) that ``path`` imports."""
    return {
        module.split(".")[1]
        for module in _imported_modules(path)
        if module.startswith("edgefleet.") and module.count(".") >= 1
    }


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_design_allows(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_sides_imported(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offenders = {path: bad for path, bad in offenders.items() if bad}
    assert not offenders, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {offenders}"


@pytest.mark.parametrize("folder", [*SIDES, "tests"])
def test_nothing_imports_the_old_top_level_names(folder: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            module for module in _imported_modules(path) if module.split(".")[0] in SIDES
        )
        for path in sorted((ROOT / folder).rglob("*.py"))
    }
    offenders = {path: bad for path, bad in offenders.items() if bad}
    assert not offenders, f"import these as edgefleet.<side>: {offenders}"


def test_the_rules_see_a_forbidden_import(tmp_path: Path) -> None:
    """The checks above would pass on a tree they cannot read: make sure they can fail."""
    module = tmp_path / "m.py"
    module.write_text("from edgefleet.fleet.store import engine\nimport agent.daemon\n")
    assert _sides_imported(module) == {"fleet"}
    assert "agent.daemon" in _imported_modules(module)
