"""What lifecycle.grpc adds per unary call: a plain grpcio server against lifecycle's, in one run.

    python -m benchmarks.grpc            # print the table (exit code 0)
    python -m benchmarks.grpc --check    # exit 1 when a ratio misses its target

Each server runs in a child process of its own (so that the load generator
does not share its GIL) and serves the same handler, an echo of the request
bytes, to a closed loop of grpcio clients (one channel per client thread),
each round bounded in time and in calls:

* ``sync``: ``grpc.server`` with a thread pool of 16, against
  `lifecycle.grpc.Server` hosting the very same handler (its interceptor,
  its per-call tracking and token, its health service registered) under
  ``lifecycle.run``'s threaded runner;
* ``aio``: ``grpc.aio.server`` against `lifecycle.grpc.AioServer` under the
  asyncio runner, with an ``async def`` handler.

Before that, the **hot path in process**: the handler called as grpcio calls
it (in a fresh ``contextvars.Context``, as grpcio runs each RPC), bare and
as lifecycle's interceptor hands it over (the interceptor's lookup, the
per-call ticket, token and scope); the best of ``ROUNDS`` rounds of
``HOT_CALLS`` calls each. ``added`` is the difference, target ``<=
ADDED_TARGET_US``. It resolves what the process table cannot on a shared
machine, where a process's CPU per call swings by tens of µs between rounds.

Last, **the stop**, in process: four unary calls of 200 ms in flight and
one server stream open (its handler honours its token); a plain
``grpc.server`` stopped with ``stop(5)`` (the grace of grpcio's examples),
against `lifecycle.grpc.Server` / `AioServer` stopped by their runner with
a stop timeout of 5 s (a health ``Watch`` open as well): how long the stop
took, how the stream ended, how many unary calls succeeded.

Rounds alternate (A B B A ...) so that drift in the machine hits both alike.
A row compares the server process's CPU time per call, best round of each:
``ratio`` = plain CPU per call / lifecycle CPU per call (1.0: no cost;
target ``>= TARGET``), ``added`` their difference in µs. Calls per second are
those of the client loop, which on a small machine is itself the bottleneck
(grpcio's Python client costs more per call than its server). Every call is
checked; a failed call fails the row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.90
"""The least ratio (plain CPU per call / lifecycle's) a row must reach with ``--check``."""
SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"
PAYLOAD = b"hello, world"
ADDED_TARGET_US = 10.0
"""What the in-process hot path may add per call, in µs, with ``--check``."""
HOT_CALLS = 100_000
ROUNDS = 5
MAX_CALLS = 50_000
"""Calls one round makes at most (its time bound usually comes first)."""


# -- the servers ---------------------------------------------------------------------------


def echo(request: bytes, context: Any) -> bytes:
    return request


async def echo_async(request: bytes, context: Any) -> bytes:
    return request


def handlers(kind: str) -> Any:
    import grpc  # noqa: PLC0415 - the child imports what it serves

    behaviour = echo if kind == "sync" else echo_async
    return grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(behaviour)}
    )


def serve(kind: str, flavour: str) -> None:
    """Child process: serve, print ``PORT n``; ``cpu`` on stdin prints CPU time; EOF stops."""
    import grpc  # noqa: PLC0415
    import structlog  # noqa: PLC0415

    import lifecycle  # noqa: PLC0415
    import lifecycle.grpc  # noqa: PLC0415

    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    ready = threading.Event()
    port: list[int] = []
    stop: Any
    if flavour == "plain" and kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(16), handlers=[handlers(kind)])
        port.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()

        def stop() -> None:
            server.stop(None)

    elif flavour == "plain":
        loop = asyncio.new_event_loop()
        done = asyncio.Event()

        async def main() -> None:
            server = grpc.aio.server(handlers=[handlers(kind)])
            port.append(server.add_insecure_port("127.0.0.1:0"))
            await server.start()
            ready.set()
            await done.wait()
            await server.stop(None)

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        ready.wait(30)

        def stop() -> None:
            loop.call_soon_threadsafe(done.set)
            thread.join(30)

    else:
        app = lifecycle.App("bench")
        cls = lifecycle.grpc.Server if kind == "sync" else lifecycle.grpc.AioServer
        component = app.add(cls(handlers=[handlers(kind)], host="127.0.0.1", port=0))

        class Ready:
            def start(self) -> None:
                port.append(component.port)
                ready.set()

        app.add(Ready(), depends_on=[component])
        runner = "thread" if kind == "sync" else "asyncio"
        thread = threading.Thread(
            target=lifecycle.run, args=(app,), kwargs={"runner": runner, "signals": None}
        )
        thread.start()
        ready.wait(30)

        def stop() -> None:
            app.request_shutdown("benchmark done")
            thread.join(30)

    print(f"PORT {port[0]}", flush=True)
    for line in sys.stdin:
        if line.strip() == "cpu":
            print(f"{time.process_time():.9f}", flush=True)
    stop()


