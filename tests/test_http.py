"""Tests of `lifecycle._serving.http`: HTTPServer and TCPServer stop without losing a request.

Real sockets on 127.0.0.1 and real threads. Requests are held in flight with
`threading.Event`s set by the test, never with sleeps; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import http.client
import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

import lifecycle
from lifecycle import CancelSource, CancelToken, ExitCode, current_token
from lifecycle._serving.http import (
    CUT_MARGIN,
    FIRST_REQUEST_GRACE,
    HTTPServer,
    TCPServer,
    mark_long_lived,
)
from tests.serving import WAIT, connect, serving, wait_until
from tests.test_hostile import exchange


class Gates:
    """Events a test handler waits on or sets; all released at teardown."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.stuck = threading.Event()
        self.before_read = threading.Event()
        self.read_gate: threading.Event | None = None
        self.ended = threading.Event()
        self.nodelay: list[int] = []
        self.reasons: list[str | None] = []
        self.tokens: list[CancelToken] = []
        self.contexts: list[contextvars.Context] = []

    def open_all(self) -> None:
        for event in (self.release, self.stuck, self.before_read):
            event.set()
        if self.read_gate is not None:
            self.read_gate.set()


def make_handler(gates: Gates) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def handle_one_request(self) -> None:
            # Runs after lifecycle marked the connection as waiting for a
            # request and before anything is read: lets a test hold bytes
            # in the socket of an idle connection.
            gate = gates.read_gate
            if gate is not None and getattr(self, "_served_one", False):
                gates.before_read.set()
                gate.wait(WAIT)
            super().handle_one_request()
            self._served_one = True

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            if path == "/hold":
                gates.entered.set()
                gates.release.wait(WAIT)
                self.reply(b"held\n")
            elif path == "/until-deadline":  # works until its token's deadline, then answers
                token = current_token()
                gates.tokens.append(token)
                gates.entered.set()
                token.wait(WAIT)
                self.reply(b"done\n")
            elif path in ("/copy", "/copy-hold"):  # hands its context to code run elsewhere
                gates.contexts.append(contextvars.copy_context())
                if path == "/copy-hold":
                    gates.entered.set()
                    gates.release.wait(WAIT)
                self.reply(b"copied\n")
            elif path == "/token":
                token = current_token()
                info = {"deadline": token.deadline, "cancelled": token.cancelled}
                self.reply(json.dumps(info).encode())
            elif path == "/nodelay":
                gates.nodelay.append(
                    self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                )
                self.reply(b"ok\n")
            elif path in ("/stream", "/stream-then-wait"):
                before = current_token()
                assert mark_long_lived()
                token = current_token()
                gates.tokens.extend([before, token])
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"6\r\nstart\n\r\n")
                gates.entered.set()
                token.wait(WAIT)
                gates.reasons.append(token.reason)
                gates.ended.set()
                if path == "/stream-then-wait":  # the test says when the stream ends
                    gates.release.wait(WAIT)
                self.wfile.write(b"4\r\nbye\n\r\n0\r\n\r\n")
            elif path == "/stuck":
                gates.entered.set()
                gates.stuck.wait(WAIT * 3)
                self.reply(b"late\n")
            elif path == "/unframed":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"no length\n")
            elif path == "/keepalive":
                self.send_response(200)
                self.send_header("Connection", "keep-alive")
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ka\n")
            else:
                self.reply(b"ok\n")

        def reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def gates():
    g = Gates()
    yield g
    g.open_all()


@pytest.fixture
def server(gates):
    """A started HTTPServer bound to a FakeApp; stopped (bounded) at teardown."""
    yield from serving(HTTPServer(make_handler(gates)), gates.open_all)


def get(conn: http.client.HTTPConnection, path: str = "/"):
    conn.request("GET", path)
    response = conn.getresponse()
    return response, response.read()


def stop_in_thread(srv, timeout: float = WAIT) -> threading.Thread:
    thread = threading.Thread(target=srv.stop, args=(CancelSource(timeout=timeout).token,))
    thread.start()
    return thread


def server_threads(srv) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"lifecycle:{srv.name} ")]


def test_serves_keep_alive_requests_on_an_ephemeral_port(server):
    """Several requests share one connection; responses do not say Connection: close."""
    assert server.port != 0
    assert server.address == ("127.0.0.1", server.port)
    assert server.ready()
    conn = connect(server)
    for _ in range(3):
        response, body = get(conn)
        assert (response.status, body) == (200, b"ok\n")
        assert response.getheader("Connection") is None
        assert not response.will_close
    assert server.tracker.total == 3
    conn.close()


def test_handler_sockets_have_nagle_off(server, gates):
    """Nagle is off (headers and body go in separate sends: +40 ms each) and the backlog is 128."""
    conn = connect(server)
    get(conn, "/nodelay")
    conn.close()
    assert gates.nodelay == [1]
    assert server.backlog == 128


def test_in_flight_request_at_stop_finishes_with_connection_close(server, gates):
    """A request in flight when stop begins completes, and its response says Connection: close."""
    conn = connect(server)
    conn.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    stopper = stop_in_thread(server)
    assert server._listener_closed.wait(WAIT)
    gates.release.set()
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"held\n")
    assert response.getheader("Connection") == "close"
    stopper.join(WAIT)
    assert not stopper.is_alive()
    conn.close()


