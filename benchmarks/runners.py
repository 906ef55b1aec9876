"""How long a shutdown takes on each runner, against what it should take.

Run from the repository root::

    python -m benchmarks.runners [--check] [--repeat N] [--exits N]

Two measurements, one table:

* **layered shutdown**: 400 components in 10 layers of 40, each layer
  depending on the one below; every ``stop`` takes 20 ms. Stopping
  independent components concurrently, the shutdown should take about the
  critical path, 10 x 20 ms = 0.2 s (ordering rule 2 in docs/explanation.md);
  the target is wall / critical path <= 1.1. Beside it, the same app stopped one component
  at a time in reverse start order, as fx and .NET's host do by default.
  The shutdown comes ``SETTLE`` seconds after ``start()`` returned, as it
  comes to a running service: once an app has run a second, the runner
  readies the call threads its widest wave of sync stops needs. Below them,
  the floor: the same graph of 20 ms stops as bare asyncio tasks and as bare
  threads waiting on events, measured in the same run. Each lifecycle row
  also says, for information, its wall time over the floor of its kind of
  stop (threads for sync stops, asyncio for async ones) and the process's
  CPU time per component stopped (all threads; a proxy for the critical
  path's cost that load disturbs less than the wall time). Before each
  measured shutdown the garbage of the previous ones is collected, outside
  the clock (a full collection of it takes 15-25 ms and would land in a
  random row).
* **SIGTERM to exit**: a real child process running an app of 50 trivial
  components under ``lifecycle.run``; the time from ``os.kill(SIGTERM)`` to
  the parent reaping the process, median of ``--exits`` runs.

``--check`` exits 1 when a row fails its target.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

import lifecycle
from lifecycle import App, AsyncioRunner, CancelToken, ThreadedRunner

ROOT = Path(__file__).resolve().parent.parent
LAYERS = 10
WIDTH = 40
STOP_SECONDS = 0.020
CRITICAL_PATH = LAYERS * STOP_SECONDS
SETTLE = 1.3
"""Seconds the app runs before the measured shutdown."""
RATIO_TARGET = 1.1
EXIT_COMPONENTS = 50
EXIT_TARGET = 0.25
"""Seconds from SIGTERM to a reaped process for 50 trivial components."""


def _drop(logger: Any, method: str, event: Any) -> Any:
    raise structlog.DropEvent


def quiet() -> None:
    """Measure lifecycle, not log rendering."""
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)


# -- layered shutdown -------------------------------------------------------------


class SyncStop:
    def stop(self, token: CancelToken) -> None:
        time.sleep(STOP_SECONDS)


class AsyncStop:
    async def stop(self, token: CancelToken) -> None:
        await asyncio.sleep(STOP_SECONDS)


def layered_app(kind: type[SyncStop] | type[AsyncStop]) -> tuple[App, list[Any]]:
    """10 layers of 40; each component depends on two of the layer below."""
    app = App("layers", shutdown_timeout=60, stop_timeout=10)
    below: list[Any] = []
    order: list[Any] = []
    for layer in range(LAYERS):
        current = []
        for i in range(WIDTH):
            deps = [below[i], below[(i + 1) % WIDTH]] if below else []
            current.append(app.add(kind(), name=f"c{layer}-{i}", depends_on=deps))
        order.extend(current)
        below = current
    return app, order


CPU_PER_STOP: dict[str, list[float]] = {}
"""Per layered row, the CPU seconds per component of each measured shutdown."""


def _settled() -> None:
    """Collect what earlier runs left (outside the clock): no full collection mid-row."""
    gc.collect()


def shutdown_threaded(kind: type[SyncStop] | type[AsyncStop]) -> float:
    app, _ = layered_app(kind)
    runner = ThreadedRunner(app, signals=None)
    runner.start()
    time.sleep(SETTLE)
    _settled()
    cpu = time.process_time()
    began = time.perf_counter()
    code = runner.stop()
    took = time.perf_counter() - began
    CPU_PER_STOP.setdefault(f"thread {kind.__name__}", []).append(
        (time.process_time() - cpu) / (LAYERS * WIDTH)
    )
    assert code == 0, code
    return took


def shutdown_asyncio(kind: type[SyncStop] | type[AsyncStop]) -> float:
    async def main() -> float:
        app, _ = layered_app(kind)
        runner = AsyncioRunner(app, signals=None)
        await runner.start()
        await asyncio.sleep(SETTLE)
        _settled()
        cpu = time.process_time()
        began = time.perf_counter()
        code = await runner.stop()
        took = time.perf_counter() - began
        CPU_PER_STOP.setdefault(f"asyncio {kind.__name__}", []).append(
            (time.process_time() - cpu) / (LAYERS * WIDTH)
        )
        assert code == 0, code
        return took

    return asyncio.run(main())


def floor_asyncio() -> float:
    """The same 400 stops and dependencies as bare asyncio tasks and events: the floor."""

    async def main() -> float:
        done = {(layer, i): asyncio.Event() for layer in range(LAYERS) for i in range(WIDTH)}

        async def stop(layer: int, i: int) -> None:
            if layer < LAYERS - 1:  # its two dependents, one layer up, stop first
                await done[layer + 1, i].wait()
                await done[layer + 1, (i - 1) % WIDTH].wait()
            await asyncio.sleep(STOP_SECONDS)
            done[layer, i].set()

        _settled()
        began = time.perf_counter()
        await asyncio.gather(*(stop(layer, i) for layer in range(LAYERS) for i in range(WIDTH)))
        return time.perf_counter() - began

    return asyncio.run(main())


def floor_threads() -> float:
    """The same 400 stops as bare threads and events (started before the clock starts)."""
    done = {(layer, i): threading.Event() for layer in range(LAYERS) for i in range(WIDTH)}
    go = threading.Event()

    def stop(layer: int, i: int) -> None:
        go.wait()
        if layer < LAYERS - 1:
            done[layer + 1, i].wait()
            done[layer + 1, (i - 1) % WIDTH].wait()
        time.sleep(STOP_SECONDS)
        done[layer, i].set()

    threads = [
        threading.Thread(target=stop, args=(layer, i), daemon=True)
        for layer in range(LAYERS)
        for i in range(WIDTH)
    ]
    for thread in threads:
        thread.start()
    _settled()
    began = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


def shutdown_sequential() -> float:
    """The same app's stops, one at a time, in reverse start order."""
    _, order = layered_app(SyncStop)
    token = lifecycle.CancelSource().token
    began = time.perf_counter()
    for component in reversed(order):
        component.stop(token)
    return time.perf_counter() - began


