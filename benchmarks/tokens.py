"""Benchmarks of the cancellation tokens, each next to its baseline, in one run.

    python -m benchmarks.tokens            # print the table (exit code 0)
    python -m benchmarks.tokens --check    # exit 1 when a target is missed

Measures the promises of `CancelToken`:

* reading ``token.cancelled`` costs about what ``threading.Event.is_set()``
  does, with or without a deadline (timeit, best of many repetitions; the
  timeit loop overhead is included in every figure);
* a waiter wakes within a millisecond of ``cancel()`` from another thread, in
  a thread (``token.wait()``) and in an asyncio task (``await
  token.wait_async()``), next to ``threading.Event`` and
  ``loop.call_soon_threadsafe(fut.set_result)``; the same within a
  millisecond of ``cancel_in_background()`` (what the runners use), while
  every user callback of those tokens is blocked on a callback thread;
* a deadline fires on time while another deadline's callback is blocked: the
  timer never runs user code, so one slow callback delays no other deadline;
* cancelling a parent with 100 000 children is fast, and neither closed nor
  dropped children accumulate in the parent or in memory;
* registering and detaching a callback on a token 100 000 levels deep costs
  what it costs on a child of a root (a registration is held by its nearest
  root or own-deadline ancestor, not by every ancestor);
* building a chain 100 000 deep, registering a callback on each token,
  cancelling the root and dropping it costs what the same does for a root
  with 100 000 children (no work per token grows with its depth);
* the hot paths (a new root, a new child of a root, the cancel of a lone
  leaf, a second cancel of it, `current_token()`) cost as much with 500 other
  threads inside the user callbacks of their own cancels as alone.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import queue
import statistics
import sys
import threading
import time
import timeit
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lifecycle import CancelSource, CancelToken, DeadlineTimer, current_token
from lifecycle._core.tokens import cancel_in_background, wait_callbacks_idle

READ_NUMBER = 200_000  # reads per timeit repetition
READ_REPEAT = 40  # repetitions; the best one counts
WAKE_SAMPLES = 1000
FAN_OUT = 100_000
DEPTH = 100_000  # levels of the deep chain
DEEP_PAIRS = 2000  # register/detach pairs measured on it
PARK = 0.0003  # seconds the firing side waits so that the waiter is blocked
DEADLINE_ROUNDS = 20  # deadlines measured while another deadline's callback blocks
HOT_NUMBER = 20_000  # operations per repetition of a hot path
HOT_REPEAT = 7  # repetitions; the best one counts
BLOCKED = 500  # threads inside a slow callback of their own cancel()

Fire = Callable[[], object]


@dataclass
class Row:
    """One line of the report; ``ok`` is None for a baseline without a target."""

    name: str
    value: str
    target: str = "-"
    ok: bool | None = None


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def children_of(token: CancelToken) -> int:
    return 0 if token._children is None else len(token._children)


# -- cost of reading `cancelled` ---------------------------------------------


def read_costs() -> list[Row]:
    plain = CancelSource().token
    timed = CancelSource(timeout=3600.0).token
    event = threading.Event()
    timers = {
        "plain": timeit.Timer("t.cancelled", globals={"t": plain}),
        "deadline": timeit.Timer("t.cancelled", globals={"t": timed}),
        "event": timeit.Timer("e.is_set()", globals={"e": event}),
    }
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(READ_REPEAT):  # interleaved, so drift hits all three alike
        for key, timer in timers.items():
            best[key] = min(best[key], timer.timeit(READ_NUMBER) / READ_NUMBER * 1e9)
    rows = [Row("threading.Event().is_set()  [baseline]", f"{best['event']:.1f} ns/op")]
    for key, label in (
        ("plain", "token.cancelled, no deadline"),
        ("deadline", "token.cancelled, deadline"),
    ):
        ratio = best[key] / best["event"]
        rows.append(Row(label, f"{best[key]:.1f} ns/op"))
        rows.append(Row(f"  {key} / Event.is_set()", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5))
    return rows


# -- wake latency ------------------------------------------------------------


def percentiles(samples_us: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_us)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50, p99


def thread_wake(make: Callable[[], tuple[Callable[[], object], Fire]]) -> list[float]:
    """Latency (µs) from fire() in this thread to the wake of a waiting thread."""
    handoff: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
    woke: queue.SimpleQueue[int] = queue.SimpleQueue()

    def waiter() -> None:
        while (wait := handoff.get()) is not None:
            wait()
            woke.put(time.perf_counter_ns())

    thread = threading.Thread(target=waiter, name="bench-waiter", daemon=True)
    thread.start()
    samples = []
    try:
        for _ in range(WAKE_SAMPLES):
            wait, fire = make()
            handoff.put(wait)
            time.sleep(PARK)  # the waiter is now blocked in wait()
            start = time.perf_counter_ns()
            fire()
            samples.append((woke.get(timeout=5.0) - start) / 1e3)
    finally:
        handoff.put(None)
        thread.join(5.0)
    return samples


def make_token_thread() -> tuple[Callable[[], object], Fire]:
    source = CancelSource()
    return (lambda: source.token.wait(5.0)), source.cancel


def make_event_thread() -> tuple[Callable[[], object], Fire]:
    event = threading.Event()
    return (lambda: event.wait(5.0)), event.set


AsyncMaker = Callable[[asyncio.AbstractEventLoop], tuple[Callable[[], Awaitable[object]], Fire]]


def asyncio_wake(make: AsyncMaker) -> list[float]:
    """Latency (µs) from fire() in another thread to the wake of a waiting task."""
    handoff: queue.SimpleQueue[Fire | None] = queue.SimpleQueue()
    fired_at: list[int] = []

    def firer() -> None:
        while (fire := handoff.get()) is not None:
            time.sleep(PARK)  # the loop is now blocked in select()
            fired_at.append(time.perf_counter_ns())
            fire()

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        samples = []
        for _ in range(WAKE_SAMPLES):
            wait, fire = make(loop)
            task = asyncio.ensure_future(wait())
            await asyncio.sleep(0)  # the waiter is parked
            handoff.put(fire)
            await asyncio.wait_for(task, 5.0)
            samples.append((time.perf_counter_ns() - fired_at[-1]) / 1e3)
        return samples

    thread = threading.Thread(target=firer, name="bench-firer", daemon=True)
    thread.start()
    try:
        return asyncio.run(main())
    finally:
        handoff.put(None)
        thread.join(5.0)


def make_token_async(
    loop: asyncio.AbstractEventLoop,
) -> tuple[Callable[[], Awaitable[object]], Fire]:
    source = CancelSource()
    return source.token.wait_async, source.cancel


def make_future_async(
    loop: asyncio.AbstractEventLoop,
) -> tuple[Callable[[], Awaitable[object]], Fire]:
    future: asyncio.Future[None] = loop.create_future()

    async def wait() -> None:
        await future

    return wait, lambda: loop.call_soon_threadsafe(future.set_result, None)


class Blocked:
    """Sources whose one user callback blocks until `release` (the pool saturates)."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def source(self) -> CancelSource:
        source = CancelSource()
        source.token.on_cancel(lambda: self.gate.wait(60.0))
        return source

    def release(self) -> None:
        self.gate.set()
        assert wait_callbacks_idle(60.0), "callbacks still running 60 s after release"


