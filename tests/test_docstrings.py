"""Every public name has a docstring with an example, and every ``>>>`` example of them runs."""

from __future__ import annotations

import doctest
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import lifecycle
import lifecycle.testing
import lifecycle.timeline

# Constants are documented in docs/reference.md and in their module's docstring.
MODULES = [lifecycle, lifecycle.timeline, lifecycle.testing]


def public() -> Iterator[tuple[str, Any]]:
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj


PUBLIC = dict(public())


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_has_an_example(name: str) -> None:
    doc = inspect.getdoc(PUBLIC[name]) or ""
    assert doc, f"{name} has no docstring"
    assert "Example" in doc or ">>>" in doc, f"{name}'s docstring has no example"


def _doctests() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder(recurse=False)
    found = {}
    for name, obj in PUBLIC.items():
        globs = {**vars(sys.modules[obj.__module__]), "lifecycle": lifecycle}
        for test in finder.find(obj, name, globs=globs):
            if test.examples:
                found[name] = test
    return found


DOCTESTS = _doctests()


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_every_interactive_example_runs(name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    result = runner.run(DOCTESTS[name], out=out.append)
    assert result.failed == 0, "".join(out)
