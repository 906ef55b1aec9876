"""Replica on `lifecycle.WSGIServer`: a plain WSGI app, the zero-loss stop sequence.

Run as ``python tests/e2e/servers/lc_wsgi.py PORT``. Same endpoints as
``naive.py`` on one port: ``GET /work?ms=N`` sleeps N ms and replies a small
body; ``GET /readyz`` answers 200 while ``app.ready``, else 503. The app has a
2 s drain delay and exits 0 after a graceful stop on SIGTERM.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment

import lifecycle
from lifecycle._serving.wsgi import WSGIServer

app = lifecycle.App("lc_wsgi", drain_delay=2.0, shutdown_timeout=15)


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/readyz":
        ok = app.ready
        status, body = ("200 OK", b"ready\n") if ok else ("503 Service Unavailable", b"no\n")
    elif path == "/work":
        ms = int(parse_qs(environ["QUERY_STRING"]).get("ms", ["0"])[0])
        time.sleep(ms / 1000)
        status, body = "200 OK", b"done\n"
    else:
        status, body = "404 Not Found", b"not found\n"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def main() -> None:
    port = int(sys.argv[1])
    app.add(WSGIServer(application, ("127.0.0.1", port)), name="wsgi")
    sys.exit(lifecycle.run(app))


if __name__ == "__main__":
    main()
