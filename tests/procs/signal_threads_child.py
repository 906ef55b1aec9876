"""A child process for tests/test_signals.py: SIGTERM landing on a thread that is not the main one.

Usage::

    python -m tests.procs.signal_threads_child RUNNER [idle|own|interrupt]

RUNNER is ``thread`` or ``asyncio``. The app (under ``lifecycle.run``, which
owns the process, so the main thread blocks in the runner's wait) keeps
threads busy: two workers spinning on the CPU in lifecycle's call threads,
a spinning thread of the child's own, an `HTTPServer` (accept and reaper
threads) and the health endpoint (its server thread); the asyncio run adds
an async component, so the main thread runs the event loop. With ``idle``
there is one worker that waits on its token instead, and nothing spins: the
parent measures what the waiting costs. With ``own`` (RUNNER ``thread``) the
child embeds a `ThreadedRunner` with ``signals=None`` and handles SIGTERM
itself, calling ``app.request_shutdown``: the way a host that owns its
signals embeds an app, the main thread blocked in ``runner.wait()``. With
``interrupt`` (RUNNER ``asyncio``) an `AsyncioRunner` with ``signals=None``
runs in ``lifecycle.asyncio_run(main())``, whose SIGINT handler stops it:
``direct`` then sends SIGINT, and the child exits 130 on the
``KeyboardInterrupt`` that follows.

CPython runs a Python-level signal handler only in the main thread, but the
kernel delivers a signal sent to the process to any thread that does not
block it. A line ``direct`` on stdin has a thread of the child send SIGTERM
with ``signal.pthread_kill`` to a spinning worker's thread: the C-level
handler then runs there, which is the case that must still wake the main
thread at once.

stdout carries JSON lines, each with ``t``, its ``time.monotonic()`` (the
same clock as the parent's on Linux): the library's events, ``{"event":
"spinning", "component": ...}`` once a worker spins, ``{"event": "armed"}``
once every busy thread runs (the parent then signals), and ``{"event":
"directed", "t": ...}`` just before a ``pthread_kill``; a line ``cpu`` logs
``{"event": "cpu", "cpu": ...}``, the process's CPU seconds so far.
"""

from __future__ import annotations

import http.server
import resource
import signal
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

import lifecycle
from lifecycle import App, CancelToken


def _stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.setdefault("t", time.monotonic())
    return event


structlog.configure(
    processors=[
        _stamp,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(default=str),
    ],
    logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    cache_logger_on_first_use=False,
)
log = structlog.get_logger("child")

WORKERS = ("spin-a", "spin-b")
idents: dict[str, int] = {}
spinning = threading.Barrier(len(WORKERS) + 1)  # the workers and the child's own thread
ARM_BOUND = 10.0
"""Seconds the busy threads get to begin spinning."""


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def spin_worker(name: str) -> Any:
    def run(token: CancelToken) -> None:
        idents[name] = threading.get_ident()
        log.info("spinning", component=name)
        spinning.wait(ARM_BOUND)
        n = 0
        while not token.cancelled:
            n += 1  # CPU-bound: never blocks, never sleeps

    return run


def own_spinner(stop: threading.Event) -> None:
    spinning.wait(ARM_BOUND)
    log.info("armed")
    n = 0
    while not stop.is_set():
        n += 1


def commands(stop: threading.Event, signum: int) -> None:
    for line in sys.stdin:
        if line.strip() == "direct":
            log.info("directed", target="spin-a")
            signal.pthread_kill(idents["spin-a"], signum)
        elif line.strip() == "cpu":
            log.info("cpu", cpu=cpu_seconds())
    stop.set()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    runner = sys.argv[1]
    idle = sys.argv[2:] == ["idle"]
    own = sys.argv[2:] == ["own"]
    interrupt = sys.argv[2:] == ["interrupt"]
    app = App("threads", shutdown_timeout=5.0, health=("127.0.0.1", 0))
    app.add(lifecycle.HTTPServer(Hello, ("127.0.0.1", 0)), name="http", stop_timeout=2.0)
    stop = threading.Event()
    if idle:

        @app.worker(name="waiter")
        def waiter(token: CancelToken) -> None:
            log.info("armed", cpu=cpu_seconds())
            token.wait()

    else:
        for name in WORKERS:
            app.worker(name=name)(spin_worker(name))
        threading.Thread(target=own_spinner, args=(stop,), name="own-spin", daemon=True).start()
    signum = signal.SIGINT if interrupt else signal.SIGTERM
    threading.Thread(target=commands, args=(stop, signum), name="commands", daemon=True).start()
    if runner == "asyncio":

        @app.resource(name="loop-resource")
        async def loop_resource() -> Any:
            yield

    if interrupt:

        async def embedded_main() -> None:
            async with lifecycle.AsyncioRunner(app, signals=None) as embedded:
                await embedded.wait()

        try:
            lifecycle.asyncio_run(embedded_main())
            code = 0
        except KeyboardInterrupt:
            code = 130
    elif own:
        signal.signal(signal.SIGTERM, lambda signum, frame: app.request_shutdown("own SIGTERM"))
        embedded = lifecycle.ThreadedRunner(app, signals=None)
        embedded.start()
        code = embedded.wait()
    else:
        code = lifecycle.run(app, runner="thread" if runner == "thread" else "asyncio")
    stop.set()
    log.info("exit", code=code, cpu=cpu_seconds())
    return code


if __name__ == "__main__":
    sys.exit(main())
