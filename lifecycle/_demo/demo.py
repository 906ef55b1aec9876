"""``python -m lifecycle demo``: SIGTERM under load, a naive server against a managed one.

For each server kind the demo starts a child process serving
``GET /work?ms=50`` on 127.0.0.1, puts it under a closed-loop keep-alive load
(16 clients, every attempt counted, no retries), sends it SIGTERM two seconds
in, and counts what the clients saw until the process exited:

* **lost** — a request that was sent on an accepted connection and got no
  complete answer (reset, closed mid-way, timed out, 5xx): a caller saw an error.
* **refused** — a connection the kernel refused because the listener was
  already closed: nothing was sent, so a load balancer or client can try
  another replica safely. With a real load balancer in front (the rolling
  test in ``tests/e2e``) nobody is routed here any more by then.

No extra services are needed; it takes about 15 seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from .._tools import timeline
from .loadgen import LoadResult, run_load

__all__ = ["main", "serve"]

LOST_KINDS = ("reset", "eof", "timeout", "http_5xx", "other")
TIMELINE_FILE = "lifecycle-demo-timeline.svg"  # in the temporary folder, printed at the end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _work_ms(path: str) -> float:
    query = parse_qs(urlsplit(path).query)
    try:
        return max(0.0, min(float(query.get("ms", ["50"])[0]), 5000.0))
    except ValueError:
        return 50.0


# -- the servers (run in the child process) ---------------------------------


class _DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    ready_probe: Any = staticmethod(lambda: True)

    def do_GET(self) -> None:
        if self.path.startswith("/readyz"):
            ok = bool(self.ready_probe())
            self._reply(200 if ok else 503, b"ready\n" if ok else b"draining\n")
            return
        time.sleep(_work_ms(self.path) / 1000)
        self._reply(200, b"done\n")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo prints its own table."""


def _serve_naive(port: int) -> int:
    class Server(ThreadingHTTPServer):
        request_queue_size = 128

    server = Server(("127.0.0.1", port), _DemoHandler)
    server.serve_forever()  # SIGTERM's default action kills the process mid-request
    return 0


def _serve_managed(port: int, report_path: str | None) -> int:
    import lifecycle  # noqa: PLC0415 - the child imports the public API, like a user

    app = lifecycle.App("demo", drain_delay=1.0, shutdown_timeout=10, stop_timeout=8)

    class Handler(_DemoHandler):
        ready_probe = staticmethod(lambda: app.ready)

    app.add(lifecycle.HTTPServer(Handler, ("127.0.0.1", port)), name="http")
    code = lifecycle.run(app)
    if report_path:
        Path(report_path).write_text(json.dumps(app.report(), indent=2), encoding="utf-8")
    return code


def serve(kind: str, port: int, report_path: str | None = None) -> int:
    """Run one demo server in this process (``python -m lifecycle demo-server KIND PORT``)."""
    if kind == "naive":
        return _serve_naive(port)
    if kind == "managed":
        return _serve_managed(port, report_path)
    raise SystemExit(f"unknown server kind {kind!r}; use 'naive' or 'managed'")


# -- the experiment (runs in the parent) --------------------------------------


@attrs.frozen
class _Outcome:
    kind: str
    load: LoadResult
    shutdown_seconds: float
    exit_code: int | None
    report: dict[str, Any] | None

    @property
    def lost(self) -> int:
        return sum(self.load.failures.get(k, 0) for k in LOST_KINDS)

    @property
    def refused(self) -> int:
        return self.load.failures.get("refused", 0)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], bound: float) -> None:
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo server exited early with code {proc.returncode}")
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"the demo server on port {port} was not ready within {bound:g}s")


def _experiment(kind: str, *, clients: int, before: float) -> _Outcome:
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "report.json")
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "lifecycle", "demo-server", kind, str(port), report_path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(port, proc, 15.0)
            stop = threading.Event()
            box: dict[str, LoadResult] = {}

            def load() -> None:
                box["result"] = run_load(
                    "127.0.0.1",
                    port,
                    clients=clients,
                    path="/work?ms=50",
                    duration=before + 15.0,
                    max_requests=100_000,
                    stop_event=stop,
                    refused_backoff=0.1,
                )

            loader = threading.Thread(target=load, name="demo-load", daemon=True)
            loader.start()
            time.sleep(before)  # let the load settle before the signal
            sent_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
            shutdown = time.monotonic() - sent_at
            stop.set()
            loader.join(timeout=10.0)
            report = None
            if os.path.exists(report_path):
                report = json.loads(Path(report_path).read_text(encoding="utf-8"))
            return _Outcome(kind, box["result"], shutdown, proc.returncode, report)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5.0)


def _table(outcomes: Sequence[_Outcome]) -> str:
    header = (
        f"{'server':<10} {'sent':>6} {'ok':>6} {'lost':>5} {'refused':>8} "
        f"{'shutdown':>9} {'exit':>5}  lost by kind"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        kinds = ", ".join(f"{k} {o.load.failures[k]}" for k in LOST_KINDS if k in o.load.failures)
        lines.append(
            f"{o.kind:<10} {o.load.sent:>6} {o.load.ok:>6} {o.lost:>5} {o.refused:>8} "
            f"{o.shutdown_seconds:>8.2f}s {o.exit_code!s:>5}  {kinds or '-'}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> int:
    """Run the demo; print the table and the managed server's shutdown report."""
    clients, before = 16, 2.0
    print(
        f"SIGTERM under load: {clients} keep-alive clients, GET /work?ms=50, "
        f"signal after {before:g}s, no retries.\n"
    )
    outcomes = []
    for kind in ("naive", "managed"):
        print(f"  running the {kind} server ...", flush=True)
        outcomes.append(_experiment(kind, clients=clients, before=before))
    print()
    print(_table(outcomes))
    print(
        "\nlost: sent on an accepted connection, no complete answer (a caller saw an error)."
        "\nrefused: the listener was closed, nothing was sent; a load balancer routes elsewhere"
        "\n         (clients back off 0.1 s after a refusal, as real ones do)."
    )
    managed = outcomes[-1]
    if managed.report is not None:
        print("\nThe managed server's shutdown report:")
        print(json.dumps(managed.report, indent=2))
        picture = os.path.join(tempfile.gettempdir(), TIMELINE_FILE)
        try:
            timeline.write(managed.report, picture)
        except OSError as error:
            print(f"\n(its shutdown timeline was not written to {picture}: {error})")
        else:
            print(f"\nIts shutdown timeline, drawn: {picture} (open it in a browser)")
    print(
        "\nThe same on a realistic service (FastAPI on uvicorn, Redis Streams, SQLite):"
        "\n  python -m lifecycle demo --shop    (in a checkout, with pip install -e '.[dev]'"
        " and redis-server)"
    )
    return 0 if managed.lost == 0 else 1
