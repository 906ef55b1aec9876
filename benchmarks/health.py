"""Probe latency of the health endpoint with and without 200 slow clients, in one run.

    python -m benchmarks.health            # print the table (exit code 0)
    python -m benchmarks.health --check    # exit 1 when a target is missed

The `HealthServer` runs in a child process (so that the load generator does
not share its GIL) around an app that is not running: ``/livez`` answers 200
from the selector thread, ``/readyz`` 503 after a round trip through the
thread that evaluates ``app.ready``. The parent sends sequential probes, a
new connection each, as the kubelet does, and times each from ``connect()``
to the server's close.

The load is 200 slow clients held open during the measurement: 100 send a
byte of a never-ending request head every 0.5 s, 100 send nothing (the
child's head timeout is a minute, so all stay open). Rounds alternate
without and with them (A B B A ...), so that drift in the machine hits both
alike; the percentiles are over every probe of a configuration. Targets:
p99 under 100 ms with the slow clients, for both probes, and ``close()``
under 50 ms with the 200 still open (timed in the child).

Then a flood of complete requests, against a second endpoint whose app's
``ready()`` takes 0.3 s: one ``/readyz`` probe, then 300 complete ``/readyz``
held open (more than the cap of 256), then sequential ``/livez`` probes
during the flood. Targets: the first probe answered 200 (a flood never
evicts an accepted probe), ``/livez`` p99 under 100 ms (it never waits for
``ready()``); the flood's own answers are counted.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.tokens import Row, percentiles, render

ROOT = Path(__file__).resolve().parent.parent
SLOW = 200
PROBES = 300  # per configuration and round
ROUNDS = 4
BUDGET_MS = 100.0  # a probe's p99 with the slow clients
CLOSE_BUDGET_MS = 50.0
SLOW_HEAD = b"GET /livez HTTP/1.1\r\nX-Slow: "
TIMEOUT = 5.0  # any single socket operation
FLOOD = 300  # complete /readyz held open, beyond the default cap of 256
FLOOD_PROBES = 100  # sequential /livez during the flood
SLOW_READY = 0.3  # seconds the flooded app's ready() takes
READYZ = b"GET /readyz HTTP/1.1\r\nHost: bench\r\n\r\n"
LIVEZ = b"GET /livez HTTP/1.1\r\nHost: bench\r\n\r\n"


def serve() -> int:
    """The child: serve until stdin says ``close``, then print close()'s milliseconds.

    Two endpoints, their ports on the first line: the one measured, and one
    around an app whose ``ready()`` takes `SLOW_READY` seconds, for the flood.
    """
    import structlog  # noqa: PLC0415 - the child's own imports

    import lifecycle  # noqa: PLC0415

    class SlowReady(lifecycle.App):
        @property
        def ready(self) -> bool:
            time.sleep(SLOW_READY)
            return True

    # stdout carries the ports and the timing: the log goes to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    health = lifecycle.HealthServer(lifecycle.App("bench"), request_timeout=60.0)
    flooded = lifecycle.HealthServer(SlowReady("flooded"), ready_timeout=2.0)
    health.start()
    flooded.start()
    print(health.port, flooded.port, flush=True)
    sys.stdin.readline()
    flooded.close()
    began = time.perf_counter()
    health.close()
    print(f"{(time.perf_counter() - began) * 1000:.2f}", flush=True)
    return 0


class Crowd:
    """The slow clients: half trickle a byte every 0.5 s, half are silent."""

    def __init__(self, port: int, n: int) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port), TIMEOUT) for _ in range(n)]
        self._trickling = self.sockets[: n // 2]
        for sock in self._trickling:
            sock.sendall(SLOW_HEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        for _ in range(1200):  # at most 10 minutes
            if self._stop.wait(0.5):
                return
            for sock in self._trickling:
                sock.send(b"a")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        for sock in self.sockets:
            sock.close()


def send(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    sock.sendall(request)
    return sock


def answer(sock: socket.socket) -> int | None:
    """The status the server answered on ``sock`` (None: closed without an answer)."""
    reply = b""
    with sock, contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply[9:12]) if reply.startswith(b"HTTP/1.1 ") else None


def flood(port: int) -> tuple[int | None, list[float], Counter[int | None]]:
    """The first probe's status, /livez milliseconds during the flood, the flood's statuses."""
    first = send(port, READYZ)
    crowd = [send(port, READYZ) for _ in range(FLOOD)]
    try:
        livez = [probe(port, LIVEZ, b"HTTP/1.1 200 ") * 1000 for _ in range(FLOOD_PROBES)]
    finally:
        statuses = Counter(answer(sock) for sock in crowd)
    return answer(first), livez, statuses


def probe(port: int, request: bytes, expect: bytes) -> float:
    """Seconds from connect() to the server's close for one probe."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    took = time.perf_counter() - began
    if not reply.startswith(expect):
        raise AssertionError(f"unexpected answer {reply[:40]!r}, wanted {expect!r}")
    return took