def make_background_thread(blocked: Blocked) -> Callable[[], tuple[Callable[[], object], Fire]]:
    def make() -> tuple[Callable[[], object], Fire]:
        source = blocked.source()
        return (lambda: source.token.wait(5.0)), lambda: cancel_in_background(source, "stop")

    return make


def make_background_async(blocked: Blocked) -> AsyncMaker:
    def make(
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Callable[[], Awaitable[object]], Fire]:
        source = blocked.source()
        return source.token.wait_async, lambda: cancel_in_background(source, "stop")

    return make


def with_blocked(measure: Callable[[Blocked], list[float]]) -> Callable[[], list[float]]:
    def run() -> list[float]:
        blocked = Blocked()
        try:
            return measure(blocked)
        finally:
            blocked.release()

    return run


def wake_latencies() -> list[Row]:
    rows = []
    cases: list[tuple[str, Callable[[], list[float]], bool]] = [
        ("thread wake, token.wait()", lambda: thread_wake(make_token_thread), True),
        ("thread wake, Event.wait()  [baseline]", lambda: thread_wake(make_event_thread), False),
        (
            "thread wake, cancel_in_background, callbacks blocked",
            with_blocked(lambda b: thread_wake(make_background_thread(b))),
            True,
        ),
        ("asyncio wake, wait_async()", lambda: asyncio_wake(make_token_async), True),
        (
            "asyncio wake, call_soon_threadsafe  [baseline]",
            lambda: asyncio_wake(make_future_async),
            False,
        ),
        (
            "asyncio wake, cancel_in_background, callbacks blocked",
            with_blocked(lambda b: asyncio_wake(make_background_async(b))),
            True,
        ),
    ]
    for name, measure, has_target in cases:
        p50, p99 = percentiles(measure())
        value = f"p50 {p50:.0f} µs, p99 {p99:.0f} µs"
        if has_target:
            rows.append(Row(name, value, "p99 < 1000 µs", p99 < 1000.0))
        else:
            rows.append(Row(name, value))
    return rows


