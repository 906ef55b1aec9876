"""Long-lived requests open at SIGTERM end cleanly in a real replica: an SSE stream, a websocket.

A replica process of each integration with a 2 s drain delay gets SIGTERM
while one client reads an event stream and another holds a websocket open.
The stream must end with its last event and a clean end of the chunked body
(no reset, no truncation), the websocket with the integration's close code
(1012 service restart for uvicorn, 1001 going away for aiohttp), and the
replica must exit 0 within its drain delay plus a second.
"""

from __future__ import annotations

import http.client
import sys
import time
from pathlib import Path

import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

from tests.e2e.haproxy import free_port
from tests.e2e.roll import Replica

SERVERS = Path(__file__).parent / "servers"
DRAIN = 2.0  # the replicas' drain delay
BOUND = 15.0

pytestmark = [pytest.mark.e2e, pytest.mark.process]


@pytest.mark.parametrize(("kind", "close_code"), [("lc_uvicorn", 1012), ("lc_aiohttp", 1001)])
def test_a_stream_and_a_websocket_open_at_sigterm_end_cleanly(tmp_path, kind, close_code):
    """Last event and a clean end for the stream, the close code for the websocket, exit 0."""
    port = free_port()
    command = [sys.executable, str(SERVERS / f"{kind}.py")]
    with Replica(command, port, tmp_path / "r.log", kind) as r:
        r.wait_ready(20.0)
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
        stream.request("GET", "/sse")
        response = stream.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"data: ")  # streaming before the signal
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/ws", open_timeout=BOUND, close_timeout=BOUND
        ) as ws:
            ws.send("ping")
            assert ws.recv(timeout=BOUND) == "ping"
            signalled = time.monotonic()
            r.terminate()
            body = response.read()  # to the end of the chunked body: IncompleteRead if cut
            ended = time.monotonic() - signalled
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=BOUND)  # the server sends nothing more: only the close
        stream.close()
        exit_ = r.wait_exit(BOUND)
    assert body.endswith(b"event: bye\ndata: restarting\n\n"), (body[-200:], r.log_tail())
    assert DRAIN - 0.5 < ended < DRAIN + 1.0, ended  # asked to end after the drain, not cut
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == close_code
    assert exit_.exit_code == 0, exit_.log_tail
    assert exit_.shutdown_seconds < DRAIN + 1.0, exit_.shutdown_seconds
