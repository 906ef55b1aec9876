"""The proof: rolling restarts behind a real haproxy lose zero requests with lifecycle.

The same harness that sees the naive and the hand-written stdlib servers
lose requests (tests/e2e/test_rolling.py) rolls two replicas of each
lifecycle-managed server kind: SIGTERM, the backend put into maintenance 1 s
later (the endpoints controller's lag), a replacement started and waited UP,
haproxy with retries 0 and no redispatch, every attempt counted.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.roll import rolling_restart

SERVERS = Path(__file__).parent / "servers"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.process,
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not installed (apt-get install -y haproxy)",
    ),
]


@pytest.mark.parametrize("kind", ["lc_http", "lc_asyncio", "lc_wsgi"])
def test_lifecycle_server_loses_nothing_in_a_roll(kind):
    """A lifecycle-managed server loses zero requests in a 2-replica rolling restart."""
    result = rolling_restart([sys.executable, str(SERVERS / f"{kind}.py")])
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000, result.timeline()
    assert result.load.failures == {}, result.timeline()
    assert result.lost == 0, result.timeline()
    assert result.exit_codes == (0, 0), result.timeline()