# -- a deadline while another deadline's callback blocks -----------------------------


def record_now(into: queue.SimpleQueue[float]) -> None:
    into.put(time.monotonic())


def deadline_beside_blocked() -> list[Row]:
    """How late deadline B's waiter and callback are while deadline A's callback blocks."""
    timer = DeadlineTimer()  # its own timer thread, on the real clock
    gate = threading.Event()
    blocked = threading.Event()
    a = CancelSource(timeout=0.005, timer=timer)

    def block() -> None:
        blocked.set()
        gate.wait(60.0)

    a.token.on_cancel(block)
    wake_ms, callback_ms = [], []
    try:
        assert blocked.wait(5.0), "deadline A's callback did not start"
        for _ in range(DEADLINE_ROUNDS):
            b = CancelSource(timeout=0.01, timer=timer)
            ran: queue.SimpleQueue[float] = queue.SimpleQueue()
            b.token.on_cancel(functools.partial(record_now, ran))
            assert b.token.wait(5.0)
            woke = time.monotonic()
            called = ran.get(timeout=5.0)
            deadline = b.token.deadline
            assert deadline is not None
            wake_ms.append((woke - deadline) * 1e3)
            callback_ms.append((called - deadline) * 1e3)
        assert not gate.is_set(), "A's callback must block throughout"
    finally:
        gate.set()
        assert wait_callbacks_idle(60.0)
    wake_max, callback_max = max(wake_ms), max(callback_ms)
    return [
        Row(
            "deadline B's waiter, while A's callback blocks",
            f"late p50 {statistics.median(wake_ms):.2f} ms, max {wake_max:.2f} ms",
            "max < 20 ms",
            wake_max < 20.0,
        ),
        Row(
            "deadline B's callback, while A's callback blocks",
            f"late p50 {statistics.median(callback_ms):.2f} ms, max {callback_max:.2f} ms",
            "max < 20 ms",
            callback_max < 20.0,
        ),
    ]


# -- fan-out and accumulation -------------------------------------------------


def fan_out_cancel() -> Row:
    best = float("inf")
    for _ in range(3):
        parent = CancelSource()
        children = [CancelSource(parent.token) for _ in range(FAN_OUT)]
        gc.collect()
        start = time.perf_counter()
        parent.cancel()
        best = min(best, time.perf_counter() - start)
        assert all(c.token.cancelled for c in children)
        del children
    return Row(
        f"cancel a parent of {FAN_OUT:,} children (best of 3)",
        f"{best:.3f} s",
        "< 0.3 s",
        best < 0.3,
    )


def traced_round(parent: CancelSource, round_: Callable[[], object]) -> tuple[int, int, int, float]:
    """(children, memory) before and after ``round_``, after a gc; and its duration."""
    gc.collect()
    size_before = children_of(parent.token)
    mem_before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    round_()
    seconds = time.perf_counter() - start
    gc.collect()
    return (
        size_before,
        children_of(parent.token),
        tracemalloc.get_traced_memory()[0] - mem_before,
        seconds,
    )