def test_drain_responses_say_close_and_the_server_still_accepts(server):
    """During the drain every response says Connection: close, and new connections are served."""
    before = connect(server)
    assert get(before)[0].getheader("Connection") is None
    server.app.request_shutdown()
    assert server.draining
    response, _ = get(before)
    assert response.getheader("Connection") == "close"
    assert response.will_close
    before.close()
    for _ in range(3):
        fresh = connect(server)
        response, body = get(fresh)
        assert (response.status, body) == (200, b"ok\n")
        assert response.getheader("Connection") == "close"
        fresh.close()
    assert server.ready()


def test_drain_rewrites_an_explicit_keep_alive(server):
    """A handler's own 'Connection: keep-alive' becomes 'close' during the drain."""
    server.app.request_shutdown()
    conn = connect(server)
    response, body = get(conn, "/keepalive")
    assert body == b"ka\n"
    assert response.getheader("Connection") == "close"
    conn.close()


def test_unframed_response_closes_the_connection(server):
    """A response without Content-Length is delimited by closing the connection."""
    conn = connect(server)
    response, body = get(conn, "/unframed")
    assert body == b"no length\n"
    assert response.getheader("Connection") == "close"
    conn.close()


def test_new_connections_are_refused_once_stop_began(server, gates):
    """After stop begins the listening socket is closed: connecting is refused, not reset."""
    conn = connect(server)
    conn.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    stopper = stop_in_thread(server)
    assert server._listener_closed.wait(WAIT)
    assert not server.ready()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=WAIT).close()
    gates.release.set()
    conn.getresponse().read()
    stopper.join(WAIT)
    conn.close()


def test_connections_queued_in_the_backlog_are_served_at_stop(server, monkeypatch):
    """Connections the kernel accepted before the listener closed are served, not reset."""
    spawn = server._spawn
    unblock = threading.Event()
    first = threading.Event()

    def slow_spawn(sock, addr):
        if not first.is_set():
            first.set()
            unblock.wait(WAIT)  # the accept thread stalls: the others queue up
        spawn(sock, addr)

    monkeypatch.setattr(server, "_spawn", slow_spawn)
    clients = []
    for _ in range(5):
        client = socket.create_connection(server.address, timeout=WAIT)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(client)
    assert first.wait(WAIT)
    stopper = stop_in_thread(server)
    assert server._stop_accepting.wait(WAIT)
    unblock.set()
    for client in clients:
        response = http.client.HTTPResponse(client)
        response.begin()
        assert (response.status, response.read()) == (200, b"ok\n")
        assert response.getheader("Connection") == "close"
        client.close()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert server.tracker.total == 5


def test_idle_keep_alive_connection_is_closed_at_stop(server):
    """An idle keep-alive connection is closed by stop, and stop returns promptly."""
    client = socket.create_connection(server.address, timeout=WAIT)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = http.client.HTTPResponse(client)
    response.begin()
    response.read()
    assert not response.will_close
    began = time.monotonic()
    server.stop(CancelSource(timeout=WAIT).token)
    assert time.monotonic() - began < 1.0
    assert client.recv(100) == b""  # closed by the server, without a reset
    client.close()
    assert server_threads(server) == []


def test_connection_with_a_request_already_arriving_is_served_at_stop(server, gates, monkeypatch):
    """An idle connection with a request's bytes pending is not closed: the request is served."""
    gates.read_gate = threading.Event()
    swept = threading.Event()
    close_idle = server._close_idle

    def observed(now):
        result = close_idle(now)
        swept.set()
        return result

    monkeypatch.setattr(server, "_close_idle", observed)
    client = socket.create_connection(server.address, timeout=WAIT)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = http.client.HTTPResponse(client)
    first.begin()
    first.read()
    assert gates.before_read.wait(WAIT)  # the handler waits to read the next request
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # ... which is now pending
    stopper = stop_in_thread(server)
    assert swept.wait(WAIT)
    gates.read_gate.set()
    second = http.client.HTTPResponse(client)
    second.begin()
    assert (second.status, second.read()) == (200, b"ok\n")
    assert second.getheader("Connection") == "close"
    stopper.join(WAIT)
    assert not stopper.is_alive()
    client.close()


def test_idle_connection_without_pending_bytes_is_closed_even_if_its_handler_lags(
    server, gates, monkeypatch
):
    """An idle connection with nothing pending is closed at stop, the handler reads EOF."""
    gates.read_gate = threading.Event()
    client = socket.create_connection(server.address, timeout=WAIT)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = http.client.HTTPResponse(client)
    first.begin()
    first.read()
    assert gates.before_read.wait(WAIT)
    swept = threading.Event()
    close_idle = server._close_idle

    def observed(now):
        result = close_idle(now)
        swept.set()
        return result

    monkeypatch.setattr(server, "_close_idle", observed)
    stopper = stop_in_thread(server)
    assert swept.wait(WAIT)
    gates.read_gate.set()
    assert client.recv(100) == b""
    stopper.join(WAIT)
    assert not stopper.is_alive()
    client.close()


