"""Rolling restarts of uvicorn behind haproxy: lifecycle.uvicorn loses nothing; uvicorn alone does.

The harness of tests/e2e/test_rolling_lifecycle.py (two replicas, SIGTERM
under 16 keep-alive clients, the backend put into maintenance 1 s later,
haproxy retries off) rolls three servers with the same ``/work?ms=50``
endpoint: a plain ASGI app and a FastAPI app on `lifecycle.uvicorn.Server`,
and the plain ASGI app on ``uvicorn.run`` without lifecycle. The last must
lose requests in this harness, or the harness could not see a loss.
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


@pytest.mark.parametrize("kind", ["lc_uvicorn", "lc_fastapi"])
def test_lifecycle_uvicorn_loses_nothing_in_a_roll(kind):
    """lifecycle.uvicorn.Server loses zero requests in a 2-replica rolling restart, exit 0."""
    result = rolling_restart([sys.executable, str(SERVERS / f"{kind}.py")])
    print(f"{kind}: sent {result.load.sent}, lost {result.lost}, exits {result.exit_codes}")
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000, result.timeline()
    assert result.load.failures == {}, result.timeline()
    assert result.lost == 0, result.timeline()
    assert result.exit_codes == (0, 0), result.timeline()


def test_plain_uvicorn_loses_requests_in_the_same_roll():
    """uvicorn.run alone, in the same harness, loses requests (the harness sees loss)."""
    result = rolling_restart([sys.executable, str(SERVERS / "plain_uvicorn.py")])
    print(f"plain_uvicorn: sent {result.load.sent}, lost {result.lost}, exits {result.exit_codes}")
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000, result.timeline()
    assert result.lost > 0, result.timeline()