def accumulation_row(label: str, parent: CancelSource, round_: Callable[[], object]) -> Row:
    # The first round also pays one-off costs (interned objects, free lists, and
    # the parent's set table, which keeps its high-water size); the second shows
    # whether anything accumulates per round.
    _, _, first_growth, _ = traced_round(parent, round_)
    size_before, size_after, growth, seconds = traced_round(parent, round_)
    flat = size_after == size_before == 0 and growth < 64 * 1024
    return Row(
        f"{label} {FAN_OUT:,} children",
        f"children {size_before} -> {size_after}, mem 1st {first_growth / 1024:+.0f} KiB, "
        f"2nd {growth / 1024:+.1f} KiB, {seconds:.2f} s",
        "0 children, 2nd < 64 KiB",
        flat,
    )


def accumulation() -> list[Row]:
    parent = CancelSource()

    def closed() -> None:
        for _ in range(FAN_OUT):
            with CancelSource(parent.token):
                pass

    def dropped_one_by_one() -> None:
        for _ in range(FAN_OUT):
            CancelSource(parent.token)

    def dropped_together() -> None:
        held = [CancelSource(parent.token) for _ in range(FAN_OUT)]
        assert children_of(parent.token) == FAN_OUT
        del held

    tracemalloc.start()
    try:
        return [
            accumulation_row("with-close", parent, closed),
            accumulation_row("drop unclosed, one by one,", parent, dropped_one_by_one),
            accumulation_row("drop unclosed, all held then", parent, dropped_together),
        ]
    finally:
        tracemalloc.stop()


# -- registrations deep in a tree -------------------------------------------------


def pair_cost(token: CancelToken) -> float:
    """Microseconds per on_cancel + detach on ``token`` (after one to warm up)."""
    token.on_cancel(int)()
    start = time.perf_counter()
    for _ in range(DEEP_PAIRS):
        token.on_cancel(int)()
    return (time.perf_counter() - start) / DEEP_PAIRS * 1e6


def deep_registration() -> list[Row]:
    root = CancelSource()
    shallow = pair_cost(CancelSource(root.token).token)
    chain = [root]
    for _ in range(DEPTH):
        chain.append(CancelSource(chain[-1].token))
    deep = pair_cost(chain[-1].token)
    root.cancel()
    return [
        Row("register+detach, child of a root  [baseline]", f"{shallow:.2f} µs/pair"),
        Row(
            f"register+detach, {DEPTH:,} levels deep",
            f"{deep:.2f} µs/pair",
            "< 3x baseline",
            deep < 3 * shallow,
        ),
    ]


# -- a deep chain next to a flat fan-out ------------------------------------------


def chain_of(depth: int) -> tuple[CancelSource, list[CancelSource]]:
    root = CancelSource()
    chain = [root]
    for _ in range(depth):
        chain.append(CancelSource(chain[-1].token))
    return root, chain[1:]


def fan_out_of(width: int) -> tuple[CancelSource, list[CancelSource]]:
    root = CancelSource()
    return root, [CancelSource(root.token) for _ in range(width)]


def whole_life(
    shape: Callable[[int], tuple[CancelSource, list[CancelSource]]], gc_on: bool
) -> float:
    """Seconds to build ``shape``, register on every token, cancel the root, drop it all."""
    gc.collect()
    if not gc_on:
        gc.disable()
    try:
        start = time.perf_counter()
        root, sources = shape(DEPTH)
        for source in sources:
            source.token.on_cancel(int)
        root.cancel()
        del root, sources
        gc.collect()  # the registrations' cycles too: all of it gone
        return time.perf_counter() - start
    finally:
        gc.enable()


