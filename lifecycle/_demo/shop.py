"""``python -m lifecycle demo --shop``: the realistic service's SIGTERM demo, when it can run.

The shop (``examples/shop`` in the repository: FastAPI on uvicorn, Redis
Streams, SQLite, a mailer) is sent SIGTERM under load by its own demo
(``python -m examples.shop demo``), which prints the requests and orders it
lost. It needs what a plain ``pip install -e .`` does not bring: the
repository's checkout (``examples.shop`` importable), the packages of the
``dev`` extra, and ``redis-server`` on ``PATH`` (or ``REDIS_URL`` naming a
Redis). Without one of them `main` runs nothing: it prints one message naming
each missing piece and the command that brings it, and returns 2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping

__all__ = ["main", "missing"]

PACKAGES = ("fastapi", "uvicorn", "redis")
"""The packages the shop imports beyond lifecycle's own (all in the ``dev`` extra)."""
TIMELINE_FILE = "lifecycle-shop-timeline.svg"  # in the temporary folder, as the plain demo's
USAGE = 2


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        return False


def missing(environ: Mapping[str, str] | None = None) -> list[str]:
    """What the shop's demo lacks here, each with the command that brings it; [] when it can run.

    ``environ`` defaults to `os.environ` (``REDIS_URL`` and ``PATH`` are read).

    Example::

        for piece in missing():
            print("missing:", piece)
    """
    env = os.environ if environ is None else environ
    lacking = []
    if not _importable("examples.shop"):
        lacking.append(
            "examples.shop is not importable: run the command in a checkout of the "
            "lifecycle repository (the folder holding examples/shop), after "
            "pip install -e '.[dev]'"
        )
    packages = [name for name in PACKAGES if not _importable(name)]
    if packages:
        lacking.append(f"{', '.join(packages)} not installed: pip install -e '.[dev]'")
    if not env.get("REDIS_URL") and shutil.which("redis-server", path=env.get("PATH")) is None:
        lacking.append(
            "redis-server is not on PATH and REDIS_URL is not set: apt-get install "
            "redis-server (or set REDIS_URL=redis://host:6379/0)"
        )
    return lacking


def main() -> int:
    """Run the shop's demo and return its exit code (0: nothing lost); 2 if it cannot run here.

    Example::

        sys.exit(main())   # python -m lifecycle demo --shop
    """
    lacking = missing()
    if lacking:
        print(
            "lifecycle demo --shop cannot run here; "
            + "; ".join(lacking)
            + ". (python -m lifecycle demo needs none of this.)",
            file=sys.stderr,
        )
        return USAGE
    # By name: the shop is no part of the package (mypy checks it as a tree of its own).
    run_demo: Callable[..., int] = importlib.import_module("examples.shop.demo").run_demo

    print(
        "SIGTERM under load, on a realistic service: examples/shop (FastAPI on uvicorn, "
        "Redis Streams, SQLite, a mailer).\n",
        flush=True,
    )
    return run_demo(timeline=os.path.join(tempfile.gettempdir(), TIMELINE_FILE))