def test_silent_new_connection_gets_a_grace_then_is_closed(server):
    """A connection that never sent a request is closed once its first-request grace passed."""
    client = socket.create_connection(server.address, timeout=WAIT)
    began = time.monotonic()
    server.stop(CancelSource(timeout=WAIT).token)
    spent = time.monotonic() - began
    assert client.recv(100) == b""
    client.close()
    assert spent < FIRST_REQUEST_GRACE + 1.0


def test_stuck_handler_is_cut_at_the_deadline_and_named_in_the_log(server, gates, log_events):
    """A handler that ignores its token is cut shortly before the stop deadline and logged."""
    conn = connect(server)
    conn.request("GET", "/stuck")
    assert gates.entered.wait(WAIT)
    began = time.monotonic()
    with pytest.raises(lifecycle.DeadlineExceeded, match="cut 1 unfinished request"):
        server.stop(CancelSource(timeout=0.5).token)
    spent = time.monotonic() - began
    assert 0.3 < spent < 0.5 + 0.5
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.getresponse()
    conn.close()
    gates.stuck.set()
    for thread in server_threads(server):
        thread.join(WAIT)
    cut = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert len(cut) == 1
    assert cut[0]["component"] == server.name
    assert [line.split(" (")[0] for line in cut[0]["running"]] == ["GET /stuck"]


def test_long_lived_request_is_asked_to_end_at_stop(server, gates):
    """A long-lived request's token is cancelled at stop; it ends its response gracefully."""
    conn = connect(server)
    conn.request("GET", "/stream")
    response = conn.getresponse()
    assert gates.entered.wait(WAIT)
    began = time.monotonic()
    server.stop(CancelSource(timeout=WAIT).token)
    assert time.monotonic() - began < 2.0
    assert response.read() == b"start\nbye\n"
    assert gates.reasons == ["server stopping: long-lived request asked to end"]
    conn.close()


@pytest.fixture
def server11(gates):
    """A started HTTPServer whose handler chose HTTP/1.1 itself (no framing guard)."""
    handler = type("Handler11", (make_handler(gates),), {"protocol_version": "HTTP/1.1"})
    yield from serving(HTTPServer(handler), gates.open_all)


@pytest.mark.parametrize("how", ["stop", "shutdown"])
def test_a_response_begun_before_the_drain_still_says_close(server11, gates, how):
    """A request in flight when the drain begins (shutdown or stop) ends with Connection: close."""
    conn = connect(server11)
    assert get(conn)[0].getheader("Connection") is None  # keep-alive before the drain
    conn.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    stopper = None
    if how == "stop":
        stopper = stop_in_thread(server11)
        assert server11._listener_closed.wait(WAIT)
    else:
        server11.app.request_shutdown()
    gates.release.set()
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"held\n")
    assert response.getheader("Connection") == "close"
    if stopper is not None:
        stopper.join(WAIT)
        assert not stopper.is_alive()
    conn.close()