# -- the hot path, in process -----------------------------------------------------------------


class _Details:
    method = METHOD


def hot_path() -> tuple[float, float]:
    """µs per call: ``(bare, through lifecycle's interceptor and wrapper)``, best rounds."""
    import contextvars  # noqa: PLC0415

    import lifecycle.grpc  # noqa: PLC0415
    from lifecycle.grpc import _Interceptor  # noqa: PLC0415 - what grpcio calls per RPC

    server = lifecycle.grpc.Server(handlers=[handlers("sync")], host="127.0.0.1", port=0)
    handler = handlers("sync").service(_Details())
    interceptor = _Interceptor(server)
    details = _Details()

    def bare() -> None:
        handler.unary_unary(PAYLOAD, None)

    def wrapped() -> None:
        interceptor.intercept_service(lambda _: handler, details).unary_unary(PAYLOAD, None)

    best = {bare: float("inf"), wrapped: float("inf")}
    for _ in range(ROUNDS):
        for fn, so_far in best.items():
            began = time.perf_counter()
            for _ in range(HOT_CALLS):
                contextvars.Context().run(fn)
            best[fn] = min(so_far, (time.perf_counter() - began) / HOT_CALLS * 1e6)
    return best[bare], best[wrapped]


# -- the load ------------------------------------------------------------------------------


@dataclass
class Counts:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def client(port: int, until: float, budget: int, counts: Counts) -> None:
    import grpc  # noqa: PLC0415

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        while time.monotonic() < until and counts.ok + counts.failed < budget:
            try:
                answer = call(PAYLOAD, timeout=10.0)
            except Exception as error:
                answer = error
            if answer == PAYLOAD:
                counts.ok += 1
            else:
                counts.failed += 1
                if len(counts.errors) < 3:
                    counts.errors.append(repr(answer))


def measure(port: int, clients: int, seconds: float) -> tuple[float, Counts]:
    counts = [Counts() for _ in range(clients)]
    began = time.monotonic()
    until = began + seconds
    budget = MAX_CALLS // clients
    threads = [
        threading.Thread(target=client, args=(port, until, budget, c), daemon=True) for c in counts
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 15.0)
    elapsed = time.monotonic() - began
    total = Counts(
        ok=sum(c.ok for c in counts),
        failed=sum(c.failed for c in counts),
        errors=[e for c in counts for e in c.errors][:3],
    )
    return total.ok / elapsed, total


