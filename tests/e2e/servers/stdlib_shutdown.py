"""Baseline replica: a "careful hand-written" stdlib shutdown.

Run as ``python tests/e2e/servers/stdlib_shutdown.py PORT``. Same endpoints as
``naive.py``. On SIGTERM it turns ``/readyz`` to 503 and calls
``server.shutdown()`` from a helper thread (calling it on the thread running
``serve_forever()`` deadlocks), closes the listener and exits 0.

What it deliberately lacks: a drain delay (readiness 503 while still serving,
for as long as the load balancer needs to notice) and ``Connection: close``
on the last responses. Handler threads that sit on keep-alive
connections die with the process, so the next request on each of those
connections gets no reply: ~15-16 lost per roll, measured behind haproxy.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit

READY = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/readyz":
            if READY.is_set():
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


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    # server_close() would otherwise join every handler thread, and those idle
    # on keep-alive connections never return: the process would hang.
    block_on_close = False


def main() -> None:
    port = int(sys.argv[1])
    server = Server(("127.0.0.1", port), Handler)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        READY.clear()
        threading.Thread(target=server.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, on_sigterm)
    READY.set()
    print(f"stdlib_shutdown: serving on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    print("stdlib_shutdown: stopped", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
