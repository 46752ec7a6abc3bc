"""The package's floors (docs/architecture.md, "Floors"): no import cycle between modules, type-only
and function-level imports included, and no module importing from a floor above its own.

Read from the source with ``ast``, so nothing is imported and every import statement counts, wherever
it stands in the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nasdm_aug", "hovernet", "cli")

# lowest first; a module may import from its own floor and the floors below it. The first entry
# that prefixes a module's dotted name decides its floor.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("nasdm_aug.utils", "nasdm_aug.config", "nasdm_aug.types", "nasdm_aug.viz", "nasdm_aug.hardware"),
    ("nasdm_aug.data",),
    ("nasdm_aug.diffusion", "nasdm_aug.nets", "nasdm_aug.sampling", "nasdm_aug.mixing"),
    ("nasdm_aug.training",),
    ("nasdm_aug.generator", "hovernet"),
    ("nasdm_aug.metrics", "nasdm_aug.synthesize", "nasdm_aug.scoring"),
    ("nasdm_aug.export", "nasdm_aug.studies", "nasdm_aug.demo"),
    ("cli",),
)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module ``name`` lives in (``a.b.func`` -> ``a.b``), or None outside the project."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Project modules ``module`` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                if target:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(t for a in node.names if (t := _resolve(a.name)))
    found.discard(module)
    # importing a package's own __init__ from inside it (``from nasdm_aug import __version__``) is
    # part of the root floor, not a dependency on the package's contents
    found.discard("nasdm_aug")
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _floor(module: str) -> int | None:
    for i, floor in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in floor):
            return i
    return None


def _package_of(module: str) -> str:
    """A module's package: its own name for a package's ``__init__``, else its parent."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _find_cycle() -> list[str] | None:
    """One import cycle between modules, as the list of its modules, or None.

    A package's ``__init__`` importing its own submodules and a submodule importing names from its
    package's ``__init__`` are one unit, not a cycle, as Python resolves them (the ``__init__``
    runs first).
    """
    state: dict[str, int] = {}
    stack: list[str] = []

    def edges(m: str) -> set[str]:
        return {t for t in GRAPH[m] if not (MODULES[t].name == "__init__.py" and _package_of(m).startswith(t))}

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_every_module_has_a_floor():
    assert [m for m in MODULES if m != "nasdm_aug" and _floor(m) is None] == []


def test_no_import_cycle():
    cycle = _find_cycle()
    assert cycle is None, " -> ".join(cycle)


def test_no_upward_import():
    upward = sorted(f"{m} (floor {_floor(m)}) imports {t} (floor {_floor(t)})"
                    for m, targets in GRAPH.items() if m != "nasdm_aug"
                    for t in targets if _floor(t) is not None and _floor(t) > _floor(m))
    assert upward == []


@pytest.mark.parametrize("source, expected", [
    ("import nasdm_aug.studies.run\n", {"nasdm_aug.studies.run"}),
    ("from nasdm_aug.studies.registry import STUDY_REGISTRY\n", {"nasdm_aug.studies.registry"}),
    ("def f():\n    from hovernet.metrics import match_instances\n", {"hovernet.metrics"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nasdm_aug.data.store import PatchStore\n",
     {"nasdm_aug.data.store"}),
])
def test_imports_are_read_wherever_they_stand(tmp_path, monkeypatch, source, expected):
    """The reader sees function-level and type-only imports, so a cycle through them is caught."""
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "cli.probe", path)
    assert _imports("cli.probe") == expected


def test_a_cycle_is_found(monkeypatch):
    """Two modules importing each other are reported (the check can fail)."""
    monkeypatch.setitem(GRAPH, "nasdm_aug.utils", GRAPH["nasdm_aug.utils"] | {"nasdm_aug.config"})
    cycle = _find_cycle()
    assert cycle is not None and {"nasdm_aug.utils", "nasdm_aug.config"} <= set(cycle)
