"""A host process that owns SIGTERM and forwards it to a lifecycle app.

Servers such as gunicorn or celery install their own signal handlers; an app
embedded in them must not replace those. Run the app with ``signals=None``
and call ``app.request_shutdown()`` from the host's handler: it is
signal-safe, idempotent, and turns readiness off before it returns.

Run it and press Ctrl-C, or ``kill -TERM <pid>``::

    python examples/embedded_own_signals.py [thread|asyncio]
"""

from __future__ import annotations

import asyncio
import signal
import sys
from types import FrameType

import structlog

import lifecycle

structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.JSONRenderer(default=str),
    ],
    logger_factory=structlog.PrintLoggerFactory(sys.stdout),
)
log = structlog.get_logger("host")
REASON = "SIGTERM via the host's own handler"


class Server:
    """Stands in for a server: serves until its token is cancelled."""

    def run(self, token: lifecycle.CancelToken) -> None:
        token.wait()


def build() -> lifecycle.App:
    app = lifecycle.App("embedded", shutdown_timeout=10)
    app.add(Server(), name="server")
    return app


def threaded() -> int:
    """A thread-based host: a plain signal.signal handler forwards to the app."""
    app = build()
    received: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # Signal handler: set flags, call request_shutdown; no logging here
        # (the interrupted code may hold the logger's lock).
        received.append(signum)
        app.request_shutdown(REASON)

    signal.signal(signal.SIGTERM, on_sigterm)
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    code = runner.wait()
    for signum in received[:1]:
        log.info("own handler", signal=signal.Signals(signum).name)
    log.info("handler untouched", ok=signal.getsignal(signal.SIGTERM) is on_sigterm)
    return code


async def asynchronous() -> int:
    """An asyncio host: the loop's own signal handler forwards to the app."""
    app = build()
    received: list[str] = []

    def on_sigterm() -> None:
        received.append("SIGTERM")
        app.request_shutdown(REASON)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    # What the loop installed at the C level (its wakeup trampoline).
    installed = signal.getsignal(signal.SIGTERM)
    try:
        async with lifecycle.AsyncioRunner(app, signals=None) as runner:
            await runner.wait()
        for name in received[:1]:
            log.info("own handler", signal=name)
        log.info("handler untouched", ok=signal.getsignal(signal.SIGTERM) is installed)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert runner.exit_code is not None
    return runner.exit_code


def main(argv: list[str]) -> int:
    kind = argv[1] if len(argv) > 1 else "thread"
    if kind == "thread":
        return threaded()
    return lifecycle.asyncio_run(asynchronous())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
