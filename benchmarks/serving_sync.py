"""What lifecycle adds per request to the threaded servers, measured with and without, in one run.

    python -m benchmarks.serving_sync            # print the tables (exit code 0)
    python -m benchmarks.serving_sync --check    # exit 1 when a target is missed

Two measurements, each comparing the same code with and without lifecycle:

1. **Hot path, in process** (the budget: lifecycle adds at most 1 µs per
   request). The request path is driven directly, with no socket and no
   load generator: a handler object set up on a real loopback socket whose
   ``rfile`` is a buffer of N pipelined requests and whose ``wfile`` drops
   what is written, and the thread's CPU time (``time.thread_time``) of
   ``handle()`` over them, so that the time the thread spends preempted on
   a busy machine is not counted; the middleware is called as a server
   calls it (call, iterate, close), timed the same way. The rows:

   * ``HTTPServer``: a ``BaseHTTPRequestHandler`` as the stdlib runs it,
     against the same class with lifecycle's hooks in front (what
     `lifecycle.HTTPServer` hosts). lifecycle also reads the request with
     its strict parser (``h1``) instead of http.server's, which is the
     faster of the two, so "added" is negative: the whole difference, strict
     parsing, limits, timeouts and response checks included;
   * ``WSGIServer``: lifecycle's WSGI adapter handler bare (strict parsing
     included), against the same as `lifecycle.WSGIServer` hosts it (its
     stop sequence's and timeouts' part);
   * ``WSGIMiddleware``: a WSGI app called directly, against the app wrapped
     in `lifecycle.WSGIMiddleware`, with a built body (a list) and with a
     streamed one (an iterator, as frameworks return).

   The configurations alternate (A B A B ...) and each takes its best round,
   as timeit does: what else runs on the machine only ever adds. "added" is
   the difference, the verdict ``<= 1.0`` µs.

2. **Over sockets, as capacity.** Each server runs in its own child process
   (so that the load generator does not share its GIL) and serves the same
   handler to a closed loop of keep-alive clients on raw sockets (stdlib, a
   fraction of ``http.client``'s cost, so the servers are the bottleneck),
   each bounded in time and requests:

   * ``http``: ``ThreadingHTTPServer`` (Nagle off: ``http.server`` writes the
     headers and the body in separate sends, and with Nagle on each
     keep-alive response waits ~40 ms for the client's delayed ACK; backlog
     128 rather than ``socketserver``'s 5) against `lifecycle.HTTPServer`
     hosting the very same ``BaseHTTPRequestHandler`` class;
   * ``wsgi (wsgiref)``: a WSGI app on the stdlib's threaded ``wsgiref``
     server, bare and wrapped in `lifecycle.WSGIMiddleware` (``wsgiref``
     speaks HTTP/1.0: one connection per request);
   * ``wsgi (keep-alive)``: the same app on `lifecycle.WSGIServer`, bare and
     wrapped in the middleware (made to track, as it would in gunicorn).

   Rounds alternate (A B B A ...) so that drift in the machine hits both
   alike; a row's ratio compares the server process's CPU time per request,
   best round of each. Target: ratio >= 0.97. Every response is checked; a
   failed request fails the row. The "added" column is the difference in
   CPU per request: informative, since a whole process's CPU per request
   swings by several µs between rounds on a shared machine (the in-process
   table is the one that resolves 1 µs).

One more line compares ``wsgiref`` with `WSGIServer` for information (no
target: HTTP/1.0 against keep-alive).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.simple_server import WSGIServer as WsgirefServer

from benchmarks._children import in_children

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.97
ADDED_TARGET_US = 1.0  # what lifecycle may add per request, in µs of CPU
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


def streamed_wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The same response as an iterator (what Flask and Django return)."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return iter([BODY])


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
        f"{'us/req with':>11} {'added us':>8} {'ratio':>6} {'target':>7} {'result':>6}"
    ]
    for row in rows:
        target = "-" if row.target is None else f">={row.target:.2f}"
        added = row.cpu(row.other) - row.cpu(row.base)
        lines.append(
            f"{row.label:<48} {row.rps(row.base):>8.0f} {row.rps(row.other):>8.0f} "
            f"{row.cpu(row.base):>10.1f} {row.cpu(row.other):>11.1f} {added:>+8.1f} "
            f"{row.ratio:>6.3f} {target:>7} {verdict(row.ok):>6}"
        )
        if row.failed:
            lines.append(f"    {row.failed} failed requests: {'; '.join(row.errors)}")
    return "\n".join(lines)


# -- the hot path, in process --------------------------------------------------------------


class _Discard:
    """A ``wfile`` that drops what is written."""

    closed = False

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ListenerStub:
    """What a handler reads of ``self.server``."""

    server_name = "127.0.0.1"
    server_port = 0


def _loopback() -> tuple[socket.socket, socket.socket, Any]:
    """A connected pair of TCP sockets on 127.0.0.1 (what handler setup() configures)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        accepted, addr = listener.accept()
    return accepted, client, addr


def _handler_run(cls: Any, server: Any, requests: int) -> float:
    """CPU seconds ``handle()`` of one ``cls`` object takes over ``requests`` pipelined requests."""
    import io  # noqa: PLC0415 - only the in-process measurement needs it

    from lifecycle._serving import http as lc_http  # noqa: PLC0415

    sock, client, addr = _loopback()
    try:
        handler = cls.__new__(cls)
        handler.request, handler.client_address, handler.server = sock, addr, _ListenerStub()
        if server is not None:  # what HTTPServer does before it builds the handler
            lc_http._tls.conn = lc_http._Conn(sock, addr)
        handler.setup()
        # Buffered, as the socket's rfile is (http.server reads it with readline,
        # lifecycle's servers with peek).
        handler.rfile = io.BufferedReader(io.BytesIO(request_for("/work") * requests))
        handler.wfile = _Discard()
        with _gc_paused():
            began = time.thread_time()
            handler.handle()
            spent = time.thread_time() - began
        handler.finish()
        return spent
    finally:
        sock.close()
        client.close()