def test_request_after_a_stream_on_the_same_connection_gets_a_live_token(server, gates):
    """A request on a keep-alive connection whose stream the stop just ended is served live."""
    client = socket.create_connection(server.address, timeout=WAIT)
    client.sendall(b"GET /stream-then-wait HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gates.entered.wait(WAIT)
    stopper = stop_in_thread(server)
    assert gates.ended.wait(WAIT)  # the stop cancelled the stream's token
    client.sendall(b"GET /token HTTP/1.1\r\nHost: x\r\n\r\n")  # the client knows nothing
    gates.release.set()
    data = b""
    while chunk := client.recv(65536):  # the server closes after the second response
        data += chunk
    client.close()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    stream, _, after = data.partition(b"0\r\n\r\n")
    assert b"Connection:" not in stream  # headers sent before the stop: keep-alive
    assert stream.endswith(b"6\r\nstart\n\r\n4\r\nbye\n\r\n")
    head, _, body = after.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close" in head
    info = json.loads(body)
    assert info["cancelled"] is False
    assert info["deadline"] is not None


def test_marking_long_lived_gives_the_request_its_own_current_token(server, gates):
    """mark_long_lived() makes a token of the request's own current; the stop cancels only it."""
    conn = connect(server)
    conn.request("GET", "/stream-then-wait")
    response = conn.getresponse()
    assert gates.entered.wait(WAIT)
    before, own = gates.tokens
    assert before is not own
    gates.release.set()
    server.stop(CancelSource(timeout=WAIT).token)
    assert response.read() == b"start\nbye\n"
    assert own.reason == "server stopping: long-lived request asked to end"
    assert before.reason == "closed"  # the shared token: cancelled only when the server ended
    conn.close()


@pytest.mark.realtime
def test_streams_are_ended_as_soon_as_the_last_ordinary_request_ends(server, gates):
    """The stop cancels the streams' tokens within 0.2 s of the last ordinary response."""
    stream_conn = connect(server)
    stream_conn.request("GET", "/stream-then-wait")
    stream = stream_conn.getresponse()
    assert gates.entered.wait(WAIT)
    gates.entered.clear()
    held = connect(server)
    held.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    stopper = stop_in_thread(server)
    assert server._listener_closed.wait(WAIT)
    released = time.monotonic()
    gates.release.set()
    assert held.getresponse().read() == b"held\n"
    assert gates.ended.wait(WAIT)
    latency = time.monotonic() - released
    assert stream.read() == b"start\nbye\n"
    stopper.join(WAIT)
    assert latency < 0.2
    held.close()
    stream_conn.close()


def test_every_cut_request_is_named_in_the_exception(server, gates):
    """25 requests cut: DeadlineExceeded.cut names all 25 (the log caps, the exception does not)."""
    conns = [connect(server) for _ in range(25)]
    for i, conn in enumerate(conns):
        conn.request("GET", f"/stuck?n={i}")
    wait_until(lambda: server.tracker.count == 25, "25 requests in flight")
    with pytest.raises(lifecycle.DeadlineExceeded) as raised:
        server.stop(CancelSource(timeout=0.5).token)
    gates.stuck.set()
    for thread in server_threads(server):
        thread.join(WAIT)
    for conn in conns:
        conn.close()
    assert len(raised.value.cut) == 25
    assert {line.split(" (")[0] for line in raised.value.cut} == {"GET /stuck"}


def test_request_token_carries_the_shutdown_deadline_once_requested(server):
    """current_token() has no deadline, then, once shutdown is requested, a margin before the cut
    a stop ending at the shutdown deadline makes (0.2 s before it: 0.1 s to answer)."""
    conn = connect(server)
    _, before = get(conn, "/token")
    assert json.loads(before) == {"deadline": None, "cancelled": False}
    server.app.request_shutdown()
    conn.close()
    conn = connect(server)
    _, during = get(conn, "/token")
    info = json.loads(during)
    assert not info["cancelled"]
    # Set as a timeout from "now": equal up to the time between two clock reads.
    assert server.app.shutdown_deadline is not None
    assert info["deadline"] == pytest.approx(server.app.shutdown_deadline - 2 * CUT_MARGIN)
    conn.close()


@pytest.mark.realtime
def test_a_request_begun_during_the_stop_that_works_until_its_deadline_is_not_cut(server, gates):
    """A handler that waits for its token's deadline, then answers, is done before the cut."""
    conn = connect(server)  # new and silent: the stop keeps it through its first-request grace
    stop = CancelSource(timeout=0.6).token
    outcome: list[BaseException | None] = []

    def stopping() -> None:
        try:
            server.stop(stop)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    stopper = threading.Thread(target=stopping)
    stopper.start()
    assert server._listener_closed.wait(WAIT)
    response, body = get(conn, "/until-deadline")
    stopper.join(WAIT)
    conn.close()
    assert (response.status, body) == (200, b"done\n")
    assert outcome == [None]
    token = gates.tokens[0]
    assert token.deadline is not None
    assert stop.deadline is not None
    assert token.deadline < stop.deadline - CUT_MARGIN  # before the cut, with room to answer
    assert token.reason == "deadline exceeded"


def test_marking_from_a_copied_context_after_the_request_ended_is_a_no_op(server, gates):
    """mark_long_lived() run in a context copied from a request that ended returns False and
    leaves the next request on the same connection ordinary."""
    conn = connect(server)
    assert get(conn, "/copy")[1] == b"copied\n"
    conn.request("GET", "/hold")  # the next request, on the same connection and thread
    assert gates.entered.wait(WAIT)
    assert gates.contexts[0].run(mark_long_lived) is False
    assert server.tracker.counts() == (1, 0)
    gates.release.set()
    assert conn.getresponse().read() == b"held\n"
    conn.close()


def test_marking_from_a_copied_context_during_the_request_marks_that_request(server, gates):
    """mark_long_lived() in a thread running a copy of the request's context marks that request."""
    conn = connect(server)
    conn.request("GET", "/copy-hold")
    assert gates.entered.wait(WAIT)
    marked: list[bool] = []
    thread = threading.Thread(target=lambda: marked.append(gates.contexts[0].run(mark_long_lived)))
    thread.start()
    thread.join(WAIT)
    assert marked == [True]
    assert server.tracker.counts() == (0, 1)
    gates.release.set()
    assert conn.getresponse().read() == b"copied\n"
    assert get(conn)[1] == b"ok\n"  # the connection goes on, its next request ordinary
    conn.close()


def test_tcp_marking_after_the_connection_ended_is_a_no_op(tcp_server, gates):
    """mark_long_lived() in a context copied from a TCP connection that ended returns False."""
    client = socket.create_connection(tcp_server.address, timeout=WAIT)
    client.sendall(b"copy\n")
    assert client.recv(100) == b"copied\n"
    client.close()
    wait_until(lambda: tcp_server.tracker.count == 0, "the connection ended")
    assert gates.contexts[0].run(mark_long_lived) is False


def test_stop_with_nothing_in_flight_returns_promptly(server):
    """stop() returns at once when no request and no connection is open; it is idempotent."""
    began = time.monotonic()
    server.stop(CancelSource(timeout=WAIT).token)
    server.stop(CancelSource(timeout=WAIT).token)
    assert time.monotonic() - began < 0.5
    assert server.wait_stopped(0)
    assert not server.ready()


def test_handler_threads_are_all_joined_by_stop(server, gates):
    """When stop returns, no connection thread of the server is left running."""
    conns = [connect(server) for _ in range(4)]
    for conn in conns:
        get(conn)
    held = connect(server)
    held.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    stopper = stop_in_thread(server)
    assert server._listener_closed.wait(WAIT)
    gates.release.set()
    held.getresponse().read()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert server_threads(server) == []
    for conn in [*conns, held]:
        conn.close()


def test_rejects_what_is_not_an_http_handler():
    """HTTPServer needs a BaseHTTPRequestHandler subclass and says what to use instead."""
    with pytest.raises(TypeError, match="TCPServer"):
        HTTPServer(socketserver.StreamRequestHandler)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backlog"):
        HTTPServer(BaseHTTPRequestHandler, backlog=0)


def test_bind_failure_names_the_address(server):
    """A port already taken fails start with a message naming the address."""
    other = HTTPServer(BaseHTTPRequestHandler, server.address)
    with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
        other.start(CancelSource().token)


# -- through a real App and runner ---------------------------------------------------------


def test_in_flight_request_survives_a_runner_stop(gates):
    """Under ThreadedRunner, stop() waits for the request in flight; its response closes."""
    app = lifecycle.App("web", shutdown_timeout=WAIT)
    srv = app.add(HTTPServer(make_handler(gates)))
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    conn = connect(srv)
    conn.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    codes: list[int] = []
    stopper = threading.Thread(target=lambda: codes.append(runner.stop("test")))
    stopper.start()
    assert srv._listener_closed.wait(WAIT)
    assert not app.ready
    gates.release.set()
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"held\n")
    assert response.getheader("Connection") == "close"
    stopper.join(WAIT)
    assert codes == [ExitCode.OK]
    assert server_threads(srv) == []
    conn.close()