def deep_chain() -> list[Row]:
    rows = []
    for gc_on, target in ((False, 3.0), (True, None)):
        flat = deep = float("inf")
        for _ in range(3):  # interleaved, so drift hits both alike
            flat = min(flat, whole_life(fan_out_of, gc_on))
            deep = min(deep, whole_life(chain_of, gc_on))
        ratio = deep / flat
        label = "collector off" if not gc_on else "collector on"
        rows.append(
            Row(
                f"build+register+cancel+drop, {DEPTH:,} children of a root, {label}  [baseline]",
                f"{flat:.2f} s",
            )
        )
        rows.append(
            Row(
                f"the same, a chain {DEPTH:,} deep, {label}",
                f"{deep:.2f} s, {ratio:.2f}x the fan-out",
                "-" if target is None else f"<= {target:.0f}x",
                None if target is None else ratio <= target,
            )
        )
    return rows


# -- hot paths, alone and beside many cancellations under way ----------------------


def hot_costs() -> dict[str, float]:
    """Nanoseconds of this thread's CPU per operation of each hot path (best of HOT_REPEAT).

    CPU time, not wall time: the threads of other programs on a busy machine do
    not count, the work of the measured call (the collector's included) does.
    """
    root = CancelSource()
    held: list[CancelSource] = []

    def children() -> None:
        held.clear()
        append, token = held.append, root.token
        for _ in range(HOT_NUMBER):
            append(CancelSource(token))

    def roots() -> None:
        for _ in range(HOT_NUMBER):
            CancelSource()

    def leaves() -> Callable[[], None]:
        batch = [CancelSource() for _ in range(HOT_NUMBER)]

        def cancel() -> None:
            for source in batch:
                source.cancel()

        return cancel

    def current() -> None:
        for _ in range(HOT_NUMBER):
            current_token()

    best: dict[str, float] = {}
    for _ in range(HOT_REPEAT):
        cancel = leaves()
        for key, run in (
            ("new root", roots),
            ("new child of a root", children),
            ("cancel a lone leaf", cancel),
            ("cancel it again", cancel),
            ("current_token()", current),
        ):
            start = time.thread_time()
            run()
            took = (time.thread_time() - start) / HOT_NUMBER * 1e9
            best[key] = min(best.get(key, float("inf")), took)
    return best


def hot_paths() -> list[Row]:
    alone = hot_costs()
    gate = threading.Event()
    inside = threading.Semaphore(0)

    def cancel_with_a_slow_callback() -> None:
        def slow() -> None:
            inside.release()
            gate.wait(60.0)

        source = CancelSource()
        source.token.on_cancel(slow)
        source.cancel()

    threads = [
        threading.Thread(target=cancel_with_a_slow_callback, daemon=True) for _ in range(BLOCKED)
    ]
    try:
        for thread in threads:
            thread.start()
            assert inside.acquire(timeout=10.0), "a slow callback did not start"
        beside = hot_costs()
    finally:
        gate.set()
        for thread in threads:
            thread.join(10.0)
    rows = []
    for key, ns in alone.items():
        ratio = beside[key] / ns
        rows.append(Row(key, f"{ns:.0f} ns CPU/op"))
        rows.append(
            Row(
                f"  {key}, {BLOCKED} other cancels in callbacks",
                f"{beside[key]:.0f} ns CPU/op, {ratio:.2f}x",
                "<= 1.5x",
                ratio <= 1.5,
            )
        )
    return rows


# -- report -------------------------------------------------------------------


def render(rows: list[Row]) -> str:
    header = Row("measurement", "value", "target")
    table = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in ("name", "value", "target")]
    lines = []
    for i, row in enumerate(table):
        result = "result" if i == 0 else verdict(row.ok)
        cells = [row.name, row.value, row.target]
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + result
        )
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tokens", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    print(f"lifecycle tokens benchmark, Python {sys.version.split()[0]}, {sys.platform}")
    rows = [
        *read_costs(),
        *hot_paths(),
        *wake_latencies(),
        *deadline_beside_blocked(),
        fan_out_cancel(),
        *accumulation(),
        *deep_registration(),
        *deep_chain(),
    ]
    print(render(rows))
    failed = [r.name for r in rows if r.ok is False]
    print(f"{len(failed)} target(s) missed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
