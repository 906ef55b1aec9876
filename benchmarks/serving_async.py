"""What lifecycle's asyncio serving costs: each server next to its bare twin, in one run.

    python -m benchmarks.serving_async            # print the table (exit code 0)
    python -m benchmarks.serving_async --check    # exit 1 when a target is missed

Four servers answer the same HTTP/1.1 keep-alive request, each in a child
process of its own (one core for the server, one for the clients):

* ``stream bare``: ``asyncio.start_server`` with a minimal HTTP handler;
* ``stream lifecycle``: the same handler on `AsyncStreamServer` in a running
  `lifecycle.App`, with one ``with server.request():`` block per request (the
  documented form; ``async with`` adds two coroutine calls, about 0.25 us)
  and the ``draining`` check that decides ``Connection: close``;
* ``asgi bare``: a tiny ASGI server (the same HTTP handler turning each
  request into an ASGI call) running a trivial ASGI app;
* ``asgi lifecycle``: the same, with the app wrapped in `ASGIMiddleware`.

Two handler weights: ``minimal`` does nothing but answer (a server that
does no work at all, ~10 us per request: the harshest case for any per-request
bookkeeping); ``app`` parses the query string and awaits once, as the least
real handler does.

The load: ``--clients`` closed-loop keep-alive connections from one asyncio
process (each sends a request, reads the whole response, sends the next),
bounded by ``--duration`` per round. Rounds alternate bare and wrapped so
that drift hits both; the best round of each counts.

Reported per server: requests/s as measured, the server's CPU time per
request (from ``/proc``: the scheduler's nanosecond count where there is one,
else the clock ticks of ``stat``), and its *capacity*, 1 / CPU per request:
the throughput it reaches when it, not the client, is the bottleneck. On a
small machine the client process sets the measured pace and other processes
add noise, so the comparison uses CPU per request (measured req/s where
``/proc`` is missing).

Target: what lifecycle adds per request is at most 1 us of CPU, for each
wrapped server and for a direct call of the middleware (no sockets: the
plain ASGI app called in a loop, and the same through `ASGIMiddleware`, in
alternating rounds, CPU time of the calling thread; the median of
``--direct-processes`` fresh processes, each with its own hash seed and
memory layout, which move one process's reading by up to 0.8 us for the
same code). The capacity ratio is shown beside it for information.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

import lifecycle
from benchmarks._children import in_children
from lifecycle._serving.aioserver import AsyncStreamServer
from lifecycle._serving.asgi import ASGIMiddleware

TARGET_US = 1.0  # CPU microseconds lifecycle may add per request
BODY = b"done\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n" + BODY
RESPONSE_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Connection: close\r\n\r\n" + BODY
)
REQUEST = b"GET /work HTTP/1.1\r\nHost: bench\r\n\r\n"
KINDS = ("stream-bare", "stream-lifecycle", "asgi-bare", "asgi-lifecycle")
PAIRS = (("stream-bare", "stream-lifecycle"), ("asgi-bare", "asgi-lifecycle"))
ROOT = Path(__file__).resolve().parent.parent

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


# -- the servers (run in a child process) --------------------------------------------------


async def skip_headers(reader: asyncio.StreamReader) -> list[tuple[bytes, bytes]]:
    headers = []
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return headers


Work = Callable[[bytes], Awaitable[None]]


async def no_work(target: bytes) -> None:
    """The ``minimal`` weight: nothing."""


async def some_work(target: bytes) -> None:
    """The ``app`` weight: parse the query, await once."""
    parse_qs(urlsplit(target.decode("latin-1")).query)
    await asyncio.sleep(0)


WEIGHTS: dict[str, Work] = {"minimal": no_work, "app": some_work}


def bare_handler(work: Work) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                await skip_headers(reader)
                await work(line.split()[1])
                writer.write(RESPONSE)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


def lifecycle_handler(holder: list[AsyncStreamServer], work: Work) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = holder[0]
        while line := await reader.readline():
            with server.request("GET /work"):
                await skip_headers(reader)
                await work(line.split()[1])
                close = server.draining
                writer.write(RESPONSE_CLOSE if close else RESPONSE)
                await writer.drain()
            if close:
                return

    return handle


def trivial_asgi(work: Work) -> ASGIApp:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await work(scope["raw_path"])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
            }
        )
        await send({"type": "http.response.body", "body": BODY})

    return app


async def _minimal_asgi(scope: Scope, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def asgi_handler(app: ASGIApp) -> Handler:
    """The tiny ASGI server: the same HTTP parsing, one ASGI call per request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, target, _ = line.split()
                headers = await skip_headers(reader)
                close = False

                async def send(message: Message) -> None:
                    nonlocal close
                    if message["type"] == "http.response.start":
                        head = [b"HTTP/1.1 %d OK\r\n" % message["status"]]
                        for name, value in message["headers"]:
                            if name == b"connection" and value == b"close":
                                close = True
                            head.append(b"%s: %s\r\n" % (name, value))
                        head.append(b"\r\n")
                        writer.write(b"".join(head))
                    elif message["type"] == "http.response.body":
                        writer.write(message.get("body", b""))

                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": method.decode(),
                    "path": target.decode(),
                    "raw_path": target,
                    "query_string": b"",
                    "headers": headers,
                }
                await app(scope, _receive, send)
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


