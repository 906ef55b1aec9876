"""The examples in README.md and docs/ are executed, so that they stay true.

Convention: a ```python block runs (blocks of one file share a namespace, in
order); a ```py block is an illustrative fragment and does not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page: Path) -> None:
    """Every ```python block of the page runs without error, in order."""
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for i, code in enumerate(_blocks(page)):
        # A main guard is the user's entry point, not something to run here.
        runnable = code.replace('if __name__ == "__main__":', "if False:")
        exec(compile(runnable, f"{page.name}[block {i}]", "exec"), namespace)