# -- SIGTERM to exit ------------------------------------------------------------------


def child(kind: str) -> int:
    """The measured child: 50 trivial components, then "ready" on stdout."""
    quiet()
    app = App("exit", shutdown_timeout=10)
    is_async = kind == "asyncio"

    class Trivial:
        def start(self, token: CancelToken) -> None:
            pass

        def stop(self, token: CancelToken) -> None:
            pass

    class ATrivial:
        async def start(self, token: CancelToken) -> None:
            pass

        async def stop(self, token: CancelToken) -> None:
            pass

    parts = [app.add(ATrivial() if is_async else Trivial()) for _ in range(EXIT_COMPONENTS)]

    class Ready:
        def start(self, token: CancelToken) -> None:
            print("ready", flush=True)

    app.add(Ready(), depends_on=parts)  # starts last: every other one is running
    return lifecycle.run(app, runner="asyncio" if is_async else "thread")


def sigterm_to_exit(kind: str) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.runners", "--child", kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(20.0, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"child said {line!r}")
        began = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait()
        took = time.perf_counter() - began
    finally:
        watchdog.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if code != 0:
        raise RuntimeError(f"child exited {code}")
    return took


# -- the table ------------------------------------------------------------------------


def measure(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a row fails")
    parser.add_argument("--repeat", type=int, default=3, help="shutdowns per runner (median)")
    parser.add_argument("--exits", type=int, default=10, help="child processes per runner")
    parser.add_argument("--child", choices=["thread", "asyncio"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    quiet()

    rows: list[tuple[str, str, float, str, bool | None]] = []
    header = f"{'measurement':<44} {'seconds':>8} {'ratio':>8}  {'target':<16} result"
    print(header)
    print("-" * len(header))

    def row(
        name: str, seconds: float, ratio: str, target: str, ok: bool | None, note: str = ""
    ) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        rows.append((name, ratio, seconds, target, ok))
        line = f"{name:<44} {seconds:>8.3f} {ratio:>8}  {target:<16} {verdict}"
        print(f"{line}  {note}" if note else line, flush=True)

    # What the machine allows: the same graph without lifecycle, in this run
    # (measured first, printed below the rows they are the floor of).
    floors = {
        "asyncio": measure(floor_asyncio, args.repeat),
        "threads": measure(floor_threads, args.repeat),
    }
    layered = [
        ("400 stops, 10 layers: thread runner, sync", "thread SyncStop", "threads"),
        ("400 stops, 10 layers: thread runner, async", "thread AsyncStop", "asyncio"),
        ("400 stops, 10 layers: asyncio runner, async", "asyncio AsyncStop", "asyncio"),
        ("400 stops, 10 layers: asyncio runner, sync", "asyncio SyncStop", "threads"),
    ]
    runs: dict[str, Callable[[], float]] = {
        "thread SyncStop": lambda: shutdown_threaded(SyncStop),
        "thread AsyncStop": lambda: shutdown_threaded(AsyncStop),
        "asyncio AsyncStop": lambda: shutdown_asyncio(AsyncStop),
        "asyncio SyncStop": lambda: shutdown_asyncio(SyncStop),
    }
    for name, key, floor in layered:
        seconds = measure(runs[key], args.repeat)
        ratio = seconds / CRITICAL_PATH
        cpu = statistics.median(CPU_PER_STOP[key]) * 1e6
        note = f"({seconds / floors[floor]:.2f}x the {floor} floor; {cpu:.0f} us CPU/stop)"
        target = f"<= {RATIO_TARGET}x of 0.2 s"
        row(name, seconds, f"{ratio:.2f}x", target, ratio <= RATIO_TARGET, note)
    for name, floor in (
        ("400 stops, 10 layers: bare asyncio (floor)", "asyncio"),
        ("400 stops, 10 layers: bare threads (floor)", "threads"),
    ):
        seconds = floors[floor]
        row(name, seconds, f"{seconds / CRITICAL_PATH:.2f}x", "(baseline)", None)
    sequential = shutdown_sequential()
    row(
        "400 stops, sequential reverse (fx/.NET)",
        sequential,
        f"{sequential / CRITICAL_PATH:.2f}x",
        "(contrast)",
        None,
    )
    for kind in ("thread", "asyncio"):
        samples = [sigterm_to_exit(kind) for _ in range(args.exits)]
        seconds = statistics.median(samples)
        row(
            f"SIGTERM -> exit, 50 components: {kind}",
            seconds,
            f"max {max(samples):.2f}",
            f"median <= {EXIT_TARGET} s",
            seconds <= EXIT_TARGET,
        )
    failed = [r for r in rows if r[4] is False]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    passed = sum(1 for r in rows if r[4] is True)
    print(f"\n{passed} PASS, {len(failed)} FAIL")
    print(f"load average {load} on {os.cpu_count()} CPUs (timings need an idle machine)")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
