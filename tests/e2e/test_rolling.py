"""Rolling restarts behind a real haproxy: the harness sees the losses it must see."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from lifecycle._demo.loadgen import run_load
from tests.e2e.haproxy import HAProxy, free_port
from tests.e2e.roll import Replica, rolling_restart

SERVERS = Path(__file__).parent / "servers"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.process,
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not installed (apt-get install -y haproxy)",
    ),
]


def server(kind):
    return [sys.executable, str(SERVERS / f"{kind}.py")]


def test_steady_load_through_haproxy_loses_nothing(tmp_path):
    """Without a roll, every request through haproxy succeeds: the harness's zero is real."""
    replica = Replica(server("naive"), free_port(), tmp_path / "r1.log", "r1")
    with HAProxy(slots=2, workdir=tmp_path) as lb, replica:
        replica.wait_ready(10.0)
        lb.bind("s1", replica.port)
        lb.wait_up("s1", 10.0)
        result = run_load("127.0.0.1", lb.port, duration=2.0, max_requests=5_000)
        replica.terminate()
        replica.wait_exit(5.0)
    assert result.sent > 200
    assert result.failures == {}
    assert result.sent == result.ok


def test_naive_server_loses_requests():
    """A server that dies on SIGTERM loses requests in a 2-replica roll."""
    result = rolling_restart(server("naive"))
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000
    assert result.lost > 0, result.timeline()
    assert result.exit_codes == (-15, -15)


def test_stdlib_shutdown_loses_requests():
    """shutdown() without drain delay or Connection: close still loses requests."""
    result = rolling_restart(server("stdlib_shutdown"))
    assert result.lost_before_first_sigterm == 0, result.timeline()
    assert result.load.sent > 1_000
    assert result.lost > 0, result.timeline()
    assert result.exit_codes == (0, 0)
