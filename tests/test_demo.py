"""`python -m lifecycle demo [--shop]`: the README's first command works and shows the difference.

``--shop`` runs examples/shop's demo where it can (a checkout, the dev extra,
redis-server or ``REDIS_URL``), and otherwise exits 2 naming what is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle._demo import shop

ROOT = Path(__file__).resolve().parent.parent
BOUND = 20.0
"""Seconds a wait here may take (the shop's demo: three of them, as in test_example_shop)."""


def demo_shop(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m lifecycle demo --shop`` in the repository, REDIS_URL unset, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", "demo", "--shop"],
        cwd=ROOT,
        env={**base, "TMPDIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=3 * BOUND,
        check=False,
    )


@pytest.mark.process
def test_demo_shows_naive_loss_and_managed_zero():
    """The demo runs both servers under load; the managed one loses nothing and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "lifecycle", "demo"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        line.split()[0]: line.split()
        for line in done.stdout.splitlines()
        if line[:7] in ("naive  ", "managed")
    }
    naive, managed = rows["naive"], rows["managed"]
    # columns: server sent ok lost refused shutdown exit ...
    assert int(naive[3]) > 0, done.stdout
    assert int(managed[3]) == 0, done.stdout
    assert managed[6] == "0", done.stdout
    assert '"shutdown_reason": "signal SIGTERM"' in done.stdout
    # Its last lines point at the realistic service.
    assert "python -m lifecycle demo --shop" in "\n".join(done.stdout.splitlines()[-3:])


@pytest.mark.process
def test_shop_without_redis_exits_2_naming_it(tmp_path: Path) -> None:
    """No redis-server on PATH and no REDIS_URL: one message, the install command, nothing run."""
    empty = tmp_path / "bin"
    empty.mkdir()
    done = demo_shop(tmp_path, PATH=str(empty))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "", done.stdout  # nothing started
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "redis-server is not on PATH and REDIS_URL is not set" in done.stderr
    assert "apt-get install redis-server" in done.stderr


@pytest.mark.process
def test_shop_outside_a_checkout_exits_2_naming_it(tmp_path: Path) -> None:
    """Another ``examples`` package first on the path (no shop in it): named, with the fix."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "__init__.py").write_text("")
    done = demo_shop(tmp_path, PYTHONPATH=str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "", done.stdout
    assert "examples.shop is not importable" in done.stderr
    assert "pip install -e '.[dev]'" in done.stderr


def test_missing_names_each_package_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that cannot be imported (None in sys.modules) is named with the dev extra."""
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.setitem(sys.modules, "redis", None)
    lacking = shop.missing({"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": ""})
    assert [m for m in lacking if "not installed" in m] == [
        "fastapi, redis not installed: pip install -e '.[dev]'"
    ]
    assert not [m for m in lacking if "redis-server" in m]  # REDIS_URL stands in for it


@pytest.mark.process
def test_shop_demo_runs_and_loses_nothing(tmp_path: Path) -> None:
    """Where everything is there, --shop is the shop's demo: 0 lost, exit code 0."""
    lacking = shop.missing({"PATH": os.environ.get("PATH", "")})
    if lacking:
        pytest.skip("; ".join(lacking))
    done = demo_shop(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    sent = re.search(r"requests sent (\d+), answered (\d+) .*, lost (\d+)", done.stdout)
    assert sent, done.stdout
    assert int(sent[1]) == int(sent[2]) > 0, done.stdout
    assert sent[3] == "0", done.stdout
    orders = re.search(r"orders accepted (\d+), shipped (\d+) .* lost (\d+)", done.stdout)
    assert orders, done.stdout
    assert orders[1] == orders[2] != "0", done.stdout
    assert orders[3] == "0", done.stdout
    assert "exit code 0;" in done.stdout
    assert (tmp_path / shop.TIMELINE_FILE).exists() or "timeline: skipped" in done.stdout