class Child:
    """A server child process."""

    def __init__(self, kind: str, flavour: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.grpc", "--serve", kind, flavour],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"server {kind}/{flavour} did not start: {line!r}")
        self.port = int(line.split()[1])

    def cpu(self) -> float:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"cpu\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Best:
    rate: float = 0.0
    cpu_us: float = float("inf")
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def run_row(kind: str, rounds: int, clients: int, seconds: float) -> dict[str, Best]:
    children = {flavour: Child(kind, flavour) for flavour in ("plain", "lifecycle")}
    best = {flavour: Best() for flavour in children}
    try:
        for child in children.values():  # warm up: connections, caches
            measure(child.port, clients, min(seconds, 0.3))
        order = ["plain", "lifecycle"]
        for i in range(rounds):
            for flavour in order if i % 2 == 0 else order[::-1]:
                child = children[flavour]
                before = child.cpu()
                rate, counts = measure(child.port, clients, seconds)
                used = child.cpu() - before
                b = best[flavour]
                b.failed += counts.failed
                b.errors.extend(counts.errors)
                b.rate = max(b.rate, rate)
                if counts.ok:
                    b.cpu_us = min(b.cpu_us, used / counts.ok * 1e6)
    finally:
        for child in children.values():
            child.close()
    return best


# -- the stop -------------------------------------------------------------------------------


def stop_plain() -> tuple[float, str, int]:
    """A plain grpc.server's ``stop(5)``: seconds, the stream's status, unary calls OK."""
    import grpc  # noqa: PLC0415

    from tests.grpc_fixtures import Client, Echo  # noqa: PLC0415

    echo = Echo()
    server = grpc.server(futures.ThreadPoolExecutor(16), handlers=[echo.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = Client(f"127.0.0.1:{port}")
    try:
        stream = client.stream(b"", timeout=30)
        next(stream)
        calls = [client.unary.future(b"slow", timeout=30) for _ in range(4)]
        echo.wait_entered("Stream")
        echo.wait_entered("Unary", 4)
        began = time.monotonic()
        server.stop(5).wait(30)
        took = time.monotonic() - began
        with contextlib.suppress(grpc.RpcError):  # reset: the status tells
            list(stream)
        return took, stream.code().name, sum(c.exception() is None for c in calls)
    finally:
        echo.release.set()
        client.close()


def stop_lifecycle(kind: str) -> tuple[float, str, int]:
    """lifecycle's stop of the same (and a health Watch): seconds, the stream's status, calls OK."""
    import lifecycle  # noqa: PLC0415
    import lifecycle.grpc  # noqa: PLC0415
    from tests.grpc_fixtures import Client, Echo, make_server  # noqa: PLC0415

    echo = Echo()
    app = lifecycle.App("bench-stop", stop_timeout=5.0)
    server = app.add(make_server(kind, echo), name="grpc")
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    client = Client(server.address)
    try:
        stream = client.stream(b"", timeout=30)
        next(stream)
        watch = client.watch(client.health_pb2.HealthCheckRequest(service=""), timeout=30)
        next(watch)
        calls = [client.unary.future(b"slow", timeout=30) for _ in range(4)]
        echo.wait_entered("Stream")
        echo.wait_entered("Unary", 4)
        began = time.monotonic()
        code = runner.stop("benchmark")
        took = time.monotonic() - began
        list(stream)
        list(watch)
        status = stream.code().name if watch.code() == stream.code() else "Watch not ended"
        if code != lifecycle.ExitCode.OK:
            status += f" (exit {code!r})"
        return took, status, sum(c.exception() is None for c in calls)
    finally:
        echo.release.set()
        client.close()


def stop_table(runs: int = 3) -> None:
    print("\nthe stop: 4 unary calls of 200 ms in flight, 1 server stream open\n")
    print("| server | stop took (s, median) | stream ended with | unary calls OK |")
    print("|---|---|---|---|")
    for label, fn in (
        ("grpc.server, stop(5)", stop_plain),
        ("lifecycle.grpc.Server", lambda: stop_lifecycle("sync")),
        ("lifecycle.grpc.AioServer", lambda: stop_lifecycle("aio")),
    ):
        results = [fn() for _ in range(runs)]
        took = sorted(r[0] for r in results)[len(results) // 2]
        statuses = sorted({r[1] for r in results})
        ok = min(r[2] for r in results)
        print(f"| {label} | {took:.2f} | {', '.join(statuses)} | {ok} of 4 (worst run) |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "FLAVOUR"), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per server (default 4)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per round")
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    bare, wrapped = hot_path()
    hot_ok = wrapped - bare <= ADDED_TARGET_US
    print("hot path, in process (µs per call, best of rounds)\n")
    print("| path | bare | lifecycle | added |")
    print("|---|---|---|---|")
    print(
        f"| unary call | {bare:.2f} | {wrapped:.2f} | {wrapped - bare:+.2f}"
        f"{'' if hot_ok else ' MISSED'} |\n"
    )
    print(f"target: added <= {ADDED_TARGET_US} µs\n")
    print(
        f"unary echo, {args.clients} client threads, {args.rounds} rounds of "
        f"{args.seconds:g} s per server (best round of each)\n"
    )
    print(
        "| server | plain calls/s | lifecycle calls/s | plain CPU µs/call "
        "| lifecycle CPU µs/call | added µs | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    missed = not hot_ok
    for kind in ("sync", "aio"):
        best = run_row(kind, args.rounds, args.clients, args.seconds)
        plain, lc = best["plain"], best["lifecycle"]
        ratio = plain.cpu_us / lc.cpu_us
        failed = plain.failed + lc.failed
        ok = failed == 0 and ratio >= TARGET
        missed = missed or not ok
        print(
            f"| {kind} | {plain.rate:,.0f} | {lc.rate:,.0f} | {plain.cpu_us:.1f} "
            f"| {lc.cpu_us:.1f} | {lc.cpu_us - plain.cpu_us:+.1f} | {ratio:.3f}"
            f"{'' if ok else ' MISSED'} |"
        )
        if failed:
            print(f"  {failed} calls failed: {(plain.errors + lc.errors)[:3]}")
    print(f"\ntarget: ratio >= {TARGET} (plain CPU per call / lifecycle CPU per call)")
    stop_table()
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
