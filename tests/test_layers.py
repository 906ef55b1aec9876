"""The package's layers: arrows point one way, and the core stays sans-I/O."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "lifecycle"

# What each private layer may import from the others.
ALLOWED = {
    "_core": {"_core"},
    "_serving": {"_core", "_serving"},
    "_workers": {"_core", "_workers"},
    "_runtime": {"_core", "_runtime", "_serving", "_workers"},
    "_tools": {"_core", "_runtime", "_serving", "_workers", "_tools"},
    "_demo": {"_core", "_runtime", "_serving", "_workers", "_tools", "_demo"},
}
# The scheduler, graph and states never touch threads, loops, signals or the clock.
SANS_IO = {"scheduler.py", "graph.py", "states.py", "errors.py"}
RUNTIME_MODULES = {"threading", "asyncio", "signal", "time", "concurrent", "socket", "selectors"}


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """(absolute module name within lifecycle or the top-level name, level) of each import."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def _layer_of(path: pathlib.Path, module: str, level: int) -> str | None:
    """The private layer an import points into, or None for the outside world."""
    if level == 0:
        parts = module.split(".")
        return parts[1] if parts[0] == "lifecycle" and len(parts) > 1 else None
    here = path.relative_to(PACKAGE).parts[:-1]  # ("_core",) or ()
    base = list(here[: len(here) - (level - 1)]) if level > 1 else list(here)
    target = [*base, *[p for p in module.split(".") if p]]
    return target[0] if target else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_only(path):
    """A module imports only from its own layer and the layers below it."""
    layer = path.relative_to(PACKAGE).parts[0]
    allowed = ALLOWED[layer]
    wrong = [
        (module, level)
        for module, level in _imports(path)
        if (target := _layer_of(path, module, level)) is not None and target not in allowed
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "path", [PACKAGE / "_core" / name for name in sorted(SANS_IO)], ids=lambda p: p.name
)
def test_core_is_sans_io(path):
    """The scheduler, graph, states and errors import no thread, loop, signal or clock."""
    used = {m.split(".")[0] for m, level in _imports(path) if level == 0}
    assert used & RUNTIME_MODULES == set()


def test_only_the_command_line_imports_the_demo():
    """The demo is no part of the library: only ``__main__`` reaches it."""
    users = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.parent.name != "_demo"
        and any(_layer_of(p, m, lv) == "_demo" for m, lv in _imports(p))
    ]
    assert users == ["__main__.py"]
