"""Baseline replica: a ThreadingHTTPServer with the default SIGTERM (the process dies).

Run as ``python tests/e2e/servers/naive.py PORT``. Serves ``GET /work?ms=N``
(sleeps N ms, replies a small body) and ``GET /readyz`` (always 200). Nagle is
off (``http.server`` sends headers and body separately: +40 ms per keep-alive
request with Nagle on) and the listen backlog is 128 (socketserver's default
of 5 drops connections under load), so that the
only requests it loses are those its (lack of) shutdown loses.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/readyz":
            self._reply(200, b"ready\n")
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


class Server(ThreadingHTTPServer):
    request_queue_size = 128


def main() -> None:
    port = int(sys.argv[1])
    server = Server(("127.0.0.1", port), Handler)
    print(f"naive: serving on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