def serve(kind: str, weight: str) -> None:
    """Child process: serve ``kind`` on a free port, print it, run until SIGTERM."""
    # stdout carries the port; lifecycle's log goes to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    work = WEIGHTS[weight]
    if kind == "stream-bare":
        asyncio.run(_serve_bare(bare_handler(work)))
    elif kind == "asgi-bare":
        asyncio.run(_serve_bare(asgi_handler(trivial_asgi(work))))
    elif kind == "stream-lifecycle":
        app = lifecycle.App("bench")
        holder: list[AsyncStreamServer] = []
        server = AsyncStreamServer(lifecycle_handler(holder, work), unit="request")
        holder.append(server)
        app.add(server)
        asyncio.run(_serve_app(app, server))
    elif kind == "asgi-lifecycle":
        app = lifecycle.App("bench")
        middleware = ASGIMiddleware(trivial_asgi(work), app)
        server = AsyncStreamServer(asgi_handler(middleware), unit="request")
        app.add(server)
        asyncio.run(_serve_app(app, server))
    else:
        raise SystemExit(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


async def _serve_bare(handler: Handler) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=128)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def _serve_app(app: lifecycle.App, server: AsyncStreamServer) -> None:
    runner = lifecycle.AsyncioRunner(app)
    await runner.start()
    print(server.port, flush=True)
    await runner.wait()


# -- the clients (the parent) ------------------------------------------------------------------