@pytest.mark.realtime
def test_request_during_the_drain_delay_has_the_shutdown_deadline(gates):
    """During the app's drain delay the server serves with Connection: close and the deadline."""
    app = lifecycle.App("web", drain_delay=1.0, shutdown_timeout=WAIT)
    srv = app.add(HTTPServer(make_handler(gates)))
    with lifecycle.ThreadedRunner(app, signals=None) as runner:
        app.request_shutdown("test")
        # The runner cancels the shutdown token (the drain begins) a moment later.
        assert app.shutdown_token.wait(WAIT)
        conn = connect(srv)
        response, body = get(conn, "/token")
        conn.close()
        assert response.getheader("Connection") == "close"
        assert app.shutdown_deadline is not None
        assert json.loads(body)["deadline"] == pytest.approx(app.shutdown_deadline - 2 * CUT_MARGIN)
        assert runner.wait() == ExitCode.OK


def test_stuck_request_under_a_runner_is_cut_within_the_stop_timeout(gates, log_events):
    """With the runner, a stuck request is cut before stop_timeout; the exit code says TIMEOUT."""
    app = lifecycle.App("web", shutdown_timeout=WAIT, stop_timeout=0.5)
    srv = app.add(HTTPServer(make_handler(gates)), name="api")
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    conn = connect(srv)
    conn.request("GET", "/stuck?secret=1")
    assert gates.entered.wait(WAIT)
    code = runner.stop("test")
    assert srv.wait_stopped(WAIT)
    gates.stuck.set()
    for thread in server_threads(srv):
        thread.join(WAIT)
    conn.close()
    assert code == ExitCode.TIMEOUT
    assert app.components["api"].timed_out == "stop"
    stop_duration = app.components["api"].stop_duration
    assert stop_duration is not None
    assert stop_duration < 0.5
    cut = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert [line.split(" (")[0] for line in cut[0]["running"]] == ["GET /stuck"]


def test_serves_and_stops_under_the_asyncio_runner(gates):
    """The threaded server is a plain component under AsyncioRunner too."""
    app = lifecycle.App("web", shutdown_timeout=WAIT)
    srv = app.add(HTTPServer(make_handler(gates)))

    async def main() -> int:
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        conn = connect(srv)
        conn.request("GET", "/hold")
        assert await asyncio.to_thread(gates.entered.wait, WAIT)
        stopping = asyncio.ensure_future(runner.stop("test"))
        assert await asyncio.to_thread(srv._listener_closed.wait, WAIT)
        gates.release.set()
        response = await asyncio.to_thread(conn.getresponse)
        assert response.getheader("Connection") == "close"
        assert response.read() == b"held\n"
        conn.close()
        return await stopping

    assert asyncio.run(main()) == ExitCode.OK


# -- TCPServer ----------------------------------------------------------------------------


def make_tcp_handler(gates: Gates) -> type[socketserver.BaseRequestHandler]:
    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            token = current_token()
            token.on_cancel(self._wake)
            gates.entered.set()
            for line in self.rfile:
                if line == b"stuck\n":
                    gates.stuck.wait(WAIT * 3)
                if line == b"copy\n":
                    gates.contexts.append(contextvars.copy_context())
                self.wfile.write(b"copied\n" if line == b"copy\n" else line)
            gates.reasons.append(token.reason)

        def _wake(self) -> None:
            with contextlib.suppress(OSError):
                self.request.shutdown(socket.SHUT_RD)

    return Echo


@pytest.fixture
def tcp_server(gates):
    srv = TCPServer(make_tcp_handler(gates), name="echo")
    srv.start(CancelSource().token)
    yield srv
    gates.open_all()
    srv.stop(CancelSource(timeout=WAIT).token)


