"""Throughput of the threaded servers with and without lifecycle, measured in one run.

    python -m benchmarks.serving_sync            # print the table (exit code 0)
    python -m benchmarks.serving_sync --check    # exit 1 when a target is missed

Each server runs in its own child process (so that the load generator does not
share its GIL) and serves the same handler:

* ``http``: ``ThreadingHTTPServer`` (Nagle off, backlog 128, the two things a
  careful stdlib user sets, lessons 5-6) against `lifecycle.HTTPServer`
  hosting the very same ``BaseHTTPRequestHandler`` class;
* ``wsgi (wsgiref)``: a WSGI app on the stdlib's threaded ``wsgiref`` server,
  bare and wrapped in `lifecycle.WSGIMiddleware` (``wsgiref`` speaks HTTP/1.0:
  one connection per request);
* ``wsgi (keep-alive)``: the same app on `lifecycle.WSGIServer`, bare and
  wrapped in the middleware (made to track, as it would in gunicorn): the
  middleware's own cost on a keep-alive server, where it is least diluted.

The load is a closed loop of keep-alive clients on raw sockets (stdlib, a
fraction of ``http.client``'s cost, so the servers are the bottleneck), each
bounded in time and requests. The configurations of a row are measured in
alternating rounds (A B B A ...) so that drift in the machine hits both alike;
a row's ratio compares the server CPU time per request, best round of each.
Target: ratio >= 0.97. Every response is checked; a failed request fails the row.

One more line compares ``wsgiref`` with `WSGIServer` for information (no
target: HTTP/1.0 against keep-alive).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.simple_server import WSGIServer as WsgirefServer

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.97
BODY = b"hello, world\n"
# A handler with some work of its own: render a ~4 KB JSON document.
DOCUMENT = {
    "orders": [
        {"id": i, "customer": f"customer-{i}", "items": [1, 2, 3], "total": i * 1.25}
        for i in range(50)
    ]
}
BODIES = {"/work": BODY, "/json": json.dumps(DOCUMENT).encode()}


def request_for(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: serving_sync\r\n\r\n".encode()


# -- what the servers run ----------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """The handler both HTTP servers host: a small fixed body."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = json.dumps(DOCUMENT).encode() if self.path == "/json" else BODY
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


