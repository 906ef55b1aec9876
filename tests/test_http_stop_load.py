"""The threaded servers' stop under load and at short budgets: what is accepted is served or named.

Real sockets on 127.0.0.1, real client threads, each loop bounded in time and
in requests. Waits are bounded and event-driven; the few bounds on how long a
stop takes are real-time measurements with generous margins, marked.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

import lifecycle
from lifecycle import CancelSource, DeadlineExceeded, ExitCode, current_token
from lifecycle._serving.http import HTTPServer
from lifecycle._serving.wsgi import WSGIServer
from tests.fakes import FakeApp
from tests.serving import WAIT, wait_until

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
CLIENT_REQUESTS = 20_000  # the most one load client sends
CLIENT_SECONDS = 20.0  # the longest one load client runs


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


def make_server(kind: str) -> HTTPServer:
    return HTTPServer(Hello) if kind == "http" else WSGIServer(hello_app)


def record_accepts(srv: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The client ports of every connection the server accepted and started.

    Counted where every connection is, served at once or taken in by the stop.
    """
    ports: set[int] = set()
    register = srv._register

    def registering(conn: Any) -> threading.Thread:
        ports.add(conn.addr[1])
        return register(conn)

    monkeypatch.setattr(srv, "_register", registering)
    return ports


def read_response(sock: socket.socket) -> bool:
    """Read one response with a Content-Length; True if it came whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            return False
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        piece = sock.recv(4096)
        if not piece:
            return False
        body += piece
    return head.startswith(b"HTTP/1.1 200 ") and body == b"ok\n"


class LoadClient(threading.Thread):
    """Opens a new connection per request, in a tight loop, until refused or told to stop."""

    def __init__(self, address: tuple[str, int], done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.done = done
        self.ok = 0
        self.refused = 0
        self.reset_ports: list[int] = []  # connections that ended without their response
        self.reset_at_connect = 0  # handshakes reset by the listener's close
        self.errors: list[str] = []
        self.served = threading.Event()  # set after its third response

    def run(self) -> None:
        end = time.monotonic() + CLIENT_SECONDS
        for _ in range(CLIENT_REQUESTS):
            if self.done.is_set() or time.monotonic() > end:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(WAIT)
            try:
                try:
                    sock.connect(self.address)
                except ConnectionRefusedError:
                    self.refused += 1
                    return  # the listener is closed: a balancer would route around it
                except ConnectionResetError:
                    # The listener closed with this handshake under way: never
                    # accepted, it is reset, and the next connect is refused.
                    self.refused += 1
                    self.reset_at_connect += 1
                    return
                except OSError as error:
                    self.errors.append(f"connect: {error!r}")
                    return
                port = sock.getsockname()[1]
                try:
                    sock.sendall(REQUEST)
                    whole = read_response(sock)
                except (ConnectionResetError, BrokenPipeError):
                    whole = False
                except OSError as error:  # a timeout: the server neither answered nor closed
                    self.errors.append(f"{port}: {error!r}")
                    return
                if whole:
                    self.ok += 1
                    if self.ok == 3:
                        self.served.set()
                else:
                    self.reset_ports.append(port)
            finally:
                sock.close()


def run_load(
    srv: HTTPServer, clients: int, stop: Callable[[], object]
) -> tuple[list[LoadClient], float, object]:
    """Start ``clients`` load clients, call ``stop()`` once each was served; join them."""
    done = threading.Event()
    load = [LoadClient(srv.address, done) for _ in range(clients)]
    for client in load:
        client.start()
    try:
        for client in load:
            assert client.served.wait(WAIT), "a load client was never served"
        began = time.monotonic()
        outcome = stop()
        took = time.monotonic() - began
        for client in load:  # each ends on its refusal: the listener is closed
            client.join(WAIT)
    finally:
        done.set()  # only when the test failed: the clients are bounded anyway
        for client in load:
            client.join(WAIT)
    assert not any(client.is_alive() for client in load)
    return load, took, outcome


def stop_outcome(srv: HTTPServer, budget: float) -> Callable[[], object]:
    def stop() -> object:
        try:
            srv.stop(CancelSource(timeout=budget).token)
        except DeadlineExceeded as exc:
            return exc
        return None

    return stop


@pytest.mark.realtime
@pytest.mark.parametrize("clients", [3, 16])
@pytest.mark.parametrize("kind", ["http", "wsgi"])
def test_stop_under_connect_per_request_load_closes_the_listener_and_returns_promptly(
    kind: str, clients: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under steady connect-per-request load the listener closes at once: later connects
    are refused, every accepted connection is answered, nothing is cut, long before the deadline."""
    srv = make_server(kind)
    srv.lifecycle_bind(FakeApp())
    accepted = record_accepts(srv, monkeypatch)
    srv.start(CancelSource().token)
    budget = 5.0
    load, took, outcome = run_load(srv, clients, stop_outcome(srv, budget))
    assert srv.wait_stopped(WAIT)
    assert outcome is None, f"the stop cut {outcome!r}"
    assert took < budget / 2, f"the stop took {took:.3f}s of its {budget}s"
    assert all(client.errors == [] for client in load), [c.errors for c in load]
    # Every client ends on a refusal: the listening socket itself is closed.
    assert [client.refused for client in load] == [1] * clients
    # A connection the server accepted is never reset. On Linux none is reset before
    # it was accepted either (new handshakes are refused before the last accept);
    # elsewhere the kernel may complete one in the microseconds between the last
    # accept and the close, which the close resets: 1-2 in about 1 stop of 10.
    lost = [port for client in load for port in client.reset_ports if port in accepted]
    assert lost == []
    unaccepted = len([port for client in load for port in client.reset_ports])
    unaccepted += sum(client.reset_at_connect for client in load)
    allowed = 0 if sys.platform == "linux" else 2
    assert unaccepted <= allowed, f"{unaccepted} connections reset before being accepted"
    assert sum(client.ok for client in load) >= 3 * clients