def test_tcp_connection_token_is_cancelled_at_stop(tcp_server, gates):
    """A TCP handler's token is cancelled at stop; it returns and the stop completes."""
    client = socket.create_connection(tcp_server.address, timeout=WAIT)
    client.sendall(b"hello\n")
    assert client.recv(100) == b"hello\n"
    assert tcp_server.tracker.count == 1
    tcp_server.stop(CancelSource(timeout=WAIT).token)
    assert gates.reasons == ["server stopping"]
    assert client.recv(100) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(tcp_server.address, timeout=WAIT).close()
    client.close()
    assert server_threads(tcp_server) == []


def test_tcp_stuck_connection_is_cut_and_named(tcp_server, gates, log_events):
    """A TCP handler that ignores its token is cut before the deadline, named by peer."""
    client = socket.create_connection(tcp_server.address, timeout=WAIT)
    client.sendall(b"stuck\n")
    assert gates.entered.wait(WAIT)
    with pytest.raises(lifecycle.DeadlineExceeded, match="cut 1 unfinished request"):
        tcp_server.stop(CancelSource(timeout=0.5).token)
    gates.stuck.set()
    for thread in server_threads(tcp_server):
        thread.join(WAIT)
    peer = client.getsockname()
    client.close()
    cut = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert [line.split(" (")[0] for line in cut[0]["running"]] == [
        f"connection {peer[0]}:{peer[1]}"
    ]


# -- strict requests: bodies, headers, expectations ------------------------------------------


class BodyHandler(BaseHTTPRequestHandler):
    """POST /ignore leaves the body unread; POST /all reads rfile to its end; GET echoes."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        type(self).seen.append(self.path)
        if self.path == "/all":
            self.reply(self.rfile.read())
        elif self.path == "/lines":
            self.reply(b"|".join(self.rfile.readlines()))
        else:
            self.reply(b"ignored")

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        headers = [f"{name}={value}" for name, value in self.headers.items()]
        self.reply(";".join(headers).encode())

    def reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def body_server():
    BodyHandler.seen = []
    yield from serving(HTTPServer(BodyHandler), lambda: None)


def test_an_unread_body_is_skipped_not_served_as_the_next_request(body_server):
    """A handler that ignores its body: the body is dropped, never parsed as a request
    (a body holding a request would otherwise be smuggled past the proxy)."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (
        b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        + smuggled
        + b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    received = exchange(body_server.address, data)
    assert received.count(b"HTTP/1.1 200 ") == 2
    assert BodyHandler.seen == ["/ignore", "/next"]


def test_rfile_holds_the_body_only(body_server):
    """rfile.read() and readlines() end with the body, on a connection that stays open."""
    conn = connect(body_server)
    conn.request("POST", "/all", body=b"hello world")
    response = conn.getresponse()
    assert response.read() == b"hello world"
    conn.request("POST", "/lines", body=b"a\nb\nc")
    assert conn.getresponse().read() == b"a\n|b\n|c"
    assert not response.will_close
    conn.close()


