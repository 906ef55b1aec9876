"""The proof for aiohttp: a rolling restart behind a real haproxy loses zero requests.

The harness of tests/e2e/test_rolling_lifecycle.py (SIGTERM, the backend put
into maintenance 1 s later, a replacement started and waited UP, haproxy
with retries 0 and no redispatch, every attempt counted) rolls two replicas
of an aiohttp app served by `lifecycle.aiohttp.Server`. The same app under
plain ``web.run_app`` is rolled in the same harness for the record: what it
loses is reported, not asserted (it depends on timing).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.roll import rolling_restart

SERVER = Path(__file__).parent / "servers" / "lc_aiohttp.py"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.process,
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not installed (apt-get install -y haproxy)",
    ),
]


def test_lifecycle_aiohttp_loses_nothing_in_a_roll():
    """lifecycle.aiohttp.Server loses zero requests in a 2-replica rolling restart; exits 0."""
    result = rolling_restart([sys.executable, str(SERVER)])
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000, result.timeline()
    assert result.load.failures == {}, result.timeline()
    assert result.lost == 0, result.timeline()
    assert result.exit_codes == (0, 0), result.timeline()


def test_plain_run_app_in_the_same_roll_is_measured():
    """Plain web.run_app in the same roll: the harness runs it through; its losses are printed."""
    result = rolling_restart([sys.executable, str(SERVER), "{port}", "--plain"])
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000, result.timeline()
    print(
        f"\nplain web.run_app: lost {result.lost} of {result.load.sent} "
        f"(failures {result.load.failures}), exit codes {result.exit_codes}, "
        f"slowest exit {result.max_shutdown_seconds:.2f}s"
    )