async def _client(port: int, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            writer.write(REQUEST)
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if not line:
                    raise ConnectionError("server closed the connection")
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def _load(port: int, clients: int, duration: float) -> int:
    counts = [0]
    until = time.monotonic() + duration
    await asyncio.gather(*(_client(port, until, counts) for _ in range(clients)))
    return counts[0]


def _cpu_seconds(pid: int) -> float | None:
    """CPU seconds of a process so far, all its threads, from /proc (None where there is none).

    ``schedstat`` counts nanoseconds on the CPU per thread; ``stat`` (user +
    system) counts clock ticks of 10 ms: 0.2 us per request over a 2 s round.
    """
    total, seen = 0, False
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
                total += int((task / "schedstat").read_text().split()[0])
                seen = True
    if seen:
        return total / 1e9
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measure:
    rps: float  # measured requests per second
    cpu_us: float | None  # server CPU per request

    @property
    def capacity(self) -> float:
        """Requests per server-CPU-second (measured req/s without /proc)."""
        return self.rps if self.cpu_us is None else 1e6 / self.cpu_us


def measure(kind: str, weight: str, clients: int, duration: float, warmup: float) -> Measure:
    """One round: start the server, warm it up, load it for ``duration``, stop it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serving_async", "--serve", kind, "--weight", weight],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(
                f"the {kind!r} server did not start; run "
                f"python -m benchmarks.serving_async --serve {kind} to see why"
            )
        port = int(line)
        asyncio.run(_load(port, clients, warmup))
        cpu_before = _cpu_seconds(child.pid)
        began = time.perf_counter()
        done = asyncio.run(_load(port, clients, duration))
        spent = time.perf_counter() - began
        cpu_after = _cpu_seconds(child.pid)
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and done:
        cpu_us = (cpu_after - cpu_before) / done * 1e6
    return Measure(done / spent, cpu_us)


def best_of(rounds: list[Measure]) -> Measure:
    """The least disturbed round: highest req/s, lowest CPU per request."""
    cpus = [m.cpu_us for m in rounds if m.cpu_us is not None]
    return Measure(max(m.rps for m in rounds), min(cpus) if cpus else None)


# -- direct calls (no sockets) -------------------------------------------------------------------


def direct_call_cost(calls: int = 5_000, rounds: int = 60) -> tuple[float, float]:
    """CPU microseconds per direct ASGI call, plain and through the middleware.

    Alternating rounds of ``calls`` calls each, CPU time of this thread; the
    best round of each counts.
    """
    middleware = ASGIMiddleware(_minimal_asgi, lifecycle.App("bench"))
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/work"}

    async def send(message: Message) -> None:
        return None

    async def one_round(app: ASGIApp) -> float:
        began = time.thread_time_ns()
        for _ in range(calls):
            await app(scope, _receive, send)
        return (time.thread_time_ns() - began) / calls / 1000

    async def both() -> tuple[float, float]:
        plain = wrapped = float("inf")
        for _ in range(rounds):
            plain = min(plain, await one_round(_minimal_asgi))
            wrapped = min(wrapped, await one_round(middleware))
        return plain, wrapped

    return asyncio.run(both())


def direct_request_cost(calls: int = 5_000, rounds: int = 60) -> tuple[float, float]:
    """CPU microseconds per request block on a running `AsyncStreamServer`, no sockets.

    Inside one connection handler: a loop of ``with server.request():``
    blocks reading ``server.draining``, against the same loop reading a
    plain local; alternating rounds, CPU time of this thread, best of each.
    """
    result: list[tuple[float, float]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = holder[0]
        plain = wrapped = float("inf")
        for _ in range(rounds):
            began = time.thread_time_ns()
            for _ in range(calls):
                close = False
            plain = min(plain, (time.thread_time_ns() - began) / calls / 1000)
            began = time.thread_time_ns()
            for _ in range(calls):
                with server.request("GET /work"):
                    close = server.draining
            wrapped = min(wrapped, (time.thread_time_ns() - began) / calls / 1000)
        del close
        result.append((plain, wrapped))

    holder: list[AsyncStreamServer] = []

    async def main() -> None:
        server = AsyncStreamServer(handle, unit="request")
        holder.append(server)
        app = lifecycle.App("bench")
        app.add(server)
        async with lifecycle.AsyncioRunner(app, signals=None):
            _, writer = await asyncio.open_connection(*server.address)
            while not result:
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    return result[0]


def direct_in_children(processes: int) -> list[tuple[float, float]]:
    """The no-sockets rows in ``processes`` fresh processes: per row, the median of each number.

    Returns ``[(plain, through)]`` for `direct_call_cost` and `direct_request_cost`.
    """
    runs = in_children("benchmarks.serving_async", ["--direct-child"], processes)
    return [
        (statistics.median(run[i][0] for run in runs), statistics.median(run[i][1] for run in runs))
        for i in range(2)
    ]


def verdict(added: float | None) -> str:
    """The target column: PASS when lifecycle adds at most `TARGET_US` per request."""
    if added is None:
        return "-"
    return "PASS" if added <= TARGET_US else "FAIL"


# -- report ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--weights", default="minimal,app", help="handler weights to run")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--weight", choices=tuple(WEIGHTS), default="minimal", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--direct-processes", type=int, default=7, help="processes the no-sockets rows run in"
    )
    parser.add_argument("--direct-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.weight)
        return 0
    # The table (or a child's JSON line) goes to stdout; lifecycle's log (the
    # direct rows run an app) to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.direct_child:
        print(json.dumps([direct_call_cost(), direct_request_cost()]))
        return 0
    weights = [w for w in args.weights.split(",") if w]
    unknown = [w for w in weights if w not in WEIGHTS]
    if unknown:
        parser.error(f"unknown weight(s) {', '.join(unknown)}; choose from {', '.join(WEIGHTS)}")

    rounds: dict[tuple[str, str], list[Measure]] = {}
    for _ in range(args.rounds):
        for weight in weights:
            for kind in KINDS:  # bare and wrapped alternate: drift hits both alike
                m = measure(kind, weight, args.clients, args.duration, args.warmup)
                rounds.setdefault((kind, weight), []).append(m)

    print(
        f"HTTP/1.1 keep-alive, {args.clients} closed-loop clients, "
        f"best of {args.rounds} rounds of {args.duration:g} s per server"
    )
    header = (
        f"{'server':<17} {'handler':<8} {'req/s':>7} {'cpu us/req':>10} {'capacity/s':>10} "
        f"{'ratio':>6} {'added us/req':>12} {'target':>7}  verdict"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for weight in weights:
        for bare, wrapped in PAIRS:
            b = best_of(rounds[(bare, weight)])
            w = best_of(rounds[(wrapped, weight)])
            ratio = w.capacity / b.capacity
            added = None if b.cpu_us is None or w.cpu_us is None else w.cpu_us - b.cpu_us
            ok &= verdict(added) != "FAIL"
            for kind, m in ((bare, b), (wrapped, w)):
                cpu = "-" if m.cpu_us is None else f"{m.cpu_us:.2f}"
                line = f"{kind:<17} {weight:<8} {m.rps:>7.0f} {cpu:>10} {m.capacity:>10.0f}"
                if m is w:
                    shown = "-" if added is None else f"{added:+.2f}"
                    line += f" {ratio:>6.3f} {shown:>12} {'<=' + f'{TARGET_US:g}':>7}  "
                    line += verdict(added)
                print(line)
    print(
        "\nno sockets, CPU us per request (best of 60 alternating rounds; median of "
        f"{args.direct_processes} processes):"
    )
    for what, (plain, through) in zip(
        (
            "ASGI call, plain / through ASGIMiddleware",
            "handler step, bare / in server.request()",
        ),
        direct_in_children(args.direct_processes),
        strict=True,
    ):
        added = through - plain
        ok &= verdict(added) != "FAIL"
        print(
            f"  {what:<44} {plain:.2f} / {through:.2f}  added {added:+.2f} "
            f"(target <= {TARGET_US:g})  {verdict(added)}"
        )
    if args.check and not ok:
        print(
            f"FAIL: lifecycle adds more than {TARGET_US:g} us per request somewhere",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