def test_a_chunked_request_body_is_refused_with_411(body_server, log_events):
    """http.server handlers read Content-Length bodies: a chunked one is a 411 and a close."""
    data = (
        b"POST /all HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    received = exchange(body_server.address, data)
    assert received.startswith(b"HTTP/1.1 411 ")
    assert received.count(b"HTTP/1.") == 1
    assert BodyHandler.seen == []
    assert [e["status"] for e in log_events if e["event"] == "request refused"] == [411]


def test_headers_keep_their_case_order_and_repeats(body_server):
    """self.headers is an HTTPMessage with the names as sent, in order, repeats kept."""
    data = b"GET /h HTTP/1.1\r\nHost: x\r\nX-Trace: a\r\nx-trace: b\r\nAccept:  */* \r\n\r\n"
    received = exchange(body_server.address, data)
    assert received.endswith(b"Host=x;X-Trace=a;x-trace=b;Accept=*/*")


def test_expect_100_continue_is_answered_before_the_body(body_server):
    """A request that expects 100-continue gets it before sending the body, as http.server does."""
    client = socket.create_connection(body_server.address, timeout=WAIT)
    client.sendall(
        b"POST /all HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert client.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.sendall(b"hello")
    response = http.client.HTTPResponse(client)
    response.begin()
    assert (response.status, response.read()) == (200, b"hello")
    client.close()


def test_a_double_slash_path_is_made_single_as_http_server_does(body_server):
    """self.path starting with // is made /... (the stdlib's guard against open redirects)."""
    conn = connect(body_server)
    conn.request("GET", "//evil.example/x")
    conn.getresponse().read()
    conn.close()
    assert BodyHandler.seen == ["/evil.example/x"]


def test_tcp_connections_past_the_cap_wait_for_one_to_end(gates, log_events):
    """TCPServer(max_connections=1): a second client waits in the backlog, unserved, until
    the first connection ends; then it is served. The cap is logged as a warning."""
    srv = TCPServer(make_tcp_handler(gates), max_connections=1)
    srv.start(CancelSource().token)
    try:
        first = socket.create_connection(srv.address, timeout=WAIT)
        first.sendall(b"one\n")
        assert first.recv(100) == b"one\n"
        second = socket.create_connection(srv.address, timeout=WAIT)
        second.sendall(b"two\n")
        second.settimeout(0.2)
        with pytest.raises(TimeoutError):
            second.recv(100)
        assert srv.tracker.count == 1
        first.close()
        second.settimeout(WAIT)
        assert second.recv(100) == b"two\n"
        second.close()
    finally:
        gates.open_all()
        srv.stop(CancelSource(timeout=WAIT).token)
    capped = [e for e in log_events if e["event"] == "connection limit reached"]
    assert [e["max_connections"] for e in capped] == [1]


# -- a listening socket given to the server (sock=) --------------------------------------------


def listening(backlog: int = 16) -> socket.socket:
    """A TCP socket bound to 127.0.0.1 (a free port) and listening; blocking, as made."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def test_serves_on_a_listening_socket_it_is_given(gates):
    """Given a bound, listening socket, the server serves on it (its address, its port)."""
    sock = listening()
    srv = HTTPServer(make_handler(gates), sock=sock)
    assert srv.address == sock.getsockname()  # known before start
    for served in serving(srv, gates.open_all):
        assert served.address == sock.getsockname()
        assert served.name == f"http:{sock.getsockname()[1]}"
        conn = connect(served)
        for _ in range(2):
            assert get(conn)[1] == b"ok\n"
        conn.close()


def test_a_stop_closes_the_given_socket_and_later_connects_are_refused(gates):
    """The stop closes the given socket as its own (from the blocking socket the test made):
    it returns in bound, the socket is closed, and a new connection is refused."""
    sock = listening()
    address = sock.getsockname()
    srv = HTTPServer(make_handler(gates), sock=sock)
    srv.start(CancelSource().token)
    conn = connect(srv)
    assert get(conn)[1] == b"ok\n"
    began = time.monotonic()
    srv.stop(CancelSource(timeout=WAIT).token)
    assert time.monotonic() - began < WAIT / 2
    assert sock.fileno() == -1
    assert not srv.ready()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT).close()
    conn.close()


def test_connections_queued_on_the_given_socket_before_start_are_all_served(gates):
    """What the kernel queued on the given socket before the server started is served, even
    when the stop follows the start at once: taken from the backlog, never reset."""
    sock = listening()
    clients = []
    for _ in range(5):
        client = socket.create_connection(sock.getsockname(), timeout=WAIT)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(client)
    srv = HTTPServer(make_handler(gates), sock=sock)
    srv.start(CancelSource().token)
    srv.stop(CancelSource(timeout=WAIT).token)
    for client in clients:
        response = http.client.HTTPResponse(client)
        response.begin()
        assert (response.status, response.read()) == (200, b"ok\n")
        client.close()
    assert srv.tracker.total == 5
    assert sock.fileno() == -1


def test_address_and_sock_together_are_refused_naming_both():
    """sock= with an address other than the default is refused: the message names both."""
    with listening() as sock:
        with pytest.raises(ValueError, match=r"address.*sock.*drop address") as raised:
            HTTPServer(BaseHTTPRequestHandler, ("127.0.0.1", 8080), sock=sock)
        assert f"127.0.0.1:{sock.getsockname()[1]}" in str(raised.value)
        assert sock.fileno() != -1  # refused: left as it was


def _unix_listening(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(4)
    return sock


def _bound_only() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _closed() -> socket.socket:
    sock = listening()
    sock.close()
    return sock


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda tmp: _bound_only(), ValueError, r"is not listening.*bound to 127\.0\.0\.1:\d+"),
        (lambda tmp: socket.socket(), ValueError, r"is not listening \(not bound\).*bind"),
        (lambda tmp: _udp(), ValueError, r"SOCK_STREAM.*got SOCK_DGRAM"),
        (lambda tmp: _closed(), ValueError, r"closed"),
        (lambda tmp: _unix_listening(str(tmp / "s")), ValueError, r"AF_INET.*AF_UNIX"),
        (lambda tmp: 3, TypeError, r"socket\.socket.*got 3"),
    ],
    ids=["bound-not-listening", "unbound", "udp", "closed", "unix", "not-a-socket"],
)
@pytest.mark.parametrize("kind", [HTTPServer, TCPServer])
def test_a_wrong_kind_of_socket_is_refused_saying_what_is_wrong(
    tmp_path, kind, make, error, message
):
    """A socket that is not a bound, listening TCP socket is refused, with what is wrong."""
    handler = BaseHTTPRequestHandler if kind is HTTPServer else socketserver.StreamRequestHandler
    sock = make(tmp_path)
    try:
        with pytest.raises(error, match=message):
            kind(handler, sock=sock)
    finally:
        if isinstance(sock, socket.socket):
            sock.close()


def test_a_given_socket_closed_before_start_fails_the_start_saying_so(gates):
    """A socket closed between construction and start fails start (not the accept thread)."""
    sock = listening()
    srv = HTTPServer(make_handler(gates), sock=sock)
    sock.close()
    with pytest.raises(ValueError, match="closed"):
        srv.start(CancelSource().token)
    assert not srv.ready()


def test_tcp_server_serves_and_closes_a_given_socket(gates):
    """TCPServer takes sock= too: it echoes on the socket and closes it at stop."""
    sock = listening()
    address = sock.getsockname()
    srv = TCPServer(make_tcp_handler(gates), sock=sock)
    srv.start(CancelSource().token)
    client = socket.create_connection(address, timeout=WAIT)
    client.sendall(b"hello\n")
    assert client.recv(100) == b"hello\n"
    srv.stop(CancelSource(timeout=WAIT).token)
    assert client.recv(100) == b""
    client.close()
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT).close()


def test_a_request_begun_in_the_drain_delay_answers_before_the_stops_cut():
    """A request begun during the drain delay carries the shutdown's deadline (30 s away) until
    the stop begins; a handler waiting on its token is then cancelled a margin before the
    stop's own cut (stop_timeout=1), answers, and nothing is cut."""
    answered: list[str | None] = []

    class Waits(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            token = current_token()
            token.wait(timeout=None)
            answered.append(token.reason)
            body = b"late\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    app = lifecycle.App("web", drain_delay=0.5, shutdown_timeout=30)
    srv = app.add(HTTPServer(Waits), stop_timeout=1.0)
    with lifecycle.ThreadedRunner(app, signals=None) as runner:
        app.request_shutdown("test")
        assert app.shutdown_token.wait(WAIT)
        conn = connect(srv)
        response, body = get(conn, "/")
        conn.close()
        assert (response.status, body) == (200, b"late\n")
        assert answered == [lifecycle.DEADLINE_EXCEEDED]
        assert runner.wait() == ExitCode.OK


def _accept_queue(sock: socket.socket) -> int:
    """How many completed connections wait in ``sock``'s accept queue (Linux TCP_INFO)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[24:28], "little")  # tcpi_unacked, for a listening socket


def test_a_given_socket_with_a_long_backlog_has_its_whole_queue_served_at_stop(gates):
    """sock= listening with 1024, at the cap (1 request held), 300 more queued with their
    requests sent: the stop takes in all 300 and answers them (not 129: backlog's default), and
    ends as soon as the clients are answered."""
    sock = listening(1024)
    srv = HTTPServer(make_handler(gates), sock=sock, max_connections=1)
    srv.start(CancelSource().token)
    held = connect(srv)
    held.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    clients = []
    try:
        for _ in range(300):
            client = socket.create_connection(srv.address, timeout=WAIT)
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            clients.append(client)
        wait_until(lambda: _accept_queue(sock) == 300, "300 connections queued")
        stopping = stop_in_thread(srv)
        wait_until(lambda: sock.fileno() == -1, "the listener closed")
        gates.release.set()
        statuses = []
        for client in clients:
            response = http.client.HTTPResponse(client)
            response.begin()
            statuses.append(response.status)
            response.close()
            client.close()
        assert statuses == [200] * 300
        assert held.getresponse().read() == b"held\n"
        held.close()
        # Every handler ends at once: 300 wake-ups of the ended accept loop do not block them.
        stopping.join(WAIT / 5)
        assert not stopping.is_alive()
        assert srv.tracker.total == 301
    finally:
        gates.open_all()
        held.close()
        for client in clients:
            client.close()


@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_connections_taken_in_and_cut_before_they_started_are_all_named(gates, kind, monkeypatch):
    """Cap 1, one stuck request, 20 queued with their requests, a 0.05 s stop whose accept
    thread starts the taken-in connections only after the cut: every one closed unanswered
    is named in DeadlineExceeded.cut (21), none is left out."""
    srv: TCPServer | HTTPServer = (
        HTTPServer(make_handler(gates), max_connections=1)
        if kind == "http"
        else TCPServer(make_tcp_handler(gates), max_connections=1)
    )
    srv.start(CancelSource().token)
    stuck = socket.create_connection(srv.address, timeout=WAIT)
    stuck.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n" if kind == "http" else b"stuck\n")
    assert gates.entered.wait(WAIT)
    clients = []
    for i in range(20):
        client = socket.create_connection(srv.address, timeout=WAIT)
        client.sendall(b"GET /q%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        clients.append(client)
    assert srv._listener is not None
    listening_socket = srv._listener.socket
    wait_until(lambda: _accept_queue(listening_socket) == 20, "20 connections queued")
    # The accept thread closes the listener once the cut is done: the interleaving in which
    # the stop's listener close gave up before the taken-in connections started.
    stopper = threading.get_ident()
    cut_done = threading.Event()
    listener = srv._listener
    assert listener is not None
    close, cut = listener.server_close, srv._cut

    def server_close() -> None:
        if threading.get_ident() != stopper:
            cut_done.wait(WAIT)
        close()

    def cutting() -> list[str]:
        try:
            return cut()
        finally:
            cut_done.set()

    monkeypatch.setattr(listener, "server_close", server_close)
    monkeypatch.setattr(srv, "_cut", cutting)
    try:
        with pytest.raises(lifecycle.DeadlineExceeded) as raised:
            srv.stop(CancelSource(timeout=0.05).token)
        assert srv._listener_closed.wait(WAIT)
        for client in clients:  # each closed without a response: an EOF or a reset
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(100) == b""
        assert len(raised.value.cut) == 21
    finally:
        gates.open_all()
        stuck.close()
        for client in clients:
            client.close()
