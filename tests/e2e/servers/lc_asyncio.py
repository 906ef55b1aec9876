"""Replica built on lifecycle: `AsyncStreamServer` with a minimal HTTP/1.1 keep-alive handler.

Run as ``python tests/e2e/servers/lc_asyncio.py PORT``. Serves ``GET
/work?ms=N`` (awaits N ms, replies a small body) and ``GET /readyz`` (200 while
``app.ready``, else 503). Everything about the shutdown is lifecycle's:

* SIGTERM: readiness turns 503 at once; for ``drain_delay`` (2 s) the server
  keeps accepting and serving, and every response says ``Connection: close``
  (the handler reads ``server.draining``) so clients and haproxy reconnect;
* then stop: the connections the kernel queued are taken in and the
  listening socket closes (new connections are refused), idle keep-alive
  connections are closed, the requests in flight finish, exit 0.

The HTTP side is the least a keep-alive server needs: one
``server.request()`` per request (so an idle connection is told apart from
a busy one), ``Content-Length`` bodies, ``Connection: close`` honoured both ways.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

import lifecycle

MAX_HEADERS = 100


def _response(status: int, reason: str, body: bytes, *, close: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("latin-1") + body


def build(port: int) -> tuple[lifecycle.App, lifecycle.AsyncStreamServer]:
    """The app and its server; ``run`` it."""
    app = lifecycle.App("lc_asyncio", drain_delay=2.0, shutdown_timeout=15)

    async def route(target: str) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        if url.path == "/readyz":
            return (200, "OK", b"ready\n") if app.ready else (503, "Unavailable", b"draining\n")
        if url.path == "/work":
            ms = int(parse_qs(url.query).get("ms", ["0"])[0])
            await asyncio.sleep(ms / 1000)
            return 200, "OK", b"done\n"
        return 404, "Not Found", b"not found\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Idle between requests: stop may close the connection here.
        while request_line := await reader.readline():
            with server.request(request_line.decode("latin-1").strip()):
                try:
                    method, target, version = request_line.decode("latin-1").split()
                except ValueError:
                    writer.write(_response(400, "Bad Request", b"bad request\n", close=True))
                    await writer.drain()
                    return
                close = version != "HTTP/1.1"
                length = 0
                for _ in range(MAX_HEADERS):
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    name = name.strip().lower()
                    if name == "connection":
                        close = value.strip().lower() == "close"
                    elif name == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                if method == "GET":
                    status, reason, body = await route(target)
                else:
                    status, reason, body = 405, "Method Not Allowed", b"GET only\n"
                # Draining: the last response on this connection says so; a keep-alive
                # client would otherwise send its next request into the close.
                close = close or server.draining
                writer.write(_response(status, reason, body, close=close))
                await writer.drain()
            if close:
                return

    server = lifecycle.AsyncStreamServer(
        handle, "127.0.0.1", port, name=f"http:{port}", unit="request"
    )
    app.add(server, name="http")
    return app, server


def main() -> None:
    port = int(sys.argv[1])
    app, _ = build(port)
    print(f"lc_asyncio: starting on 127.0.0.1:{port}", flush=True)
    code = lifecycle.run(app)
    print(f"lc_asyncio: stopped, exit code {code}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
