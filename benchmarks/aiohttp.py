"""What `lifecycle.aiohttp.Server` costs per request: plain aiohttp next to it, in one run.

    python -m benchmarks.aiohttp            # print the table (exit code 0)
    python -m benchmarks.aiohttp --check    # exit 1 when the target is missed

Two servers answer the same hello-world aiohttp app (one ``GET`` route
returning ``web.Response(text="hello")``, access log off), each in a child
process of its own (one core for the server, one for the clients):

* ``plain``: ``web.AppRunner`` + ``web.TCPSite``, as ``web.run_app`` serves it;
* ``lifecycle``: the same app as ``lifecycle.aiohttp.Server`` in a running
  `lifecycle.App` under the asyncio runner: every request goes through the
  integration's request handler (tracked, under its token, with the
  ``Connection: close`` decision of the drain).

The load: ``--clients`` closed-loop HTTP/1.1 keep-alive connections from one
asyncio process. Both servers run at once and are loaded in alternating
slices of ``--duration`` seconds (``--rounds`` slices each, which one goes
first alternating too): on a shared machine the load of other processes
changes from second to second, and a slice of one server and the slice of
the other right next to it see about the same. The ratio is the median of
those pairs' ratios; the table shows each server's best slice.

Reported per server: requests/s as measured, the server's CPU time per
request (from ``/proc``), and its *capacity*, 1 / CPU per request: the
throughput it reaches when it, not the client, is the bottleneck. The
client process sets the measured pace on a small machine, so the ratio is
taken on capacity (on measured req/s where ``/proc`` is missing).

Target: lifecycle's capacity is at least 0.98 of plain aiohttp's. Below
the table, the same requests without sockets (the app's request handler
called directly, and through the integration's), which isolates what the
integration adds per request from the noise of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from unittest import mock

import structlog
from aiohttp import __version__ as aiohttp_version
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

import lifecycle
import lifecycle.aiohttp
from benchmarks.serving_async import Measure, _cpu_seconds, _load, best_of
from lifecycle._core.tokens import _current

TARGET_RATIO = 0.98  # lifecycle's capacity / plain aiohttp's, at least
KINDS = ("plain", "lifecycle")
ROOT = Path(__file__).resolve().parent.parent


# -- the servers (run in a child process) ------------------------------------------------


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def hello_app() -> web.Application:
    application = web.Application()
    application.router.add_get("/work", hello)  # the path the shared load generator asks
    return application


async def _serve_plain() -> None:
    runner = web.AppRunner(hello_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site.port, flush=True)
    await asyncio.Event().wait()  # until SIGTERM ends the process


async def _serve_lifecycle() -> None:
    app = lifecycle.App("bench")
    server = lifecycle.aiohttp.Server(hello_app(), "127.0.0.1", 0, access_log=None)
    app.add(server, name="http")
    runner = lifecycle.AsyncioRunner(app)
    await runner.start()
    print(server.port, flush=True)
    await runner.wait()


def serve(kind: str) -> None:
    """Child process: serve ``kind`` on a free port, print it, run until SIGTERM."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if kind == "plain":
        asyncio.run(_serve_plain())
    elif kind == "lifecycle":
        lifecycle.asyncio_run(_serve_lifecycle())
    else:
        raise SystemExit(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


# -- the clients (the parent) --------------------------------------------------------------


class Child:
    """One server child process, its port, and its CPU seconds so far."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.aiohttp", "--serve", kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise SystemExit(
                f"the {kind!r} server did not start; run "
                f"python -m benchmarks.aiohttp --serve {kind} to see why"
            )
        self.port = int(line)

    def cpu(self) -> float | None:
        return _cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()  # by PID: the child this benchmark started
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def measure_slice(child: Child, clients: int, duration: float) -> Measure:
    """Load ``child`` for ``duration`` seconds; its req/s and CPU per request over that slice."""
    cpu_before = child.cpu()
    began = time.perf_counter()
    done = asyncio.run(_load(child.port, clients, duration))
    spent = time.perf_counter() - began
    cpu_after = child.cpu()
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and done:
        cpu_us = (cpu_after - cpu_before) / done * 1e6
    return Measure(done / spent, cpu_us)


def measure(
    clients: int, duration: float, warmup: float, slices: int
) -> tuple[dict[str, list[Measure]], list[float]]:
    """Both servers up at once, loaded in alternating slices; every slice, and each pair's ratio.

    On a shared machine the load of other processes changes from second to
    second; a plain slice and the lifecycle slice right after it see about
    the same, so the ratio of each such pair is compared, not two runs
    minutes apart.
    """
    children = [Child(kind) for kind in KINDS]
    try:
        for child in children:
            asyncio.run(_load(child.port, clients, warmup))
        measured: dict[str, list[Measure]] = {kind: [] for kind in KINDS}
        ratios: list[float] = []
        for n in range(slices):
            # Alternate which goes first, so that neither always follows the other.
            order = children if n % 2 == 0 else children[::-1]
            pair = {child.kind: measure_slice(child, clients, duration) for child in order}
            for kind, m in pair.items():
                measured[kind].append(m)
            ratios.append(pair["lifecycle"].capacity / pair["plain"].capacity)
    finally:
        for child in children:
            child.close()
    return measured, ratios


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def direct_handlers(count: int) -> tuple[Handler, Handler, list[web.Request]]:
    """In a running loop: the hello-world app's request handler, the same through
    `lifecycle.aiohttp.Server`'s, and ``count`` prepared requests for them.

    The server's token is made current in the calling context, as it is in a
    served request's task (which descends from the listener's context).
    """
    application = hello_app()
    server = lifecycle.aiohttp.Server(application, "127.0.0.1", 0)
    application._set_loop(asyncio.get_running_loop())
    application.freeze()
    plain = application._handle
    server._app_handler = plain  # type: ignore[assignment]
    # Each with a payload writer of aiohttp's own class, as a served request has (the
    # server's record of a request is keyed by it): a mock in its place, an object
    # with a class of its own, costs more to hash and to hold.
    loop = asyncio.get_running_loop()
    requests = [
        make_mocked_request("GET", "/work", app=application, writer=StreamWriter(mock.Mock(), loop))
        for _ in range(count)
    ]
    _current.set(server._tokens.root)
    return plain, server._handle, requests


def direct_cost(calls: int = 2_000, rounds: int = 60) -> tuple[float, float]:
    """CPU microseconds per request handled without sockets: the app's, and through the server.

    The same hello-world app, its request handler called on prepared
    requests (``aiohttp.test_utils.make_mocked_request``), directly and
    through `lifecycle.aiohttp.Server`'s request handler; alternating rounds,
    CPU time of this thread, the best round of each.
    """

    async def both() -> tuple[float, float]:
        plain_handler, wrapped_handler, requests = direct_handlers(calls)
        plain = wrapped = float("inf")
        for _ in range(rounds):
            began = time.thread_time_ns()
            for request in requests:
                await plain_handler(request)
            plain = min(plain, (time.thread_time_ns() - began) / calls / 1000)
            began = time.thread_time_ns()
            for request in requests:
                await wrapped_handler(request)
            wrapped = min(wrapped, (time.thread_time_ns() - began) / calls / 1000)
        return plain, wrapped

    return asyncio.run(both())


def verdict(ratio: float) -> str:
    """PASS when lifecycle keeps at least `TARGET_RATIO` of plain aiohttp's capacity."""
    return "PASS" if ratio >= TARGET_RATIO else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per slice")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=20, help="slices per server")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    measured, ratios = measure(args.clients, args.duration, args.warmup, args.rounds)
    plain, wrapped = best_of(measured["plain"]), best_of(measured["lifecycle"])
    ratio = statistics.median(ratios)
    added = (
        None if plain.cpu_us is None or wrapped.cpu_us is None else wrapped.cpu_us - plain.cpu_us
    )
    print(
        f"aiohttp {aiohttp_version} hello world, HTTP/1.1 keep-alive, {args.clients} "
        f"closed-loop clients, {args.rounds} alternating slices of {args.duration:g} s per "
        f"server (both servers up), best slice of each; ratio: median of the "
        f"{args.rounds} pairs' capacity ratios (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    header = (
        f"{'server':<28} {'req/s':>7} {'cpu us/req':>10} {'capacity/s':>10} "
        f"{'ratio':>6} {'added us/req':>12} {'target':>7}  verdict"
    )
    print(header)
    print("-" * len(header))
    for label, m in (("plain aiohttp", plain), ("lifecycle.aiohttp.Server", wrapped)):
        cpu = "-" if m.cpu_us is None else f"{m.cpu_us:.2f}"
        line = f"{label:<28} {m.rps:>7.0f} {cpu:>10} {m.capacity:>10.0f}"
        if m is wrapped:
            shown = "-" if added is None else f"{added:+.2f}"
            line += f" {ratio:>6.3f} {shown:>12} {'>=' + f'{TARGET_RATIO:g}':>7}  {verdict(ratio)}"
        print(line)
    plain_us, wrapped_us = direct_cost()
    print(
        f"\nno sockets, CPU us per request (best of 60 alternating rounds): app handler "
        f"{plain_us:.2f}, through lifecycle.aiohttp.Server {wrapped_us:.2f}, "
        f"added {wrapped_us - plain_us:+.2f}"
    )
    if plain.cpu_us is not None:
        direct_ratio = plain.cpu_us / (plain.cpu_us + wrapped_us - plain_us)
        print(
            f"  added / plain aiohttp's CPU per request ({plain.cpu_us:.1f} us): "
            f"{(wrapped_us - plain_us) / plain.cpu_us:.1%}, a capacity ratio of "
            f"{direct_ratio:.3f} (target >= {TARGET_RATIO:g}: {verdict(direct_ratio)})"
        )
    if args.check and verdict(ratio) == "FAIL":
        print(
            f"FAIL: lifecycle.aiohttp.Server keeps {ratio:.3f} of plain aiohttp's capacity "
            f"(target >= {TARGET_RATIO:g})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
