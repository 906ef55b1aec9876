"""The examples in README.md and docs/ are executed, so that they stay true.

Convention: every Python example is a ```python block, and runs (blocks of
one page share a namespace, in order; ``if __name__ == "__main__":`` becomes
``if False:``, so a program's entry point is shown, not served). There are
no illustrative fragments: a ```py block fails `test_no_unrun_python_blocks`.
A page whose blocks import an optional integration (fastapi, uvicorn, grpc,
aiohttp, redis, gunicorn, ...) is skipped, naming the missing module and the
extra that installs it, only when that module cannot be imported. YAML
blocks are parsed; ``sh``, ``text`` and the other blocks are not run.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
YAML_BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.S | re.M)
# Any fenced block whose info string is another spelling of Python.
UNRUN_PYTHON = re.compile(r"^```\s*(py|python3|pycon|ipython)\s*$", re.M)
# Module a page's blocks import -> what installs it.
OPTIONAL = {
    "fastapi": "pip install -e '.[dev]'",
    "starlette": "pip install -e '.[dev]'",
    "uvicorn": "pip install 'lifecycle[uvicorn]'",
    "grpc": "pip install 'lifecycle[grpc]'",
    "aiohttp": "pip install 'lifecycle[aiohttp]'",
    "redis": "pip install 'lifecycle[redis]'",
    "gunicorn": "pip install 'lifecycle[gunicorn]'",
    "yaml": "pip install 'lifecycle[k8s]'",
    "flask": "pip install flask",
    "django": "pip install django",
}
# lifecycle's integration modules import their package at once.
INTEGRATION = {
    "lifecycle.uvicorn": "uvicorn",
    "lifecycle.grpc": "grpc",
    "lifecycle.aiohttp": "aiohttp",
    "lifecycle.redis": "redis",
    "lifecycle.gunicorn": "gunicorn",
}
IMPORT = re.compile(r"^\s*(?:import|from)\s+([\w.]+)", re.M)


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def _needs(blocks: list[str]) -> list[str]:
    """The optional modules the blocks import, in a stable order."""
    needed: set[str] = set()
    for code in blocks:
        for name in IMPORT.findall(code):
            needed.add(INTEGRATION.get(name, name.split(".")[0]))
            needed.update(v for k, v in INTEGRATION.items() if name.startswith(k + "."))
    return sorted(needed & OPTIONAL.keys())


def _skip_unless_importable(page: Path, modules: list[str]) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(
                f"{page.name} imports {module}, which is not installed: {OPTIONAL[module]}"
            )


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page: Path) -> None:
    """Every ```python block of the page runs without error, in order."""
    blocks = _blocks(page)
    _skip_unless_importable(page, _needs(blocks))
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for i, code in enumerate(blocks):
        # A main guard is the user's entry point, not something to run here.
        runnable = code.replace('if __name__ == "__main__":', "if False:")
        exec(compile(runnable, f"{page.name}[block {i}]", "exec"), namespace)


def test_no_unrun_python_blocks() -> None:
    """No page shows Python that the suite does not run (a ```py block)."""
    found: list[str] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found.extend(
            f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
            for m in UNRUN_PYTHON.finditer(text)
        )
    assert not found, (
        "these blocks are Python that tests/test_docs.py does not run; make each a "
        f"complete ```python block (guard a server with if __name__ == '__main__':): {found}"
    )


def test_needs_sees_integrations() -> None:
    """A page is skipped for what its blocks import, lifecycle's integrations included."""
    assert _needs(["import lifecycle.grpc\nfrom fastapi import FastAPI\nimport json"]) == [
        "fastapi",
        "grpc",
    ]
    assert _needs(["    from lifecycle.redis import StreamSource"]) == ["redis"]
    assert _needs(["import lifecycle\nimport socket"]) == []


def _yaml_pages() -> list[Path]:
    return [p for p in PAGES if YAML_BLOCK.search(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page", _yaml_pages(), ids=lambda p: p.name)
def test_page_yaml_parses(page: Path) -> None:
    """Every ```yaml block parses; a Kubernetes manifest names its apiVersion and kind."""
    yaml = pytest.importorskip("yaml", reason=f"{OPTIONAL['yaml']} to parse {page.name}")
    for i, text in enumerate(YAML_BLOCK.findall(page.read_text(encoding="utf-8"))):
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as error:
            pytest.fail(f"{page.name} yaml block {i} does not parse: {error}")
        assert documents, f"{page.name} yaml block {i} is empty"
        for doc in documents:
            if isinstance(doc, dict) and ("kind" in doc or "apiVersion" in doc):
                assert {"apiVersion", "kind"} <= doc.keys(), (page.name, i, sorted(doc))
