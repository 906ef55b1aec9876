"""What `lifecycle.uvicorn.Server` costs per request, next to plain uvicorn, in one run.

    python -m benchmarks.uvicorn            # print the table (exit code 0)
    python -m benchmarks.uvicorn --check    # exit 1 when a target is missed

Four servers answer the same HTTP/1.1 keep-alive ``GET /``, each in a child
process of its own (one core for the server, one for the clients), all on
uvicorn 0.54 with the same options (h11, no access log, warnings only):

* ``uvicorn asgi``: ``uvicorn.Server(...).serve()`` on a hello-world ASGI app;
* ``lifecycle asgi``: the same app on `lifecycle.uvicorn.Server` in a running
  `lifecycle.App` (`ASGIMiddleware` and the integration's inner layer on
  every request);
* ``uvicorn fastapi`` / ``lifecycle fastapi``: the same with a FastAPI
  hello-world (one ``async def`` route returning a dict).

The load: ``--clients`` closed-loop keep-alive connections from one asyncio
process (the client of `benchmarks.serving_async`), bounded by
``--duration`` per round. Rounds alternate plain and lifecycle so that drift
hits both; the best round of each counts.

Reported per server: requests/s as measured, the server process's CPU time
per request (from ``/proc``), and its *capacity*, 1 / CPU per request: the
throughput it reaches when it, not the client, is the bottleneck. The
end-to-end ratio is lifecycle's capacity over plain uvicorn's, as measured.

What lifecycle runs per request is the code between uvicorn and the app
(`ASGIMiddleware` and the integration's inner layer); the rest is uvicorn's
own code, the same in both. Two processes sharing two cores with other work
make the end-to-end numbers vary by 10-20 % from round to round, so the
verdict is on a measurement a busy machine disturbs far less: uvicorn's
own HTTP protocol fed requests from memory in one thread (`protocol_cost`),
with plain uvicorn's config and with lifecycle's.

Targets: a ratio of at least 0.98 on the ASGI app and 0.99 on FastAPI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog
import uvicorn

import lifecycle
import lifecycle.uvicorn
from benchmarks.serving_async import Measure, _cpu_seconds, _load, best_of

APPS = ("asgi", "fastapi")
KINDS = ("uvicorn", "lifecycle")
TARGETS = {"asgi": 0.98, "fastapi": 0.99}
OPTIONS: dict[str, Any] = {
    "http": "h11",
    "access_log": False,
    "log_level": "warning",
    "log_config": None,
}
BODY = b"hello, world\n"
ROOT = Path(__file__).resolve().parent.parent


# -- the servers (run in a child process) --------------------------------------------------


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """The hello-world ASGI app (no lifespan)."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def make_app(name: str) -> Any:
    if name == "asgi":
        return hello
    from fastapi import FastAPI  # noqa: PLC0415 - only the fastapi rows need it

    api = FastAPI()

    @api.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "world"}

    return api


def serve(kind: str, name: str) -> None:
    """Child process: serve ``kind`` on a free port, print it, run until SIGTERM."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    app = make_app(name)
    if kind == "uvicorn":
        asyncio.run(_serve_plain(app))
    else:
        asyncio.run(_serve_lifecycle(app))


async def _serve_plain(app: Any) -> None:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **OPTIONS))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    await task


async def _serve_lifecycle(asgi: Any) -> None:
    app = lifecycle.App("bench")
    server = app.add(lifecycle.uvicorn.Server(asgi, "127.0.0.1", 0, **OPTIONS))
    runner = lifecycle.AsyncioRunner(app)
    await runner.start()
    print(server.port, flush=True)
    await runner.wait()


# -- the load (the parent) ------------------------------------------------------------------


def measure(kind: str, name: str, clients: int, duration: float, warmup: float) -> Measure:
    """One round: start the server, warm it up, load it for ``duration``, stop it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.uvicorn", "--serve", kind, "--app", name],
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
                f"the {kind} {name} server did not start; run "
                f"python -m benchmarks.uvicorn --serve {kind} --app {name} to see why"
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


class _MemoryTransport(asyncio.Transport):
    """Where uvicorn's protocol writes its responses in `protocol_cost`: counted, dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _per_request(config: uvicorn.Config, requests: int) -> float:
    """CPU us per request of uvicorn's HTTP protocol fed ``requests`` requests in memory."""
    from uvicorn.server import ServerState  # noqa: PLC0415 - uvicorn's, for its protocol

    if not config.loaded:
        config.load()
    state = ServerState()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _MemoryTransport()
    protocol.connection_made(transport)
    began = time.thread_time_ns()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        while state.tasks:  # the request's task: run it to its end
            await asyncio.sleep(0)
    spent = time.thread_time_ns() - began
    protocol.connection_lost(None)
    return spent / requests / 1000