class StdlibServer(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class ThreadingWsgiref(socketserver.ThreadingMixIn, WsgirefServer):
    request_queue_size = 128
    daemon_threads = True


def hide_tracking(app: Any) -> Any:
    """Make the middleware track, as it does under a server that is not lifecycle's."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ.pop("lifecycle.tracked", None)
        return app(environ, start_response)  # type: ignore[no-any-return]

    return wrapped


def serve(kind: str) -> None:
    """Child process: serve ``kind`` on 127.0.0.1, print ``PORT n``, stop at EOF on stdin."""
    import structlog  # noqa: PLC0415 - the child imports what it serves

    import lifecycle  # noqa: PLC0415
    from lifecycle._serving.http import HTTPServer  # noqa: PLC0415
    from lifecycle._serving.wsgi import WSGIMiddleware, WSGIServer  # noqa: PLC0415

    # stdout carries the port line; the library's events go to stderr, warnings up.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    stop: Any
    if kind in ("stdlib", "wsgiref", "wsgiref+mw"):
        if kind == "stdlib":
            server: Any = StdlibServer(("127.0.0.1", 0), Handler)
        else:
            app: Any = wsgi_app
            if kind == "wsgiref+mw":
                app = WSGIMiddleware(wsgi_app, lifecycle.App("bench"))
            server = make_server(
                "127.0.0.1",
                0,
                app,
                server_class=ThreadingWsgiref,
                handler_class=QuietWSGIHandler,
            )
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.server_address[1]

        def stop() -> None:
            server.shutdown()
            server.server_close()

    else:
        lc_app = lifecycle.App("bench", shutdown_timeout=30)
        if kind == "lifecycle":
            component: Any = HTTPServer(Handler)
        elif kind == "wsgi-ka":
            component = WSGIServer(wsgi_app)
        elif kind == "wsgi-ka+mw":
            middleware = lc_app.add(WSGIMiddleware(wsgi_app))
            component = WSGIServer(hide_tracking(middleware))
        else:
            raise SystemExit(f"unknown server kind {kind!r}")
        lc_app.add(component)
        runner = lifecycle.ThreadedRunner(lc_app, signals=None)
        runner.start()
        port = component.port

        def stop() -> None:
            runner.stop("benchmark done")

    print(f"PORT {port}", flush=True)
    for line in sys.stdin:  # "cpu": report this process's CPU time; EOF: stop
        if line.strip() == "cpu":
            print(f"{time.process_time():.9f}", flush=True)
    stop()


# -- the load ------------------------------------------------------------------------------


@dataclass
class Counts:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def read_response(sock: socket.socket, buffer: bytearray, expected: bytes) -> bool:
    """Read one response from ``sock`` (keeping extra bytes in ``buffer``).

    Returns True if the connection stays open. Raises on a malformed or
    failed response.
    """
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buffer += chunk
    head = bytes(buffer[:end]).lower()
    if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
        raise ConnectionError(f"unexpected response {head[:40]!r}")
    marker = head.find(b"content-length:")
    if marker < 0:
        raise ConnectionError("no content-length")
    line_end = head.find(b"\r\n", marker)
    length = int(head[marker + 15 : line_end if line_end >= 0 else len(head)])
    total = end + 4 + length
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        buffer += chunk
    if bytes(buffer[end + 4 : total]) != expected:
        raise ConnectionError("wrong body")
    del buffer[:total]
    return head.startswith(b"http/1.1") and b"connection: close" not in head


def client(port: int, path: str, until: float, counts: Counts) -> None:
    request = request_for(path)
    expected = BODIES[path]
    sock: socket.socket | None = None
    buffer = bytearray()
    while time.monotonic() < until:
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer.clear()
            sock.sendall(request)
            if not read_response(sock, buffer, expected):
                sock.close()
                sock = None
            counts.ok += 1
        except (OSError, ValueError) as error:
            counts.failed += 1
            if len(counts.errors) < 3:
                counts.errors.append(repr(error))
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


def measure(port: int, clients: int, seconds: float, path: str = "/work") -> tuple[float, Counts]:
    """Requests per second of a closed loop of ``clients`` for ``seconds``."""
    counts = [Counts() for _ in range(clients)]
    began = time.monotonic()
    until = began + seconds
    threads = [
        threading.Thread(target=client, args=(port, path, until, c), daemon=True) for c in counts
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


# -- the run -------------------------------------------------------------------------------


class Child:
    """A server child process of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serving_sync", "--serve", kind],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"server {kind!r} did not start (said {line!r})")
        self.port = int(line.split()[1])

    def cpu(self) -> float:
        """The server process's CPU time so far (user + system), in seconds."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"cpu\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Sample:
    """One round of one server: wall-clock throughput and server CPU per request."""

    rps: float
    cpu_us: float


@dataclass
class Row:
    label: str
    base_kind: str
    kind: str
    target: float | None
    path: str = "/work"
    base: list[Sample] = field(default_factory=list)
    other: list[Sample] = field(default_factory=list)
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @staticmethod
    def rps(samples: list[Sample]) -> float:
        return statistics.median(s.rps for s in samples)

    @staticmethod
    def cpu(samples: list[Sample]) -> float:
        # Best of the rounds, as timeit does: what else runs on the machine
        # only ever adds to a server's CPU per request.
        return min(s.cpu_us for s in samples)

    @property
    def ratio(self) -> float:
        """Capacity with lifecycle over capacity without: requests per server CPU-second."""
        return self.cpu(self.base) / self.cpu(self.other)

    @property
    def wall_ratio(self) -> float:
        return self.rps(self.other) / self.rps(self.base)

    @property
    def ok(self) -> bool | None:
        if self.failed:
            return False
        return None if self.target is None else self.ratio >= self.target


ROWS = [
    Row("http hello: ThreadingHTTPServer -> HTTPServer", "stdlib", "lifecycle", TARGET),
    Row("http 4KB JSON: ThreadingHTTPServer -> HTTPServer", "stdlib", "lifecycle", TARGET, "/json"),
    Row("wsgi (wsgiref): app -> WSGIMiddleware(app)", "wsgiref", "wsgiref+mw", TARGET),
    Row("wsgi (keep-alive): app -> + middleware", "wsgi-ka", "wsgi-ka+mw", TARGET),
    Row("wsgi: wsgiref -> WSGIServer [info]", "wsgiref", "wsgi-ka", None),
]


def run(rounds: int, seconds: float, clients: int) -> list[Row]:
    kinds = sorted({k for row in ROWS for k in (row.base_kind, row.kind)})
    loads = sorted({(k, row.path) for row in ROWS for k in (row.base_kind, row.kind)})
    children = {kind: Child(kind) for kind in kinds}
    try:
        samples: dict[tuple[str, str], list[Sample]] = {load: [] for load in loads}
        failures: dict[tuple[str, str], Counts] = {load: Counts() for load in loads}
        for kind, path in loads:  # warm up (threads, caches, first-use paths)
            measure(children[kind].port, clients, 0.3, path)
        for r in range(rounds):
            for kind, path in loads if r % 2 == 0 else list(reversed(loads)):
                child = children[kind]
                cpu_before = child.cpu()
                rate, counts = measure(child.port, clients, seconds, path)
                cpu_spent = child.cpu() - cpu_before
                sample = Sample(rate, cpu_spent / max(counts.ok, 1) * 1e6)
                samples[kind, path].append(sample)
                failures[kind, path].failed += counts.failed
                failures[kind, path].errors += counts.errors
        rows = []
        for t in ROWS:
            row = Row(t.label, t.base_kind, t.kind, t.target, t.path)
            base, other = (row.base_kind, row.path), (row.kind, row.path)
            row.base, row.other = samples[base], samples[other]
            row.failed = failures[base].failed + failures[other].failed
            row.errors = (failures[base].errors + failures[other].errors)[:3]
            rows.append(row)
        return rows
    finally:
        for child in children.values():
            child.close()


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def table(rows: list[Row]) -> str:
    lines = [
        f"{'comparison':<48} {'rps w/o':>8} {'rps with':>8} {'us/req w/o':>10} "
        f"{'us/req with':>11} {'ratio':>6} {'target':>7} {'result':>6}"
    ]
    for row in rows:
        target = "-" if row.target is None else f">={row.target:.2f}"
        lines.append(
            f"{row.label:<48} {row.rps(row.base):>8.0f} {row.rps(row.other):>8.0f} "
            f"{row.cpu(row.base):>10.1f} {row.cpu(row.other):>11.1f} {row.ratio:>6.3f} "
            f"{target:>7} {verdict(row.ok):>6}"
        )
        if row.failed:
            lines.append(f"    {row.failed} failed requests: {'; '.join(row.errors)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per server")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per round")
    parser.add_argument("--clients", type=int, default=8, help="keep-alive client connections")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    rows = run(args.rounds, args.seconds, args.clients)
    print(
        f"serving_sync: {args.clients} keep-alive clients, {args.rounds} alternating rounds of "
        f"{args.seconds:g}s per server (Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
    )
    print(table(rows))
    print(
        "ratio: server CPU per request without / with, best round of each (capacity:\n"
        "requests per CPU-second, what a CPU-bound replica serves). rps: median wall-clock\n"
        "throughput, for reference: it swings with whatever else the machine runs."
    )
    failed = any(row.ok is False for row in rows)
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
