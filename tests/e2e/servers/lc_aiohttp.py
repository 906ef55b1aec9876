"""Replica built on lifecycle.aiohttp: an aiohttp web app served by `lifecycle.aiohttp.Server`.

Run as ``python tests/e2e/servers/lc_aiohttp.py PORT [--plain] [--drain-delay S]
[--stop-timeout S] [--runner thread|asyncio]``. Serves ``GET /work?ms=N``
(awaits N ms, replies a small body), ``GET /readyz`` (200 while ready, else
503: ``health_paths=True``), ``GET /stuck`` (never returns, ignores its
token: what a stop has to cut), ``GET /sse`` (an event stream that ends with
``event: bye`` when the stop asks it to) and ``/ws`` (a websocket echo the
stop closes with 1001).

Everything about the shutdown is lifecycle's: SIGTERM turns ``/readyz`` 503
at once; for ``drain_delay`` (2 s) the server keeps serving and every
response says ``Connection: close``; then the listener closes (after taking
the backlog), idle keep-alive connections close, in-flight requests finish,
exit 0 (TIMEOUT, 3, when ``/stuck`` had to be cut).

``--plain`` runs the same routes with plain ``web.run_app`` instead (its
``/readyz`` always 200, aiohttp's own SIGTERM handling): the baseline the
docs compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web

import lifecycle
import lifecycle.aiohttp


async def work(request: web.Request) -> web.Response:
    ms = int(request.query.get("ms", "0"))
    if "tell" in request.query:
        print("lc_aiohttp: work request entered", flush=True)
    await asyncio.sleep(ms / 1000)
    return web.Response(text="done\n")


async def stuck(request: web.Request) -> web.Response:
    print("lc_aiohttp: stuck request entered", flush=True)
    await asyncio.Event().wait()  # never set: only the stop's cut ends it
    return web.Response(text="never\n")  # pragma: no cover


async def sse(request: web.Request) -> web.StreamResponse:
    """An event every 50 ms until the stop asks it to end, then a last one."""
    lifecycle.mark_long_lived()
    token = lifecycle.current_token()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    n = 0
    while not await token.wait_async(0.05):
        n += 1
        await response.write(b"data: %d\n\n" % n)
    await response.write(b"event: bye\ndata: restarting\n\n")
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """An echo that ignores its token: the stop closes it with 1001."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(message.data)
    return ws


async def always_ready(request: web.Request) -> web.Response:
    return web.Response(text="ready\n")


def web_app(*, plain: bool) -> web.Application:
    application = web.Application()
    application.router.add_get("/work", work)
    application.router.add_get("/stuck", stuck)
    application.router.add_get("/sse", sse)
    application.router.add_get("/ws", websocket)
    if plain:
        application.router.add_get("/readyz", always_ready)
    return application


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--drain-delay", type=float, default=2.0)
    parser.add_argument("--stop-timeout", type=float, default=10.0)
    parser.add_argument("--runner", choices=("thread", "asyncio"), default="asyncio")
    args = parser.parse_args()
    if args.plain:
        print(f"plain_aiohttp: starting on 127.0.0.1:{args.port}", flush=True)
        web.run_app(web_app(plain=True), host="127.0.0.1", port=args.port, print=None)
        print("plain_aiohttp: stopped", flush=True)
        return
    app = lifecycle.App("lc_aiohttp", drain_delay=args.drain_delay, shutdown_timeout=15)
    server = lifecycle.aiohttp.Server(
        web_app(plain=False), "127.0.0.1", args.port, health_paths=True, access_log=None
    )
    app.add(server, name="http", stop_timeout=args.stop_timeout)
    print(f"lc_aiohttp: starting on 127.0.0.1:{args.port}", flush=True)
    code = lifecycle.run(app, runner=args.runner)
    print(f"lc_aiohttp: stopped, exit code {code}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
