"""Replica on `lifecycle.uvicorn.Server`: a plain ASGI app, the zero-loss stop sequence.

Run as ``python tests/e2e/servers/lc_uvicorn.py PORT``. Serves ``GET
/work?ms=N`` (awaits N ms, replies a small body), ``GET /sse`` (an event
stream that ends with ``event: bye`` when the stop asks it to), ``/ws`` (a
websocket echo, closed by the stop with 1012) and, through
``health_paths=True``, ``GET /readyz`` (200 while ``app.ready``, 503 from the
instant SIGTERM arrives). The app has a 2 s drain delay and exits 0 after a
graceful stop on SIGTERM.

``LC_RUNNER`` (``auto``, ``thread``, ``asyncio``) picks the runner; the
process tests use it, and read the lines this prints: the SIGTERM handler
while serving and whether the handlers found before the run are back after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

import lifecycle
import lifecycle.uvicorn


async def sse(send: Any) -> None:
    """``/sse``: an event every 50 ms until the stop asks it to end, then a last one."""
    lifecycle.mark_long_lived()
    token = lifecycle.current_token()
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    n = 0
    while not await token.wait_async(0.05):
        n += 1
        await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
    await send({"type": "http.response.body", "body": b"event: bye\ndata: restarting\n\n"})


async def websocket(receive: Any, send: Any) -> None:
    """``/ws``: an echo that ignores its token; the stop closes it with 1012."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] != "websocket.disconnect":
        await send({"type": "websocket.send", "text": message.get("text") or ""})


async def asgi(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """``/work?ms=N``: wait N ms, answer ``done``; ``/sse`` and ``/ws`` are long-lived."""
    if scope["type"] == "websocket":
        await websocket(receive, send)
        return
    if scope["type"] != "http":
        return  # lifespan: none (uvicorn's "auto" says so once, at info level)
    if scope["path"] == "/sse":
        await sse(send)
        return
    query = parse_qs(scope["query_string"].decode("latin-1"))
    if scope["path"] == "/work":
        await asyncio.sleep(int(query.get("ms", ["0"])[0]) / 1000)
        status, body = 200, b"done\n"
    else:
        status, body = 404, b"not found\n"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build(port: int) -> lifecycle.App:
    """The app: one uvicorn server with the readiness probe on its own port."""
    app = lifecycle.App("lc_uvicorn", drain_delay=2.0, shutdown_timeout=15)
    app.add(
        lifecycle.uvicorn.Server(asgi, "127.0.0.1", port, health_paths=True, access_log=False),
        name="http",
    )

    @app.worker(depends_on=["http"])  # once uvicorn listens
    async def report_handlers(token: lifecycle.CancelToken) -> None:
        # What handles SIGTERM while uvicorn serves: lifecycle's, never uvicorn's.
        handler = signal.getsignal(signal.SIGTERM)
        print(
            f"lc_uvicorn: serving, SIGTERM handler {getattr(handler, '__qualname__', handler)}",
            flush=True,
        )
        await token.wait_async()

    return app


def main() -> None:
    port = int(sys.argv[1])
    runner = os.environ.get("LC_RUNNER", "auto")
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"lc_uvicorn: starting on 127.0.0.1:{port} ({runner} runner)", flush=True)
    code = lifecycle.run(build(port), runner=runner)  # type: ignore[arg-type]
    after = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"lc_uvicorn: handlers restored {before == after}", flush=True)
    print(f"lc_uvicorn: stopped, exit code {code}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
