"""A child process for tests/test_consumer.py: a consumer mid-stream gets SIGTERM.

Usage::

    python -m tests.procs.consumer_child RUNNER KIND

RUNNER is ``thread`` or ``asyncio``; KIND is ``sync`` (`Consumer` over a
``queue.Queue``) or ``async`` (`AsyncConsumer` over an ``asyncio.Queue``),
or ``naive``: the baseline the docs measure against, a prefetching thread
pool without lifecycle whose SIGTERM handler just ends the loops (RUNNER
is ignored).
The queue holds `TOTAL` messages; each handler call computes for a little
while (a few milliseconds of pure Python, no sleep) and records the id.
Once `STREAMING_AFTER` messages were handled the main thread prints
``{"event": "streaming"}`` (the parent then sends SIGTERM) and computes in a
loop (no sleep, no await) for as long as the app is ready,
so that only the signal handler can end it. From then on each handler call
holds its message until the shutdown has begun (bounded by `HOLD`), so the
signal lands mid-stream however slow the machine is: the calls in flight
then finish and are acked, and the rest stays in the queue. After the exit code is known
the child prints ``{"event": "report", "handled": [...], "acked": [...],
"left": [...], "total": n, "stats": {...}}`` and exits with that code.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import attrs

import lifecycle
from lifecycle import App
from lifecycle._workers.consumer import (
    AsyncConsumer,
    AsyncQueueSource,
    Consumer,
    Message,
    QueueSource,
)
from tests.procs import log_json_lines

log = log_json_lines()

TOTAL = 400
STREAMING_AFTER = 40
WORK = 20_000
"""Loop iterations of one handler call (a few milliseconds)."""
HOLD = 30.0
"""Seconds a handler call after `STREAMING_AFTER` waits for the shutdown at most."""

lock = threading.Lock()
handled: list[int] = []
acked: list[int] = []
streaming = threading.Event()
shutting = threading.Event()
"""Set as the app's shutdown begins (only under lifecycle, not for the naive kind)."""
hold = False
"""Whether handler calls after `STREAMING_AFTER` wait for `shutting`."""


def work(m: Message) -> bool:
    """Compute, record the id; whether this call should hold until the shutdown."""
    total = 0
    for i in range(WORK):
        total += i * i
    with lock:
        handled.append(int(m.id))
        if len(handled) == STREAMING_AFTER:
            streaming.set()
        return hold and len(handled) > STREAMING_AFTER


def work_sync(m: Message) -> None:
    if work(m):
        shutting.wait(HOLD)


def busy(app: App) -> int:
    """Compute on the main thread while the app is ready; how many loops ran."""
    log.info("streaming")  # the parent sends SIGTERM now
    loops = 0
    while True:
        total = 0
        for i in range(1000):
            total += i
        loops += 1
        if not app.ready:
            return loops


class Acking(QueueSource):
    def ack(self, messages: Sequence[Message]) -> None:
        with lock:
            acked.extend(int(m.id) for m in messages)
        super().ack(messages)


class AsyncAcking(AsyncQueueSource):
    async def ack(self, messages: Sequence[Message]) -> None:
        with lock:
            acked.extend(int(m.id) for m in messages)
        await super().ack(messages)


def left_in(q: Any) -> list[int]:
    out = []
    while True:
        try:
            out.append(int(q.get_nowait().id))
        except (queue.Empty, asyncio.QueueEmpty):
            return out


def report(code: int, q: Any, consumer: Consumer | AsyncConsumer, loops: int) -> None:
    with lock:
        log.info(
            "report",
            code=code,
            handled=list(handled),
            acked=list(acked),
            left=left_in(q),
            total=TOTAL,
            stats=attrs.asdict(consumer.stats()),
            busy_loops=loops,
        )


def naive() -> int:
    """The baseline: a prefetching thread pool that ends at SIGTERM without draining."""
    q: queue.Queue[Message] = queue.Queue()
    for i in range(TOTAL):
        q.put_nowait(Message(str(i), {"n": i}))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    buffer: queue.Queue[Message] = queue.Queue(maxsize=8)

    def fetcher() -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Empty, queue.Full):
                buffer.put(q.get(timeout=0.05), timeout=0.05)

    def worker() -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Empty):
                m = buffer.get(timeout=0.05)
                work(m)
                with lock:
                    acked.append(int(m.id))

    for target in (fetcher, *[worker] * 4):
        threading.Thread(target=target, daemon=True).start()
    streaming.wait(30)
    log.info("streaming")
    while not stop.is_set():
        sum(range(1000))
    with lock:
        log.info(
            "report",
            code=0,
            handled=list(handled),
            acked=list(acked),
            left=left_in(q),
            total=TOTAL,
            stats={"in_flight": 0},
            busy_loops=1,
        )
    return 0


def main() -> int:
    runner_kind, kind = sys.argv[1], sys.argv[2]
    if kind == "naive":
        return naive()
    global hold
    hold = True
    app = App("consumer-child", stop_timeout=8.0, shutdown_timeout=10.0)
    app.shutdown_token.on_cancel(shutting.set)
    consumer: Consumer | AsyncConsumer
    if kind == "sync":
        q: Any = queue.Queue()
        consumer = Consumer(Acking(q), work_sync, concurrency=4, prefetch=8)
    else:
        q = asyncio.Queue()

        async def handle(m: Message) -> None:
            if work(m):
                await asyncio.to_thread(shutting.wait, HOLD)
            await asyncio.sleep(0)

        consumer = AsyncConsumer(AsyncAcking(q), handle, concurrency=4, prefetch=8)
    for i in range(TOTAL):
        q.put_nowait(Message(str(i), {"n": i}))
    app.add(consumer, name="orders")

    if runner_kind == "thread":
        runner = lifecycle.ThreadedRunner(app)
        runner.start()
        streaming.wait(30)
        loops = busy(app)
        code = runner.wait()
        report(code, q, consumer, loops)
        return code

    async def amain() -> int:
        arunner = lifecycle.AsyncioRunner(app)
        await arunner.start()
        # Let the consumer stream on the loop until the first messages are done.
        while not streaming.is_set():
            await asyncio.sleep(0.001)
        loops = busy(app)  # blocks the loop: only the signal handler ends it
        code = await arunner.wait()
        report(code, q, consumer, loops)
        return code

    return lifecycle.asyncio_run(amain())


if __name__ == "__main__":
    sys.exit(main())
