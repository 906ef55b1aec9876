"""A child process for tests/test_grpc.py: a lifecycle.grpc server that gets real signals.

Usage::

    python -m tests.procs.grpc_child KIND RUNNER SCENARIO

KIND is ``sync`` (`lifecycle.grpc.Server`) or ``aio`` (`AioServer`); RUNNER
``thread`` or ``asyncio``; SCENARIO ``ok`` (handlers honour their tokens) or
``stuck`` (the parent calls ``Stuck``, which ignores its token; the stop
timeout is short). The app runs under ``lifecycle.run``, which owns the
signals, as in production.

stdout carries the child's own JSON lines: ``{"event": "ready", "port": N}``
once serving, and ``{"event": "entered", "method": M}`` as each RPC begins.
The library's log goes to stderr through stdlib ``logging`` (structlog is
left unconfigured), where the parent looks for what was cut.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

import lifecycle
from tests.grpc_fixtures import Echo, make_server

DRAIN = 1.0
"""Seconds of drain: the clients see NOT_SERVING and stop sending new calls."""
STOP_TIMEOUT = {"ok": 5.0, "stuck": 1.0}


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


class Ready:
    """Says the port once the server (its dependency) serves."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def start(self) -> None:
        say(event="ready", port=self.server.port)


def relay(echo: Echo) -> None:
    while True:
        say(event="entered", method=echo.entered.get())


def main() -> int:
    kind, runner, scenario = sys.argv[1:4]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    echo = Echo()
    threading.Thread(target=relay, args=(echo,), daemon=True).start()
    app = lifecycle.App(
        "grpc-child", drain_delay=DRAIN, stop_timeout=STOP_TIMEOUT[scenario], shutdown_timeout=10.0
    )
    server = app.add(make_server(kind, echo), name="grpc")
    app.add(Ready(server), name="ready", depends_on=[server])
    return int(lifecycle.run(app, runner=runner))  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
