"""Replica on plain ``uvicorn.run`` (no lifecycle): what uvicorn does alone on SIGTERM.

Run as ``python tests/e2e/servers/plain_uvicorn.py PORT``. The same endpoints
as ``lc_uvicorn.py`` (``/work?ms=N``, ``/readyz`` answering 200 until uvicorn
begins to shut down), with uvicorn's defaults: on SIGTERM it closes its
listener at once (no drain), its last responses on keep-alive connections do
not say ``Connection: close``, and it exits once the connections closed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

import uvicorn


async def asgi(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode("latin-1"))
    if scope["path"] == "/work":
        await asyncio.sleep(int(query.get("ms", ["0"])[0]) / 1000)
        status, body = 200, b"done\n"
    elif scope["path"] == "/readyz":
        status, body = 200, b"ready\n"
    else:
        status, body = 404, b"not found\n"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    port = int(sys.argv[1])
    print(f"plain_uvicorn: starting on 127.0.0.1:{port}", flush=True)
    uvicorn.run(asgi, host="127.0.0.1", port=port, access_log=False, lifespan="off")
    print("plain_uvicorn: stopped", flush=True)


if __name__ == "__main__":
    main()
