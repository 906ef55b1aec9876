"""Replica on `lifecycle.HTTPServer`: the stdlib handler, the zero-loss stop sequence.

Run as ``python tests/e2e/servers/lc_http.py PORT``. Same endpoints as
``naive.py`` on one port: ``GET /work?ms=N`` sleeps N ms and replies a small
body; ``GET /readyz`` answers 200 while ``app.ready``, else 503. The app has a
2 s drain delay, longer than haproxy needs to see ``/readyz`` turn 503 (its
check runs every 500 ms), so that no connection is routed to a replica that
already refuses, and exits 0 after a graceful stop on SIGTERM.

``--drain SECONDS`` sets another fixed drain delay; ``--drain MIN,MAX,QUIET``
an adaptive one (`lifecycle.Drain`): ``python lc_http.py PORT --drain 1.5,10,0.5``.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import lifecycle
from lifecycle._core.drain import Drain
from lifecycle._serving.http import HTTPServer

app = lifecycle.App("lc_http", drain_delay=2.0, shutdown_timeout=15)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/readyz":
            if app.ready:
                self._reply(200, b"ready\n")
            else:
                self._reply(503, b"shutting down\n")
        elif url.path == "/work":
            ms = int(parse_qs(url.query).get("ms", ["0"])[0])
            time.sleep(ms / 1000)
            self._reply(200, b"done\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the replica's log quiet: one line per request would dominate it."""


def _drain(text: str) -> float | Drain:
    """``"10"``: a fixed delay; ``"1.5,10,0.5"``: ``Drain(min=1.5, max=10, quiet=0.5)``."""
    parts = [float(p) for p in text.split(",")]
    if len(parts) == 1:
        return parts[0]
    low, high, quiet = parts
    return Drain(min=low, max=high, quiet=quiet)


def main() -> None:
    port = int(sys.argv[1])
    if "--drain" in sys.argv:
        app.drain_delay = _drain(sys.argv[sys.argv.index("--drain") + 1])
    app.add(HTTPServer(Handler, ("127.0.0.1", port)), name="http")
    sys.exit(lifecycle.run(app))


if __name__ == "__main__":
    main()
