"""A soak: rolling restarts back to back, every lifecycle-managed server kind in turn, 0 lost.

One roll proves little about a race that loses a request one roll in ten.
This test rolls every server kind in turn, round-robin, until at least
``LIFECYCLE_SOAK_SECONDS`` (60 by default; 600 for the long soak) have passed
and each kind has rolled at least once, and prints one line per roll. Every
roll must lose nothing and every replica must exit 0.

Run the long soak with ``LIFECYCLE_SOAK_SECONDS=600 python -m pytest
tests/e2e/test_soak.py -s``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.roll import RollResult, rolling_restart

SERVERS = Path(__file__).parent / "servers"

# The server kinds: every replica script in tests/e2e/servers built on lifecycle.
KINDS = [
    "lc_http",
    "lc_wsgi",
    "lc_asyncio",
    "lc_uvicorn",
    "lc_fastapi",
    "lc_aiohttp",
    "lc_gunicorn_worker",
    "lc_exec_gunicorn",
]
# Shorter steps than the single-roll proofs (which use 5.25 s), so that more
# rolls fit: each replica drains 2 s, haproxy checks every 0.5 s.
STEP_INTERVAL = 3.75

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.process,
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not installed (apt-get install -y haproxy)",
    ),
]


def _soak_seconds() -> float:
    raw = os.environ.get("LIFECYCLE_SOAK_SECONDS", "60")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:
        raise ValueError(
            f"LIFECYCLE_SOAK_SECONDS must be a number of seconds in (0, 3600], got {raw!r}"
        )
    return seconds


# The soak's own bound plus one more roll of every kind (about 12 s each).
SOAK_TIMEOUT = int(_soak_seconds()) + 20 * len(KINDS) + 60


def _line(n: int, kind: str, result: RollResult, seconds: float) -> str:
    codes = ",".join(str(c) for c in result.exit_codes)
    return (
        f"{n:>4}  {kind:<20} {result.load.sent:>7} {result.lost:>5} "
        f"{result.max_shutdown_seconds:>9.2f} {codes:>8} {seconds:>7.1f}"
    )


@pytest.mark.timeout(SOAK_TIMEOUT)
def test_every_server_kind_rolls_back_to_back_losing_nothing(capsys):
    """Round-robin rolls for the soak's duration: each loses 0 and every replica exits 0."""
    budget = _soak_seconds()
    started = time.monotonic()
    lines = [
        f"{'roll':>4}  {'kind':<20} {'sent':>7} {'lost':>5} {'max stop':>9} {'exits':>8} {'s':>7}"
    ]
    bad: list[str] = []
    rolled: set[str] = set()
    n = 0
    while time.monotonic() - started < budget or rolled != set(KINDS):
        kind = KINDS[n % len(KINDS)]
        n += 1
        began = time.monotonic()
        result = rolling_restart(
            [sys.executable, str(SERVERS / f"{kind}.py")],
            warmup=1.0,
            step_interval=STEP_INTERVAL,
            settle=1.0,
            ready_timeout=20.0,  # gunicorn's master and workers boot in a few seconds
        )
        rolled.add(kind)
        lines.append(_line(n, kind, result, time.monotonic() - began))
        if result.lost or result.exit_codes != (0, 0) or result.load.sent < 200:
            bad.append(f"roll {n} ({kind}):\n{result.timeline()}")
        if n >= 1_000:  # bounded whatever the clock says
            break
    total_sent = sum(int(line.split()[2]) for line in lines[1:])
    lines.append(f"{n} rolls, {total_sent} requests, {time.monotonic() - started:.0f} s")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert bad == [], "\n\n".join(bad)
