"""Child programs for tests/test_systemd.py: an app under ``NOTIFY_SOCKET``, real signals.

Usage::

    python -m tests.procs.systemd_apps SCENARIO RUNNER [MARKER_DIR]

RUNNER is ``thread`` or ``asyncio`` (the components follow it). The app::

    db <- api          (api depends on db; drain_delay DRAIN, shutdown_timeout TIMEOUT)

``api``'s start writes ``MARKER_DIR/api-started`` just before it returns, so
the parent can tell that READY=1 came after the start returned. Every
structlog event goes to stdout as a JSON line (``tests.procs.log_json_lines``),
and ``{"event": "child", "what": ...}`` lines say what the program did.

Scenarios:

* ``serve``: ``lifecycle.run(app)`` until SIGTERM.
* ``block``: as ``serve`` (asyncio); the line ``block`` on stdin makes a
  coroutine on the loop call ``time.sleep(BLOCK)`` (printing ``blocking``
  and ``unblocked`` around it).
* ``embedded``: a `ThreadedRunner` the program starts itself
  (``signals=None``; its own SIGTERM handler requests the shutdown).
* ``speaker``: as ``embedded``, with `notify_for_process` (what a program
  that owns its signals, as ``lifecycle exec`` does, calls).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path

import lifecycle
from lifecycle import App, CancelToken
from lifecycle._runtime.systemd import notify_for_process
from tests.procs import log_json_lines

log = log_json_lines()

DRAIN = float(os.environ.get("TEST_DRAIN", "2.5"))
TIMEOUT = float(os.environ.get("TEST_TIMEOUT", "10"))
BLOCK = 2.0
"""Seconds the ``block`` scenario's coroutine blocks the event loop."""


def say(what: str) -> None:
    log.info("child", what=what)


def build(runner: str, marker: Path) -> App:
    app = App("svc", drain_delay=DRAIN, shutdown_timeout=TIMEOUT, stop_timeout=2.0)

    def mark() -> None:
        (marker / "api-started").touch()
        say("api started")

    if runner == "thread":

        class Sync:
            def __init__(self, name: str) -> None:
                self.name = name

            def start(self, token: CancelToken) -> None:
                if self.name == "api":
                    token.wait(0.2)  # READY must wait for this start to return
                    mark()

            def stop(self, token: CancelToken) -> None:
                say(f"{self.name} stopped")

        app.add(Sync("db"), name="db")
        app.add(Sync("api"), name="api", depends_on=["db"])
    else:

        class Async:
            def __init__(self, name: str) -> None:
                self.name = name

            async def start(self, token: CancelToken) -> None:
                if self.name == "api":
                    await asyncio.sleep(0.2)  # READY must wait for this start to return
                    mark()

            async def stop(self, token: CancelToken) -> None:
                say(f"{self.name} stopped")

        app.add(Async("db"), name="db")
        app.add(Async("api"), name="api", depends_on=["db"])
    return app


def block_on_command(app: App) -> None:
    """The ``block`` scenario: a stdin line makes a coroutine block the running loop."""

    class Blocker:
        async def run(self, token: CancelToken) -> None:
            loop = asyncio.get_running_loop()

            def blocking() -> None:
                say("blocking")
                time.sleep(BLOCK)  # the bug under test: a sync sleep on the loop
                say("unblocked")

            def read() -> None:
                for line in sys.stdin:
                    if line.strip() == "block":
                        loop.call_soon_threadsafe(blocking)

            threading.Thread(target=read, daemon=True).start()
            await token.wait_async()

    app.add(Blocker(), name="blocker")


def instant(runner: str) -> App:
    """The ``instant`` scenario: only a worker, so the app is RUNNING as soon as it begins."""
    app = App("svc", shutdown_timeout=TIMEOUT)
    if runner == "thread":

        @app.worker
        def idle(token: CancelToken) -> None:
            token.wait()

    else:

        @app.worker
        async def idle_async(token: CancelToken) -> None:
            await token.wait_async()

    return app


def embedded(app: App, speak: bool) -> int:
    runner = lifecycle.ThreadedRunner(app, signals=None)
    if speak:
        notify_for_process(runner)
    signal.signal(signal.SIGTERM, lambda signum, frame: app.request_shutdown("signal SIGTERM"))
    runner.start()
    return runner.wait()


def main() -> int:
    scenario, runner = sys.argv[1], sys.argv[2]
    marker = Path(sys.argv[3]) if len(sys.argv) > 3 else Path.cwd()
    app = instant(runner) if scenario == "instant" else build(runner, marker)
    if scenario == "block":
        block_on_command(app)
    if scenario in ("embedded", "speaker"):
        code = embedded(app, speak=scenario == "speaker")
    else:
        code = lifecycle.run(app, runner="thread" if runner == "thread" else "asyncio")
    say(f"exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
