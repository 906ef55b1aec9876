"""The documentation site builds with ``mkdocs build --strict`` and is complete.

One build per session (a module-scoped fixture), run in a subprocess whose
imports of the optional extras (uvicorn, gunicorn, grpc, aiohttp, redis)
fail: the API pages are read from the sources, so a docs build needs none of
them. Skipped only when mkdocs is not installed and ``LIFECYCLE_REQUIRE_DOCS``
is unset; CI sets it, so there a missing mkdocs fails.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import lifecycle

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 240.0

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 60)

# Pages of docs/ deliberately left out of the nav, each with the reason.
NOT_IN_NAV: dict[str, str] = {}

# The extras a docs build must not need: importing any of them fails in the build.
BLOCKED_EXTRAS = ("uvicorn", "gunicorn", "grpc", "grpc_health", "aiohttp", "redis", "fastapi")

_BOOT = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class _NoExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"the docs build imported {name!r}: read it statically")
        return None
sys.meta_path.insert(0, _NoExtras())
from mkdocs.__main__ import cli
sys.argv = ["mkdocs", *sys.argv[2:]]
cli()
"""


@dataclass(frozen=True)
class Build:
    returncode: int
    output: str
    site: Path

    def page(self, src: str) -> str:
        """The built HTML of ``docs/<src>`` (``api/app.md`` -> ``api/app/index.html``)."""
        stem = src.removesuffix(".md")
        built = self.site / (
            f"{stem}.html" if stem == "index" or stem.endswith("/index") else f"{stem}/index.html"
        )
        assert built.is_file(), f"{src} was not built ({built} is missing)"
        return built.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("LIFECYCLE_REQUIRE_DOCS"):
            pytest.fail(
                "LIFECYCLE_REQUIRE_DOCS is set but mkdocs is not installed: "
                "pip install -e '.[docs]'"
            )
        pytest.skip(
            "mkdocs is not installed (pip install -e '.[docs]'); "
            "set LIFECYCLE_REQUIRE_DOCS to fail instead"
        )
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _BOOT,
            ",".join(BLOCKED_EXTRAS),
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    return Build(proc.returncode, proc.stdout + proc.stderr, site)


def _nav_pages() -> list[str]:
    """Every page the nav of mkdocs.yml names, read with mkdocs' own loader."""
    from mkdocs.config import load_config  # noqa: PLC0415  (only when mkdocs is installed)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mkdocs' plugins may warn about their own deprecations
        config = load_config(str(ROOT / "mkdocs.yml"))
    pages: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            pages.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return pages


def _static_all(module_file: Path) -> list[str]:
    """A module's ``__all__``, read from its source (its extra need not be installed)."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, list | tuple), f"{module_file.name}: __all__ is not a list"
            return [str(v) for v in value]
    raise AssertionError(f"{module_file.name} has no literal __all__")


def _public_submodules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "lifecycle").glob("*.py") if not p.stem.startswith("_"))


def _anchors(page_html: str) -> set[str]:
    return set(re.findall(r'id="(lifecycle\.[\w.]+)"', page_html))


def _require_built(build: Build) -> None:
    if build.returncode != 0:
        pytest.fail("the site did not build: see test_site_builds_strict", pytrace=False)


def test_site_builds_strict(build: Build) -> None:
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.output[-6000:]}"


def test_every_docs_page_is_in_the_nav() -> None:
    if importlib.util.find_spec("mkdocs") is None and not os.environ.get("LIFECYCLE_REQUIRE_DOCS"):
        pytest.skip("mkdocs is not installed")
    nav = _nav_pages()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    missing = [p for p in pages if p not in nav and p not in NOT_IN_NAV]
    assert not missing, f"pages in docs/ but not in the nav of mkdocs.yml: {missing}"
    dangling = [p for p in nav if not (DOCS / p).is_file()]
    assert not dangling, f"the nav names pages that do not exist: {dangling}"
    assert "README.md" not in nav


def test_api_pages_document_every_public_name(build: Build) -> None:
    _require_built(build)
    api = sorted((DOCS / "api").glob("*.md"))
    rendered: set[str] = set()
    for page in api:
        rendered |= _anchors(build.page(f"api/{page.name}"))
    missing = sorted(set(lifecycle.__all__) - {a.removeprefix("lifecycle.") for a in rendered})
    assert not missing, f"names of lifecycle.__all__ with no rendered entry in docs/api/: {missing}"


@pytest.mark.parametrize("module", _public_submodules())
def test_each_public_submodule_has_an_api_page(build: Build, module: str) -> None:
    _require_built(build)
    page = DOCS / "api" / f"{module}.md"
    assert page.is_file(), (
        f"lifecycle.{module} is public but has no API page: create docs/api/{module}.md "
        f"('::: lifecycle.{module}') and add it to the nav of mkdocs.yml"
    )
    anchors = _anchors(build.page(f"api/{module}.md"))
    names = _static_all(ROOT / "lifecycle" / f"{module}.py")
    missing = [n for n in names if f"lifecycle.{module}.{n}" not in anchors]
    assert not missing, f"docs/api/{module}.md renders no entry for {missing}"


def test_api_pages_show_examples_as_code(build: Build) -> None:
    """The docstrings' ``Example::`` blocks come out as a heading and Python code."""
    _require_built(build)
    app = build.page("api/app.md")
    assert "Example::" not in app
    assert "<strong>Example</strong>" in app
    assert 'class="highlight"' in app


def test_home_page_has_the_measured_loss_table(build: Build) -> None:
    _require_built(build)
    index = html.unescape(re.sub(r"<[^>]+>", "", build.page("index.md")))
    assert "lost per roll" in index
    benchmarks = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    source = (DOCS / "index.md").read_text(encoding="utf-8")
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in source.splitlines()
        if line.startswith("| ") and "lost per roll" not in line
    ]
    assert len(rows) >= 4, "the home page's loss table is missing"
    for baseline, lost, _, lifecycle_lost in rows:
        # Every number on the home page is one measured in docs/benchmarks.md.
        assert lost in benchmarks, f"home page: {baseline} lost {lost!r}, not in benchmarks.md"
        assert lifecycle_lost.startswith("**0"), f"home page: lifecycle's row for {baseline}"
        assert lost in index, f"the built home page lacks {lost!r}"
        assert baseline.replace("`", "") in index, f"the built home page lacks {baseline!r}"
