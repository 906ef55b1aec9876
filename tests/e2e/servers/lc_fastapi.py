"""Replica on `lifecycle.uvicorn.Server` with a FastAPI app.

Run as ``python tests/e2e/servers/lc_fastapi.py PORT``. ``GET /work?ms=N``
(an ``async def`` route awaiting N ms) and ``GET /readyz`` from
``health_paths=True``; a lifespan that opens and closes a fake pool. 2 s drain
delay, exit 0 after a graceful stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import lifecycle
import lifecycle.uvicorn


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    print("lc_fastapi: lifespan startup", flush=True)
    yield
    print("lc_fastapi: lifespan shutdown", flush=True)


api = FastAPI(lifespan=lifespan)


@api.get("/work", response_class=PlainTextResponse)
async def work(ms: int = 0) -> str:
    await asyncio.sleep(ms / 1000)
    return "done\n"


def main() -> None:
    port = int(sys.argv[1])
    app = lifecycle.App("lc_fastapi", drain_delay=2.0, shutdown_timeout=15)
    app.add(
        lifecycle.uvicorn.Server(api, "127.0.0.1", port, health_paths=True, access_log=False),
        name="http",
    )
    print(f"lc_fastapi: starting on 127.0.0.1:{port}", flush=True)
    code = lifecycle.run(app)
    print(f"lc_fastapi: stopped, exit code {code}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
