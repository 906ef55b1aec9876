"""lifecycle apps inside ``multiprocessing`` children (spawn) that the parent stops.

In a worker process the parent owns the signals: a pool manager, a
supervisor or a test harness decides when a child ends. So each child runs
its app with ``signals=None`` (no handler installed, no process-global state
touched) and turns the parent's request — here a ``multiprocessing.Event`` —
into ``app.request_shutdown()``. The app then stops in reverse order and the
child exits with the app's exit code, which the parent checks.

Run it::

    python examples/embedded_multiprocessing.py
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import structlog

import lifecycle

CHILDREN = 3
BOUND = 30.0


class Pool:
    """Stands in for a connection pool."""

    def __init__(self) -> None:
        self.open = False

    def start(self, token: lifecycle.CancelToken) -> None:
        self.open = True

    def stop(self, token: lifecycle.CancelToken) -> None:
        self.open = False


def child(index: int, stop: Event, ready: Queue[int]) -> None:
    """The child's whole life: run the app until the parent sets ``stop``."""
    structlog.configure(
        processors=[structlog.dev.ConsoleRenderer(colors=False)],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    app = lifecycle.App(f"child-{index}", shutdown_timeout=10)
    pool = app.add(Pool())

    @app.worker(depends_on=[pool])
    def consume(token: lifecycle.CancelToken) -> None:
        while not token.wait(0.05):
            assert pool.open  # the pool outlives its users

    def forward() -> None:
        stop.wait()
        app.request_shutdown("the parent asked")

    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    threading.Thread(target=forward, name="stop-forwarder", daemon=True).start()
    ready.put(index)
    sys.exit(runner.wait())


def main() -> int:
    ctx = multiprocessing.get_context("spawn")
    ready: Queue[int] = ctx.Queue()
    stops = [ctx.Event() for _ in range(CHILDREN)]
    procs = [
        ctx.Process(target=child, args=(i, stops[i], ready), name=f"child-{i}")
        for i in range(CHILDREN)
    ]
    for proc in procs:
        proc.start()
    up = sorted(ready.get(timeout=BOUND) for _ in procs)
    print(f"children running: {up}", flush=True)
    codes: list[int | None] = []
    for proc, stop in zip(procs, stops, strict=True):  # one by one, like a rolling restart
        began = time.monotonic()
        stop.set()
        proc.join(BOUND)
        if proc.is_alive():
            proc.kill()
            proc.join()
        codes.append(proc.exitcode)
        print(f"{proc.name} stopped in {time.monotonic() - began:.3f}s", flush=True)
    print(f"children exit codes: {codes}", flush=True)
    return 0 if codes == [0] * CHILDREN else 1


if __name__ == "__main__":
    sys.exit(main())
