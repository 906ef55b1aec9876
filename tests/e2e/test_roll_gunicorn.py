"""Rolling restarts of gunicorn behind a real haproxy: plain, under ``lifecycle exec``, and
with lifecycle's worker class.

The harness of tests/e2e/test_rolling_lifecycle.py: two replicas, SIGTERM,
the backend put into maintenance 1 s later (the endpoints controller's
lag), a replacement started and waited UP, haproxy with retries 0, every
attempt counted. Each replica is a gunicorn master with 2 workers.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.roll import RollResult, rolling_restart

SERVERS = Path(__file__).parent / "servers"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.process,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not installed (apt-get install -y haproxy)",
    ),
]


def roll(kind: str) -> RollResult:
    result = rolling_restart([sys.executable, str(SERVERS / f"{kind}.py")], ready_timeout=20.0)
    print(
        f"\n{kind}: sent {result.load.sent}, lost {result.lost}, "
        f"failures {result.load.failures}, exits {result.exit_codes}, "
        f"longest stop {result.max_shutdown_seconds:.2f} s\n{result.timeline()}"
    )
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000, result.timeline()
    return result


def test_plain_gunicorn_loses_requests():
    """gunicorn's own graceful stop (gthread) loses requests in a roll."""
    result = roll("plain_gunicorn")
    assert result.lost > 0, result.timeline()
    assert result.exit_codes == (0, 0), result.timeline()


def test_gunicorn_under_lifecycle_exec_loses_nothing():
    """The same gunicorn under ``lifecycle exec --drain-delay 2`` loses zero requests."""
    result = roll("lc_exec_gunicorn")
    assert result.load.failures == {}, result.timeline()
    assert result.lost == 0, result.timeline()
    assert result.exit_codes == (0, 0), result.timeline()


def test_gunicorn_with_the_lifecycle_worker_loses_nothing():
    """gunicorn with ``lifecycle.gunicorn.ThreadWorker`` and a 2 s drain loses zero requests."""
    result = roll("lc_gunicorn_worker")
    assert result.load.failures == {}, result.timeline()
    assert result.lost == 0, result.timeline()
    assert result.exit_codes == (0, 0), result.timeline()