def _middleware_run(app: Any, requests: int) -> float:
    """CPU seconds ``requests`` calls of ``app`` take, as a WSGI server makes them."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/work", "SCRIPT_NAME": ""}

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    with _gc_paused():
        began = time.thread_time()
        for _ in range(requests):
            body = app(environ, start_response)
            for _data in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return time.thread_time() - began


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection inside a timed section (as timeit does): it would
    land in one configuration's round or the other's by chance."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class DirectRow:
    """One in-process comparison: µs per request without and with lifecycle, best round."""

    label: str
    base_us: float
    with_us: float

    @property
    def added(self) -> float:
        return self.with_us - self.base_us

    @property
    def ok(self) -> bool:
        return self.added <= ADDED_TARGET_US


def direct(rounds: int, requests: int = 1000) -> list[DirectRow]:
    """The hot-path rows: each configuration's best µs per request over ``rounds`` rounds."""
    import lifecycle  # noqa: PLC0415 - the parent measures in process only here
    from lifecycle._serving.http import HTTPServer  # noqa: PLC0415
    from lifecycle._serving.wsgi import WSGIMiddleware, WSGIServer  # noqa: PLC0415

    http_server = HTTPServer(Handler)
    wsgi_server = WSGIServer(wsgi_app)
    app = lifecycle.App("bench")
    pairs: list[tuple[str, Callable[[], float], Callable[[], float]]] = [
        (
            "HTTPServer: handler, per request",
            lambda: _handler_run(Handler, None, requests),
            lambda: _handler_run(http_server._wrap_handler(), http_server, requests),
        ),
        (
            "WSGIServer: WSGI handler, per request",
            lambda: _handler_run(wsgi_server.handler_class, None, requests),
            lambda: _handler_run(wsgi_server._wrap_handler(), wsgi_server, requests),
        ),
    ]
    for label, inner in (("built body", wsgi_app), ("streamed body", streamed_wsgi_app)):
        middleware = WSGIMiddleware(inner, app)
        pairs.append(
            (
                f"WSGIMiddleware direct call, {label}",
                lambda inner=inner: _middleware_run(inner, requests),  # type: ignore[misc]
                lambda mw=middleware: _middleware_run(mw, requests),  # type: ignore[misc]
            )
        )
    rows = []
    for label, without, with_ in pairs:
        base = [without() for _ in range(3)]  # warm up
        other = [with_() for _ in range(3)]
        for _ in range(rounds):
            base.append(without())
            other.append(with_())
        rows.append(DirectRow(label, min(base) / requests * 1e6, min(other) / requests * 1e6))
    return rows


def direct_in_children(rounds: int, processes: int) -> list[DirectRow]:
    """`direct` in ``processes`` fresh child processes; per row, the median of each number."""
    runs = in_children(
        "benchmarks.serving_sync", ["--direct-child", "--direct-rounds", str(rounds)], processes
    )
    return [
        DirectRow(
            label,
            statistics.median(run[i][1] for run in runs),
            statistics.median(run[i][2] for run in runs),
        )
        for i, (label, _, _) in enumerate(runs[0])
    ]


def direct_table(rows: list[DirectRow]) -> str:
    lines = [
        f"{'hot path (in process, no sockets)':<48} {'us/req w/o':>10} {'us/req with':>11} "
        f"{'added us':>8} {'target':>7} {'result':>6}"
    ]
    lines.extend(
        f"{row.label:<48} {row.base_us:>10.2f} {row.with_us:>11.2f} {row.added:>+8.2f} "
        f"{f'<={ADDED_TARGET_US:.1f}':>7} {verdict(row.ok):>6}"
        for row in rows
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per server")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per round")
    parser.add_argument("--clients", type=int, default=8, help="keep-alive client connections")
    parser.add_argument(
        "--direct-rounds", type=int, default=40, help="alternating rounds of the in-process rows"
    )
    parser.add_argument(
        "--direct-processes", type=int, default=7, help="processes the in-process rows run in"
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--direct-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.direct_child:
        print(json.dumps([[r.label, r.base_us, r.with_us] for r in direct(args.direct_rounds)]))
        return 0
    print(
        f"serving_sync (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f})"
    )
    hot = direct_in_children(args.direct_rounds, args.direct_processes)
    print(direct_table(hot))
    print(
        "added: time per request with lifecycle minus without, in process (CPU-bound, no I/O):\n"
        f"best of {args.direct_rounds} alternating rounds of 1000 requests, median over "
        f"{args.direct_processes} processes\n(each has its own hash seed and memory layout, "
        "which move a row by up to several µs in some processes).\n"
    )
    rows = run(args.rounds, args.seconds, args.clients)
    print(
        f"over sockets: {args.clients} keep-alive clients, {args.rounds} alternating rounds of "
        f"{args.seconds:g}s per server"
    )
    print(table(rows))
    print(
        "ratio: server CPU per request without / with, best round of each (capacity:\n"
        "requests per CPU-second, what a CPU-bound replica serves). rps: median wall-clock\n"
        "throughput, for reference: it swings with whatever else the machine runs."
    )
    failed = any(row.ok is False for row in rows) or not all(row.ok for row in hot)
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