@pytest.mark.realtime
@pytest.mark.skipif(sys.platform != "linux", reason="the socket filter is Linux's")
@pytest.mark.parametrize("kind", ["http", "wsgi"])
def test_no_connection_is_reset_by_the_listener_close_over_ten_stops(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 clients connecting in a tight loop, 10 stops: none has its connection reset.

    Without the filter the kernel completes a handshake now and then between
    the take-in's last accept and the close, and the close resets it after
    its client sent a request (1-2 in about 1 stop of 10). A client meets an
    open listener or a refusal.
    """
    unaccepted = 0
    for _ in range(10):
        srv = make_server(kind)
        srv.lifecycle_bind(FakeApp())
        accepted = record_accepts(srv, monkeypatch)
        srv.start(CancelSource().token)
        load, _, outcome = run_load(srv, 16, stop_outcome(srv, 5.0))
        assert srv.wait_stopped(WAIT)
        assert outcome is None, f"the stop cut {outcome!r}"
        assert all(client.errors == [] for client in load), [c.errors for c in load]
        lost = [port for client in load for port in client.reset_ports if port in accepted]
        assert lost == []
        unaccepted += len([port for client in load for port in client.reset_ports])
        unaccepted += sum(client.reset_at_connect for client in load)
    assert unaccepted == 0, f"{unaccepted} connections reset by the listener's close"


@pytest.mark.realtime
def test_tcp_stop_under_connect_per_connection_load_refuses_later_connects() -> None:
    """TCPServer shares the accept loop: under steady load its stop closes the listener at once."""
    done = threading.Event()
    served = threading.Event()
    count = [0]

    class Once(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(1024)
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            count[0] += 1
            if count[0] >= 3:
                served.set()

    srv = lifecycle.TCPServer(Once)
    srv.start(CancelSource().token)
    load = [LoadClient(srv.address, done) for _ in range(8)]
    for client in load:
        client.start()
    try:
        assert served.wait(WAIT)
        began = time.monotonic()
        srv.stop(CancelSource(timeout=5.0).token)
        took = time.monotonic() - began
        for client in load:
            client.join(WAIT)
    finally:
        done.set()
        for client in load:
            client.join(WAIT)
    assert took < 2.5
    assert [client.refused for client in load] == [1] * len(load)


@pytest.mark.realtime
def test_stop_under_load_through_the_runner_exits_ok() -> None:
    """Under a runner, a stop during steady connect-per-request load exits OK, promptly."""
    app = lifecycle.App("web", shutdown_timeout=5.0, stop_timeout=5.0)
    srv = app.add(HTTPServer(Hello), name="api")
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    codes: list[int] = []
    load, took, _ = run_load(srv, 16, lambda: codes.append(runner.stop("test")))
    assert codes == [ExitCode.OK]
    assert took < 2.5
    assert app.components["api"].timed_out is None
    assert [client.refused for client in load] == [1] * len(load)


# -- short budgets -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "wsgi"])
def test_connections_accepted_but_not_yet_served_at_a_short_cut_are_named(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a 0.05 s budget, every connection accepted whose request was not answered is named."""
    srv = make_server(kind)
    srv.lifecycle_bind(FakeApp())
    srv.start(CancelSource().token)
    serve = srv._serve
    late = threading.Event()

    def late_serve(conn: Any) -> None:  # the connection's thread runs only after the stop
        late.wait(WAIT)
        serve(conn)

    monkeypatch.setattr(srv, "_serve", late_serve)
    clients = []
    try:
        for _ in range(5):
            client = socket.create_connection(srv.address, timeout=WAIT)
            client.sendall(REQUEST)
            clients.append(client)
        wait_until(lambda: len(srv._conns) == 5, "5 connections accepted")
        with pytest.raises(DeadlineExceeded) as raised:
            srv.stop(CancelSource(timeout=0.05).token)
        late.set()
        assert srv.wait_stopped(WAIT)
        answered = 0
        for client in clients:
            with contextlib.suppress(ConnectionResetError):
                answered += read_response(client)
        assert answered == 0
        assert len(raised.value.cut) == 5
        assert all(line.startswith("GET / ") for line in raised.value.cut), raised.value.cut
    finally:
        late.set()
        for client in clients:
            client.close()


@pytest.mark.realtime
def test_a_cut_of_200_requests_returns_within_its_budget() -> None:
    """200 requests cut at a 0.05 s budget: the stop returns within the budget (+ scheduling)."""
    woke = threading.Event()

    class Waits(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            current_token().wait(WAIT)  # honours the cut: all 200 wake at once
            woke.set()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    srv = HTTPServer(Waits)
    srv.start(CancelSource().token)
    clients = []
    try:
        for _ in range(200):
            client = socket.create_connection(srv.address, timeout=WAIT)
            client.sendall(REQUEST)
            clients.append(client)
        wait_until(lambda: srv.tracker.count == 200, "200 requests in flight")
        token = CancelSource(timeout=0.05).token
        assert token.deadline is not None
        with pytest.raises(DeadlineExceeded) as raised:
            srv.stop(token)
        overrun = time.monotonic() - token.deadline
        assert woke.wait(WAIT)  # the cut woke them through their tokens
        assert len(raised.value.cut) == 200
        assert overrun < 0.02, f"the stop returned {overrun * 1000:.1f} ms past its deadline"
        assert srv.wait_stopped(WAIT)
    finally:
        for client in clients:
            client.close()


def test_a_refused_connect_is_econnrefused() -> None:
    """What the load clients count as a refusal is the kernel's answer to a closed port."""
    srv = HTTPServer(Hello)
    srv.start(CancelSource().token)
    address = srv.address
    srv.stop(CancelSource(timeout=WAIT).token)
    with pytest.raises(ConnectionRefusedError) as raised:
        socket.create_connection(address, timeout=WAIT)
    assert raised.value.errno == errno.ECONNREFUSED
