"""A child process for tests/test_signals.py: signals that land while the main thread logs.

Usage::

    python tests/procs/busy_child.py RUNNER LOGGING ITERATIONS

RUNNER is ``thread`` or ``asyncio``; LOGGING is ``structlog`` or ``stdlib``.
Each iteration runs a fresh app with the runner's own signal handlers, then
logs in a tight loop on the main thread — no sleep, no await: on asyncio the
loop is the event loop's thread, so nothing but the signal handler can end it
— for as long as ``app.ready`` is true. The app's only component registers
the ``App.shutdown_token`` docstring's own example, a callback that logs, with
the same logger on the same file: a callback run inside the signal handler
would deadlock on structlog's lock, or re-enter the stream under stdlib
logging ("Logging error" on stderr).

The busy logging goes to ``os.devnull``; what the parent reads is stdout, as
JSON lines: the library's events, ``{"event": "busy", "i": i}`` when an
iteration's loop begins (the parent then sends SIGTERM) and ``{"event":
"iteration done", "i": i, "code": ..., "logged": n, "drained": bool}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import structlog

import lifecycle
from lifecycle import App, CancelToken

DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
STDOUT = structlog.PrintLogger(sys.stdout)
BUSY = structlog.PrintLogger(DEVNULL)


def factory(*args: Any) -> structlog.PrintLogger:
    """The ``busy`` logger writes to devnull; everything else (lifecycle) to stdout."""
    return BUSY if args and args[0] == "busy" else STDOUT


structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(default=str),
    ],
    logger_factory=factory,
    cache_logger_on_first_use=False,
)
report = structlog.get_logger("child")


def busy_logger(kind: str) -> Callable[..., None]:
    """``log(event, **fields)`` through structlog or stdlib logging, into devnull."""
    if kind == "structlog":
        info: Callable[..., None] = structlog.get_logger("busy").info
        return info
    std = logging.getLogger("busy")
    std.propagate = False
    std.setLevel(logging.INFO)
    std.addHandler(logging.StreamHandler(DEVNULL))

    def log(event: str, **fields: Any) -> None:
        std.info("%s %s", event, fields)

    return log


def build(i: int, log: Callable[..., None], drained: threading.Event, is_async: bool) -> App:
    app = App(f"busy-{i}", shutdown_timeout=5)

    def on_shutdown() -> None:
        log("draining", i=i)  # the shutdown_token docstring's example
        drained.set()

    class Sync:
        def start(self, token: CancelToken) -> None:
            app.shutdown_token.on_cancel(on_shutdown)

        def stop(self, token: CancelToken) -> None:
            pass

    class Async:
        async def start(self, token: CancelToken) -> None:
            app.shutdown_token.on_cancel(on_shutdown)

        async def stop(self, token: CancelToken) -> None:
            pass

    app.add(Async() if is_async else Sync(), name="server")
    return app


def spin(app: App, log: Callable[..., None], i: int) -> int:
    """Log in a tight loop while the app is ready; return how many lines were logged."""
    report.info("busy", i=i)
    n = 0
    while app.ready:
        log("busy", i=i, n=n)
        n += 1
    return n


def threaded(i: int, log: Callable[..., None]) -> None:
    drained = threading.Event()
    app = build(i, log, drained, is_async=False)
    runner = lifecycle.ThreadedRunner(app)
    runner.start()
    n = spin(app, log, i)
    code = runner.wait()
    report.info("iteration done", i=i, code=code, logged=n, drained=drained.wait(5))


async def asynchronous(i: int, log: Callable[..., None]) -> None:
    drained = threading.Event()
    app = build(i, log, drained, is_async=True)
    runner = lifecycle.AsyncioRunner(app)
    await runner.start()
    n = spin(app, log, i)
    code = await runner.wait()
    ok = await asyncio.to_thread(drained.wait, 5)
    report.info("iteration done", i=i, code=code, logged=n, drained=ok)


def main() -> int:
    runner, kind, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = busy_logger(kind)
    for i in range(iterations):
        if runner == "thread":
            threaded(i, log)
        else:
            lifecycle.asyncio_run(asynchronous(i, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