def protocol_cost(
    name: str, requests: int = 1_000, pairs: int = 60, *, against: str = "lifecycle"
) -> tuple[float, float, float]:
    """CPU us per request of uvicorn's own per-request path, no sockets: plain and lifecycle.

    uvicorn's HTTP protocol (h11) is fed keep-alive requests from memory and
    writes its responses to memory, in one event loop, CPU time of this
    thread: with the ``uvicorn.Config`` of plain uvicorn, and with the one of
    `lifecycle.uvicorn.Server` (its app: the middleware stack). ``pairs``
    pairs of rounds, back to back, in alternating order (ABBA), so that drift
    and order hit both alike. Returns the best round of each, and the median
    of the pairs' differences (what lifecycle adds): on a busy machine a
    round's time varies by a few microseconds, as much as what is measured,
    and the median of paired differences is what stays steady from run to
    run. Without the kernel's share of a request (both pay it alike) the
    ratio is a lower bound of the end-to-end one.

    ``against="uvicorn"`` measures plain uvicorn against a second plain
    uvicorn config: the noise floor of the measurement (an A/A comparison).
    """
    asgi = make_app(name)
    app = lifecycle.App("bench")
    server = app.add(lifecycle.uvicorn.Server(asgi, "127.0.0.1", 0, **OPTIONS))
    plain_config = uvicorn.Config(asgi, host="127.0.0.1", port=0, **OPTIONS)
    other = (
        server.config
        if against == "lifecycle"
        else uvicorn.Config(asgi, host="127.0.0.1", port=0, **OPTIONS)
    )

    async def all_pairs() -> tuple[float, float, float]:
        await _per_request(plain_config, requests)  # warm both up
        await _per_request(other, requests)
        plains: list[float] = []
        wrappeds: list[float] = []
        for i in range(pairs):
            if i % 2:
                wrappeds.append(await _per_request(other, requests))
                plains.append(await _per_request(plain_config, requests))
            else:
                plains.append(await _per_request(plain_config, requests))
                wrappeds.append(await _per_request(other, requests))
        added = statistics.median(w - p for p, w in zip(plains, wrappeds, strict=True))
        return min(plains), min(wrappeds), added

    return asyncio.run(all_pairs())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--apps", default="asgi,fastapi", help="apps to run")
    parser.add_argument(
        "--no-sockets-only", action="store_true", help="only the no-sockets measurement"
    )
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--app", choices=APPS, default="asgi", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.app)
        return 0
    names = [a for a in args.apps.split(",") if a]
    unknown = [a for a in names if a not in APPS]
    if unknown:
        parser.error(f"unknown app(s) {', '.join(unknown)}; choose from {', '.join(APPS)}")

    if not args.no_sockets_only:
        end_to_end(names, args)
    return no_sockets(names, check=args.check)


def end_to_end(names: list[str], args: argparse.Namespace) -> None:
    """The first table: the four servers in child processes, under load."""
    rounds: dict[tuple[str, str], list[Measure]] = {}
    for _ in range(args.rounds):
        for name in names:
            for kind in KINDS:  # plain and lifecycle alternate: drift hits both alike
                m = measure(kind, name, args.clients, args.duration, args.warmup)
                rounds.setdefault((kind, name), []).append(m)

    print(
        f"uvicorn {uvicorn.__version__}, HTTP/1.1 keep-alive, {args.clients} closed-loop "
        f"clients, best of {args.rounds} rounds of {args.duration:g} s per server"
    )
    header = (
        f"{'server':<10} {'app':<8} {'req/s':>7} {'cpu us/req':>10} {'capacity/s':>10} "
        f"{'ratio':>6} {'added us':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        plain = best_of(rounds[("uvicorn", name)])
        wrapped = best_of(rounds[("lifecycle", name)])
        ratio = wrapped.capacity / plain.capacity
        added = (
            None
            if plain.cpu_us is None or wrapped.cpu_us is None
            else wrapped.cpu_us - plain.cpu_us
        )
        for kind, m in (("uvicorn", plain), ("lifecycle", wrapped)):
            cpu = "-" if m.cpu_us is None else f"{m.cpu_us:.1f}"
            line = f"{kind:<10} {name:<8} {m.rps:>7.0f} {cpu:>10} {m.capacity:>10.0f}"
            if m is wrapped:
                shown = "-" if added is None else f"{added:+.1f}"
                line += f" {ratio:>6.3f} {shown:>8}"
            print(line)


def no_sockets(names: list[str], *, check: bool) -> int:
    """The second table and the verdict: `protocol_cost` per app."""
    print(
        "\nuvicorn's per-request path, no sockets (60 pairs of rounds; added: the median "
        "of the pairs' differences)"
    )
    header = (
        f"{'app':<8} {'uvicorn us':>10} {'lifecycle us':>12} {'added us':>8} "
        f"{'ratio':>6} {'target':>7}  verdict"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for name in names:
        plain_us, wrapped_us, added = protocol_cost(name)
        ratio = plain_us / (plain_us + added)
        target = TARGETS[name]
        passed = ratio >= target
        ok &= passed
        print(
            f"{name:<8} {plain_us:>10.2f} {wrapped_us:>12.2f} {added:>+8.2f} "
            f"{ratio:>6.3f} {'>=' + f'{target:g}':>7}  {'PASS' if passed else 'FAIL'}"
        )
    plain_us, _, floor = protocol_cost(names[0], against="uvicorn")
    print(
        f"{names[0] + ' A/A':<8} {plain_us:>10.2f} {'(uvicorn)':>12} {floor:>+8.2f} "
        f"{plain_us / (plain_us + floor):>6.3f}  -- the noise floor: uvicorn against itself"
    )
    if check and not ok:
        print("FAIL: lifecycle.uvicorn misses a throughput target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
