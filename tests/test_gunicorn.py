"""``lifecycle.gunicorn.ThreadWorker``: a real gunicorn, real workers, real signals, 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lifecycle.gunicorn
from tests.e2e.haproxy import free_port

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "tests" / "e2e" / "servers"
BOUND = 20.0  # seconds any one wait here may take


def until(what: str, check: Callable[[], object], timeout: float = BOUND) -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Gunicorn:
    """A gunicorn master with ``ThreadWorker`` serving ``app`` (lc_gunicorn_worker's)."""

    def __init__(
        self,
        tmp: Path,
        *,
        drain: float,
        graceful: int,
        extra: tuple[str, ...],
        workers: int = 1,
        app: str = "lc_gunicorn_worker:application",
    ):
        self.port = free_port()
        self.clients: list[http.client.HTTPConnection | socket.socket] = []
        self.log_path = tmp / "gunicorn.log"
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--worker-class",
            "lifecycle.gunicorn.ThreadWorker",
            "--graceful-timeout",
            str(graceful),
            "--no-control-socket",
            "--pythonpath",
            str(SERVERS),
            "--env",
            f"LIFECYCLE_DRAIN_DELAY={drain}",
            *extra,
            app,
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            until("gunicorn to answer", lambda: self.status("/readyz") is not None)
        except BaseException:
            self.close()  # not yet known to the fixture: end it here
            print(self.log())
            raise

    def get(self, path: str) -> tuple[http.client.HTTPResponse, bytes]:
        """GET ``path`` on a new connection, closed after: the response and its body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def body(self, path: str) -> bytes:
        return self.get(path)[1]

    def status(self, path: str) -> int | None:
        try:
            return self.get(path)[0].status
        except OSError:
            return None

    def connect(self, timeout: float = BOUND) -> http.client.HTTPConnection:
        """A client connection, closed with the fixture if the test ends before closing it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        self.clients.append(conn)
        return conn

    def connect_raw(self) -> socket.socket:
        """A connected socket, closed with the fixture if the test ends before closing it."""
        client = socket.create_connection(("127.0.0.1", self.port), timeout=BOUND)
        self.clients.append(client)
        return client

    def connection_header(self, path: str) -> str | None:
        """The Connection header of the response to GET ``path`` on a new connection."""
        return self.get(path)[0].getheader("Connection")

    def kill(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def exit_code(self, timeout: float = BOUND) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn did not exit within {timeout} s\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def spawn(
        *, drain: float = 0.0, graceful: int = 10, extra: tuple[str, ...] = (), **options: Any
    ) -> Gunicorn:
        g = Gunicorn(tmp_path, drain=drain, graceful=graceful, extra=extra, **options)
        started.append(g)
        return g

    yield spawn
    for g in started:
        g.close()


def test_ready_is_true_outside_a_lifecycle_worker():
    """Outside a ThreadWorker (plain gunicorn, a test) ready() says True."""
    assert lifecycle.gunicorn.ready() is True


def test_responses_say_connection_close_during_the_drain(gunicorn):
    """After SIGTERM, during the drain: new connections are still accepted although the master
    closed its copy of the socket (/readyz 503 on them), a kept-alive connection's next
    response says Connection: close and the worker closes it; gunicorn exits 0."""
    g = gunicorn(drain=3.0)
    conn = g.connect(timeout=5)
    conn.request("GET", "/work?ms=0")
    before = conn.getresponse()
    before.read()
    assert before.getheader("Connection") is None  # kept alive
    g.kill(signal.SIGTERM)
    # Readiness turns off in the signal handler; the servers learn of the drain
    # from the shutdown token, fired by another thread a moment later: wait for
    # that (a new connection's response says close), not for the 503 alone.
    until("the worker to drain", lambda: g.connection_header("/work?ms=0") == "close")
    assert g.status("/readyz") == 503
    conn.request("GET", "/work?ms=0")  # the same connection
    during = conn.getresponse()
    assert during.read() == b"done\n"
    assert (during.status, during.getheader("Connection")) == (200, "close")
    assert conn.sock is None or conn.sock.recv(1) == b""  # closed by the worker
    conn.close()
    assert g.exit_code() == 0


def test_a_request_in_flight_at_sigterm_completes(gunicorn, tmp_path):
    """A request in flight when the master gets SIGTERM is answered in full; exit 0."""
    g = gunicorn()
    mark = tmp_path / "in-flight"
    conn = g.connect()
    conn.request("GET", f"/hold?ms=1000&mark={mark}")
    until("the request to be in flight", mark.exists)
    g.kill(signal.SIGTERM)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"held\n")
    assert response.getheader("Connection") == "close"
    conn.close()
    assert g.exit_code() == 0
    assert "was sent SIGKILL" not in g.log()


def test_a_stuck_handler_is_cut_within_graceful_timeout(gunicorn, tmp_path):
    """A handler that never returns is cut before graceful_timeout: the worker exits by itself
    (code 1, naming the request), not by the master's SIGKILL."""
    graceful = 3
    g = gunicorn(graceful=graceful)
    mark = tmp_path / "stuck"
    client = g.connect_raw()
    client.sendall(f"GET /hold?ms=60000&mark={mark} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    until("the request to be in flight", mark.exists)
    began = time.monotonic()
    g.kill(signal.SIGTERM)
    assert client.recv(65536) == b""  # cut: closed without a response
    cut_after = time.monotonic() - began
    client.close()
    assert g.exit_code() == 0
    assert cut_after < graceful
    log = g.log()
    assert "/hold" in log
    assert "cut" in log
    assert "exited with code 1" in log
    assert "was sent SIGKILL" not in log


def test_the_worker_beats_the_heartbeat_while_a_request_runs(gunicorn):
    """With --timeout 1, a 2.5 s request completes: the worker notifies the arbiter meanwhile."""
    g = gunicorn(extra=("--timeout", "1"))
    assert g.status("/work?ms=2500") == 200
    assert "WORKER TIMEOUT" not in g.log()
    g.kill(signal.SIGTERM)
    assert g.exit_code() == 0


def test_a_worker_past_max_requests_is_replaced_without_a_refusal(gunicorn):
    """After --max-requests the worker stops by itself; the master boots another; requests go on."""
    g = gunicorn(extra=("--max-requests", "3"))
    for _ in range(3):
        assert g.status("/work?ms=0") == 200
    until("the worker to stop at max_requests", lambda: "max_requests reached" in g.log())
    until("a second worker to boot", lambda: g.log().count("Booting worker") == 2)
    assert g.status("/work?ms=0") == 200
    g.kill(signal.SIGTERM)
    assert g.exit_code() == 0


@pytest.mark.parametrize(("workers", "multiprocess"), [(1, False), (2, True)])
def test_wsgi_multiprocess_is_true_when_more_than_one_worker_serves(
    gunicorn, workers, multiprocess
):
    """environ["wsgi.multiprocess"] says whether other workers serve the app: False with
    --workers 1, True with --workers 2 (both on the one shared socket; both stop cleanly)."""
    g = gunicorn(workers=workers, app="wsgiref.simple_server:demo_app")  # prints the environ
    until(f"{workers} workers to boot", lambda: g.log().count("Booting worker") == workers)
    lines = g.body("/").decode().splitlines()
    assert f"wsgi.multiprocess = {multiprocess!r}" in lines
    assert "wsgi.multithread = True" in lines
    g.kill(signal.SIGTERM)
    assert g.exit_code() == 0
    assert "was sent SIGKILL" not in g.log()


def test_sigint_skips_the_drain_delay(gunicorn):
    """SIGINT (gunicorn's quick shutdown: SIGQUIT to the workers) does not wait the 30 s drain."""
    g = gunicorn(drain=30.0, graceful=70)
    g.kill(signal.SIGINT)
    assert g.exit_code(timeout=10) == 0


def test_a_unix_socket_is_refused_with_the_reason(tmp_path):
    """Bound to a Unix socket, the worker refuses to boot and says to bind HOST:PORT."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"unix:{tmp_path / 'g.sock'}",
            "--worker-class",
            "lifecycle.gunicorn.ThreadWorker",
            "--no-control-socket",
            "--pythonpath",
            str(SERVERS),
            "lc_gunicorn_worker:application",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert proc.returncode != 0
    assert "TCP listeners only" in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_a_quick_stop_keeps_the_whole_budget_for_requests_in_flight(gunicorn, tmp_path, signum):
    """SIGINT/SIGQUIT skip the 2.5 s drain: a 3.5 s request in flight still has the whole
    budget (graceful 6 s less 1 s), not the budget less the drain, and is answered in full."""
    g = gunicorn(drain=2.5, graceful=6)
    mark = tmp_path / "in-flight"
    conn = g.connect()
    conn.request("GET", f"/hold?ms=3500&mark={mark}")
    until("the request to be in flight", mark.exists)
    g.kill(signum)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"held\n")
    conn.close()
    assert g.exit_code() == 0
    assert "cut=True" not in g.log()


@pytest.mark.realtime
def test_with_a_drain_delay_the_cut_comes_cut_margin_before_the_budget(gunicorn, tmp_path):
    """graceful 4 s (budget 3 s), drain 1 s, a stuck handler: cut CUT_MARGIN (0.1 s) before
    the budget, counted from SIGTERM -- the drain is inside the budget, nothing more is lost."""
    g = gunicorn(drain=1.0, graceful=4)
    mark = tmp_path / "stuck"
    client = g.connect_raw()
    client.sendall(f"GET /hold?ms=60000&mark={mark} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    until("the request to be in flight", mark.exists)
    began = time.monotonic()
    g.kill(signal.SIGTERM)
    assert client.recv(65536) == b""  # cut
    cut_after = time.monotonic() - began
    client.close()
    assert g.exit_code() == 0
    assert 3 - 0.1 - 0.05 <= cut_after < 4


def test_reload_serves_the_new_code(gunicorn, tmp_path):
    """--reload: when the app's file changes the worker stops gracefully and its replacement
    serves the new code."""
    app = tmp_path / "reloaded_app.py"
    source = (
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'VERSION\\n']\n"
    )
    app.write_text(source.replace("VERSION", "v1"))
    g = gunicorn(app="reloaded_app:application", extra=("--reload", "--pythonpath", str(tmp_path)))
    until("v1", lambda: g.body("/") == b"v1\n")
    new_source = source.replace("VERSION", "v2")
    app.write_text(new_source)
    written = [time.monotonic()]

    def serves_v2() -> bool:
        if _body_or_none(g) == b"v2\n":
            return True
        # gunicorn's reloader polls once a second and records a file's time
        # when it first sees the module, which a loaded worker may do only
        # after the write: then it never sees a change. Write again (a new
        # mtime) every 2 s until the new code is served.
        if time.monotonic() - written[0] > 2.0:
            app.write_text(new_source)
            written[0] = time.monotonic()
        return False

    until("the reloaded worker to serve v2", serves_v2)
    g.kill(signal.SIGTERM)
    assert g.exit_code() == 0


def _body_or_none(g: Gunicorn) -> bytes | None:
    try:
        return g.body("/")
    except OSError:
        return None