PATHS = {"/livez": b"HTTP/1.1 200 ", "/readyz": b"HTTP/1.1 503 "}


def measure(port: int) -> dict[tuple[str, int], list[float]]:
    """Probe milliseconds per (path, slow clients), over alternating rounds."""
    samples: dict[tuple[str, int], list[float]] = {
        (path, slow): [] for path in PATHS for slow in (0, SLOW)
    }
    order = [0, SLOW, SLOW, 0] * (ROUNDS // 4) + [0, SLOW][: ROUNDS % 4]
    for slow in order:
        crowd = Crowd(port, slow) if slow else None
        try:
            for i in range(PROBES):
                path = "/livez" if i % 2 == 0 else "/readyz"
                request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
                samples[path, slow].append(probe(port, request, PATHS[path]) * 1000)
        finally:
            if crowd is not None:
                crowd.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.health", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    print(f"lifecycle health benchmark, Python {sys.version.split()[0]}, {sys.platform}")
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.health", "--serve"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        port, flooded = map(int, child.stdout.readline().split())
        samples = measure(port)
        first, livez, statuses = flood(flooded)
        crowd = Crowd(port, SLOW)
        try:
            child.stdin.write("close\n")
            child.stdin.flush()
            close_ms = float(child.stdout.readline())
        finally:
            crowd.close()
        child.wait(TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(TIMEOUT)
    rows = []
    for (path, slow), values in samples.items():
        p50, p99 = percentiles(values)
        row = Row(
            f"{path} with {slow} slow clients (p50 / p99 / max, {len(values)} probes)",
            f"{p50:.2f} / {p99:.2f} / {max(values):.2f} ms",
        )
        if slow:
            row.target, row.ok = f"p99 < {BUDGET_MS:g} ms", p99 < BUDGET_MS
        rows.append(row)
    p50, p99 = percentiles(livez)
    rows += [
        Row(
            f"first /readyz, then {FLOOD} complete /readyz held open (ready() {SLOW_READY:g} s)",
            f"{first}",
            "200",
            first == 200,
        ),
        Row(
            f"/livez during that flood (p50 / p99 / max, {len(livez)} probes)",
            f"{p50:.2f} / {p99:.2f} / {max(livez):.2f} ms",
            f"p99 < {BUDGET_MS:g} ms",
            p99 < BUDGET_MS,
        ),
        Row(
            "the flood's answers: 200 (waited) / 503 (refused) / none (evicted incomplete)",
            f"{statuses[200]} / {statuses[503]} / {statuses[None]}",
        ),
    ]
    rows.append(
        Row(
            f"close() with {SLOW} connections open",
            f"{close_ms:.2f} ms",
            f"< {CLOSE_BUDGET_MS:g} ms",
            close_ms < CLOSE_BUDGET_MS,
        )
    )
    print(render(rows))
    failed = [r.name for r in rows if r.ok is False]
    print(f"{len(failed)} target(s) missed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
