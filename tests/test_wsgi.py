"""Tests of `lifecycle._serving.wsgi`: WSGIServer serves WSGI zero-loss; WSGIMiddleware elsewhere.

Real sockets on 127.0.0.1 and real threads; requests are held in flight with
`threading.Event`s, never with sleeps; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import http.server
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.simple_server import WSGIServer as WsgirefServer

import pytest

import lifecycle
from lifecycle import CancelSource, CancelToken, ExitCode, current_token
from lifecycle._serving.http import mark_long_lived
from lifecycle._serving.stopseq import CUT_MARGIN
from lifecycle._serving.wsgi import CLOSE_CONNECTION_KEY, TRACKED_KEY, WSGIMiddleware, WSGIServer
from tests.fakes import FakeApp
from tests.serving import WAIT, connect, serving, wait_until
from tests.test_hostile import exchange


class Gates:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.stuck = threading.Event()
        self.reasons: list[str | None] = []
        self.environs: list[dict[str, Any]] = []
        self.contexts: list[contextvars.Context] = []

    def open_all(self) -> None:
        self.release.set()
        self.stuck.set()


def make_app(gates: Gates):
    def app(environ, start_response) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        gates.environs.append(environ)
        if path == "/hold":
            gates.entered.set()
            gates.release.wait(WAIT)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"held\n"]
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (f"part{i}\n".encode() for i in range(3))
        if path == "/long":
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return long_body(gates)
        if path == "/echo":
            data = environ["wsgi.input"].read()
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return [data]
        if path == "/lines":
            lines = list(environ["wsgi.input"])
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [json.dumps([line.decode() for line in lines]).encode()]
        if path == "/boom":
            raise RuntimeError("boom")
        if path == "/copy":  # hands its context to code run elsewhere
            gates.contexts.append(contextvars.copy_context())
        if path == "/token":
            token = current_token()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"deadline": token.deadline}).encode()]
        if path == "/close":
            start_response(
                "200 OK",
                [("Connection", "close"), ("Keep-Alive", "timeout=5"), ("Content-Length", "3")],
            )
            return [b"bye"]
        if path == "/stuck":
            gates.entered.set()
            gates.stuck.wait(WAIT * 3)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    return app


def long_body(gates: Gates) -> Iterator[bytes]:
    assert mark_long_lived()
    token = current_token()
    yield b"start\n"
    gates.entered.set()
    token.wait(WAIT)
    gates.reasons.append(token.reason)
    yield b"bye\n"


@pytest.fixture
def gates():
    g = Gates()
    yield g
    g.open_all()


@pytest.fixture
def server(gates):
    """A started WSGIServer bound to a FakeApp; stopped (bounded) at teardown."""
    yield from serving(WSGIServer(make_app(gates)), gates.open_all)


def request(conn, method: str = "GET", path: str = "/", **kwargs):
    conn.request(method, path, **kwargs)
    response = conn.getresponse()
    return response, response.read()


def stop_in_thread(srv, timeout: float = WAIT) -> threading.Thread:
    thread = threading.Thread(target=srv.stop, args=(CancelSource(timeout=timeout).token,))
    thread.start()
    return thread


def server_threads(srv) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"lifecycle:{srv.name} ")]


# -- WSGIServer: serving -------------------------------------------------------------------


def test_serves_the_app_with_keep_alive_and_a_computed_length(server, gates):
    """A one-item body gets a Content-Length; the connection stays open for the next request."""
    conn = connect(server)
    for _ in range(2):
        response, body = request(conn, path="/hold%20me?x=1", headers={"X-Thing": "a"})
        gates.release.set()
        assert (response.status, body) == (200, b"ok\n")
        assert response.getheader("Connection") is None
        assert not response.will_close
    conn.close()
    environ = gates.environs[0]
    assert environ["PATH_INFO"] == "/hold me"
    assert environ["QUERY_STRING"] == "x=1"
    assert environ["HTTP_X_THING"] == "a"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(server.port)
    assert environ[TRACKED_KEY] is True
    assert callable(environ[CLOSE_CONNECTION_KEY])


@pytest.mark.parametrize(
    ("multiprocess", "expected"), [(None, False), (False, False), (True, True)]
)
def test_wsgi_multiprocess_says_whether_other_processes_serve_the_app(
    gates, multiprocess, expected
):
    """environ["wsgi.multiprocess"] is False by default and True with multiprocess=True;
    wsgi.multithread is True either way."""
    options = {} if multiprocess is None else {"multiprocess": multiprocess}
    for srv in serving(WSGIServer(make_app(gates), **options), gates.open_all):
        conn = connect(srv)
        assert request(conn)[1] == b"ok\n"
        conn.close()
    environ = gates.environs[0]
    assert (environ["wsgi.multiprocess"], environ["wsgi.multithread"]) == (expected, True)


def test_multiprocess_must_be_a_bool():
    """multiprocess takes True or False only: a truthy string is refused, saying so."""
    with pytest.raises(TypeError, match="multiprocess must be True or False"):
        WSGIServer(make_app(Gates()), multiprocess="yes")  # type: ignore[arg-type]


def test_serves_the_app_on_a_given_socket_and_closes_it_at_stop(gates):
    """sock= works for WSGIServer as for HTTPServer: served on it (SERVER_PORT its port),
    closed by the stop, later connections refused."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    address = sock.getsockname()
    for srv in serving(WSGIServer(make_app(gates), sock=sock), gates.open_all):
        conn = connect(srv)
        assert request(conn)[1] == b"ok\n"
        conn.close()
    assert gates.environs[0]["SERVER_PORT"] == str(address[1])
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT).close()


def test_a_given_socket_and_an_address_are_refused_together():
    """WSGIServer refuses address and sock together, naming both."""
    with (
        socket.create_server(("127.0.0.1", 0)) as sock,
        pytest.raises(ValueError, match="address or sock, not both"),
    ):
        WSGIServer(make_app(Gates()), ("0.0.0.0", 8000), sock=sock)


def test_streamed_body_is_chunked_and_head_has_none(server):
    """A generator body is sent chunked on HTTP/1.1; a HEAD response carries no body."""
    conn = connect(server)
    response, body = request(conn, path="/stream")
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert body == b"part0\npart1\npart2\n"
    response, body = request(conn, "HEAD", "/stream")
    assert (response.status, body) == (200, b"")
    response, body = request(conn)
    assert body == b"ok\n"
    conn.close()


def test_http_1_0_stream_is_delimited_by_close(server):
    """An HTTP/1.0 client gets an unchunked body, delimited by the close of the connection."""
    client = socket.create_connection(server.address, timeout=WAIT)
    client.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert b"chunked" not in head
    assert body == b"part0\npart1\npart2\n"


def test_request_bodies_with_length_or_chunked(server):
    """wsgi.input reads a Content-Length body or a chunked one, and iterates lines."""
    conn = connect(server)
    response, body = request(conn, "POST", "/echo", body=b"hello body")
    assert body == b"hello body"
    chunks = iter([b"chu", b"nked\n", b"body"])
    response, body = request(conn, "POST", "/echo", body=chunks, encode_chunked=True)
    assert body == b"chunked\nbody"
    response, body = request(conn, "POST", "/lines", body=b"a\nb\nc")
    assert json.loads(body) == ["a\n", "b\n", "c"]
    assert not response.will_close
    conn.close()


def test_unread_small_body_is_discarded_and_the_connection_kept(server):
    """A body the app did not read is skipped so the next request parses; a huge one closes."""
    conn = connect(server)
    response, body = request(conn, "POST", "/", body=b"x" * 1000)
    assert (body, response.will_close) == (b"ok\n", False)
    response, body = request(conn)
    assert body == b"ok\n"
    conn.close()
    client = socket.create_connection(server.address, timeout=WAIT)
    client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    response = http.client.HTTPResponse(client)
    response.begin()
    assert (response.read(), response.will_close) == (b"ok\n", True)
    client.close()


def test_app_error_is_a_logged_500(server, log_events):
    """An app that raises before responding gets a 500, and the error is logged with its stack."""
    conn = connect(server)
    response, _ = request(conn, path="/boom")
    assert response.status == 500
    conn.close()
    events = [e for e in log_events if e["event"] == "WSGI app raised"]
    assert len(events) == 1
    assert events[0]["exc_info"] is True


def test_app_connection_close_is_honoured_and_hop_by_hop_dropped(server):
    """An app's own Connection: close closes the connection; other hop-by-hop headers go."""
    conn = connect(server)
    response, body = request(conn, path="/close")
    assert body == b"bye"
    assert response.getheader("Connection") == "close"
    assert response.getheader("Keep-Alive") is None
    conn.close()


def raw_exchange(wsgi_app) -> bytes:
    """Serve ``wsgi_app`` on a WSGIServer; send one request on a raw socket and return
    every byte the server sent until it closed the connection."""
    srv = WSGIServer(wsgi_app)
    srv.start(CancelSource().token)
    try:
        client = socket.create_connection(srv.address, timeout=WAIT)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := client.recv(65536):
            data += chunk
        client.close()
    finally:
        srv.stop(CancelSource(timeout=WAIT).token)
    return data


def header_app(status: str, headers: list[tuple[str, str]], body: list[bytes]):
    def app(environ, start_response):
        start_response(status, headers)
        return body

    return app


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "abc")]),
        ("200 OK", [("X-Name", "caf\u00e9 \u2603")]),  # not latin-1
        ("200 OK", [("X-Split", "a\r\nX-Injected: 1")]),
        ("200 OK", [("X-Split", "a\nX-Injected: 1")]),
        ("200 OK", [("X-Nul", "a\0b")]),
        ("200 OK", [("X-Bad\r\nX-Injected", "1")]),
        ("200 OK", [("X Bad", "1")]),
        ("200 OK\r\nX-Injected: 1", [("Content-Type", "text/plain")]),
        ("200", [("Content-Type", "text/plain")]),
    ],
)
def test_a_bad_status_or_header_is_one_500_on_the_wire(status, headers, log_events):
    """A bad status or header (CR, LF, NUL, not latin-1, bad length) gets one 500 and no split."""
    data = raw_exchange(header_app(status, headers, [b"body bytes"]))
    assert data.count(b"HTTP/1.") == 1
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"X-Injected" not in data
    assert b"body bytes" not in data
    assert [e["event"] for e in log_events].count("WSGI app raised") == 1


def test_a_bad_header_in_a_streamed_response_is_still_one_head():
    """A generator body whose start_response header is bad: one 500, the body never starts."""
    started: list[bool] = []

    def app(environ, start_response):
        def body():
            started.append(True)
            yield b"first"

        start_response("200 OK", [("Content-Length", "5 ")])
        return body()

    data = raw_exchange(app)
    assert data.count(b"HTTP/1.") == 1
    assert data.startswith(b"HTTP/1.1 500 ")
    assert started == []


# -- WSGIServer: stopping ------------------------------------------------------------------


def test_in_flight_request_at_stop_finishes_with_connection_close(server, gates):
    """A request in flight when stop begins completes; its response says Connection: close."""
    conn = connect(server)
    conn.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    stopper = stop_in_thread(server)
    assert server._listener_closed.wait(WAIT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=WAIT).close()
    gates.release.set()
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"held\n")
    assert response.getheader("Connection") == "close"
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert server_threads(server) == []
    conn.close()


def test_drain_responses_say_close_and_new_connections_are_served(server):
    """During the drain, WSGI responses (framed or chunked) say Connection: close."""
    server.app.request_shutdown()
    for path in ("/", "/stream"):
        conn = connect(server)
        response, body = request(conn, path=path)
        assert response.status == 200
        assert body
        assert response.getheader("Connection") == "close"
        conn.close()


def test_request_token_has_the_shutdown_deadline(server):
    """current_token() in the app carries, once shutdown was requested, a margin before the
    cut a stop ending at the shutdown deadline makes."""
    conn = connect(server)
    assert json.loads(request(conn, path="/token")[1]) == {"deadline": None}
    server.app.request_shutdown()
    deadline = json.loads(request(conn, path="/token")[1])["deadline"]
    assert server.app.shutdown_deadline is not None
    assert deadline == pytest.approx(server.app.shutdown_deadline - 2 * CUT_MARGIN)
    conn.close()


def test_long_lived_stream_ends_at_stop(server, gates):
    """A body marked long-lived has its token cancelled at stop and ends its stream cleanly."""
    conn = connect(server)
    conn.request("GET", "/long")
    response = conn.getresponse()
    assert gates.entered.wait(WAIT)
    began = time.monotonic()
    server.stop(CancelSource(timeout=WAIT).token)
    assert time.monotonic() - began < 2.0
    assert response.read() == b"start\nbye\n"
    assert gates.reasons == ["server stopping: long-lived request asked to end"]
    conn.close()


def test_stuck_app_is_cut_and_named_in_the_log(server, gates, log_events):
    """An app stuck past the deadline is cut before it, and the log names the request."""
    conn = connect(server)
    conn.request("GET", "/stuck")
    assert gates.entered.wait(WAIT)
    with pytest.raises(lifecycle.DeadlineExceeded, match="cut 1 unfinished request"):
        server.stop(CancelSource(timeout=0.5).token)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        conn.getresponse()
    conn.close()
    gates.stuck.set()
    for thread in server_threads(server):
        thread.join(WAIT)
    cut = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert [line.split(" (")[0] for line in cut[0]["running"]] == ["GET /stuck"]


def test_wsgi_app_under_a_runner_keeps_its_in_flight_request(gates):
    """Under ThreadedRunner a WSGI request in flight at stop completes; exit code OK."""
    app = lifecycle.App("web", shutdown_timeout=WAIT)
    srv = app.add(WSGIServer(make_app(gates)))
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    conn = connect(srv)
    conn.request("GET", "/hold")
    assert gates.entered.wait(WAIT)
    codes: list[int] = []
    stopper = threading.Thread(target=lambda: codes.append(runner.stop("test")))
    stopper.start()
    assert srv._listener_closed.wait(WAIT)
    gates.release.set()
    response = conn.getresponse()
    assert response.read() == b"held\n"
    assert response.getheader("Connection") == "close"
    stopper.join(WAIT)
    assert codes == [ExitCode.OK]
    conn.close()


# -- WSGIMiddleware --------------------------------------------------------------------------


class Recorder:
    """A start_response that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def __call__(self, status, headers, exc_info=None):
        self.calls.append((status, headers))
        return lambda data: None


def environ_for(path: str = "/", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, **(extra or {})}


def body_app(seen: list[object]):
    def app(environ, start_response):
        seen.append(current_token())
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            seen.append(current_token())
            yield b"a"
            yield b"b"

        return body()

    return app


def test_middleware_tracks_a_request_until_its_body_is_closed():
    """The request counts as in flight from the call until the server closes the body."""
    seen: list[object] = []
    mw = WSGIMiddleware(body_app(seen), FakeApp())
    result = mw(environ_for("/orders"), Recorder())
    assert mw.tracker.count == 1
    assert [t.label for t in mw.tracker.running()] == ["GET /orders"]
    assert list(result) == [b"a", b"b"]
    assert mw.tracker.count == 1
    result.close()  # type: ignore[attr-defined]
    assert mw.tracker.count == 0


def test_middleware_request_with_a_built_body_ends_when_the_app_returns():
    """A list body runs no app code while sent: the request ends when the app returns."""
    mw = WSGIMiddleware(lambda environ, start_response: [b"built"], FakeApp())
    assert mw(environ_for("/"), Recorder()) == [b"built"]
    assert (mw.tracker.count, mw.tracker.total) == (0, 1)


class ClosingBody:
    """A streamed body with a close() of its own, counting its calls (raising if told)."""

    def __init__(self, items: list[bytes], fail: bool = False) -> None:
        self.items = items
        self.fail = fail
        self.closed = 0

    def __iter__(self):
        return iter(self.items)

    def close(self) -> None:
        self.closed += 1
        if self.fail:
            raise RuntimeError("close failed")


def test_middleware_closes_the_apps_body_once_and_a_late_second_close_ends_nothing():
    """A body closed twice closes the app's iterable once; its second close, made while
    the next request is in flight, leaves that request tracked and its token current."""
    bodies = [ClosingBody([b"a", b"b"]), ClosingBody([b"c"])]
    seen: list[CancelToken] = []

    def app(environ, start_response):
        seen.append(current_token())
        start_response("200 OK", [])
        return bodies[len(seen) - 1]

    mw = WSGIMiddleware(app, FakeApp())
    outer = current_token()
    first = mw(environ_for("/1"), Recorder())
    assert list(first) == [b"a", b"b"]
    first.close()  # type: ignore[attr-defined]
    second = mw(environ_for("/2"), Recorder())
    first.close()  # type: ignore[attr-defined]
    assert bodies[0].closed == 1
    assert mw.tracker.count == 1
    assert current_token() is seen[1]
    assert list(second) == [b"c"]
    second.close()  # type: ignore[attr-defined]
    assert (bodies[1].closed, mw.tracker.count, mw.tracker.total) == (1, 0, 2)
    assert current_token() is outer


def test_middleware_body_whose_close_raises_still_ends_the_request():
    """The app's close() raising reaches the server, and the request is over all the same."""
    body = ClosingBody([b"x"], fail=True)
    mw = WSGIMiddleware(lambda environ, start_response: body, FakeApp())
    outer = current_token()
    result = mw(environ_for(), Recorder())
    assert list(result) == [b"x"]
    with pytest.raises(RuntimeError, match="close failed"):
        result.close()  # type: ignore[attr-defined]
    assert (body.closed, mw.tracker.count) == (1, 0)
    assert current_token() is outer
    again = mw(environ_for(), Recorder())  # the lane is free again
    assert mw.tracker.count == 1
    with pytest.raises(RuntimeError):
        again.close()  # type: ignore[attr-defined]
    assert (mw.tracker.count, mw.tracker.total) == (0, 2)


def test_middleware_iterator_body_without_close_streams_every_item_then_ends():
    """A list iterator (no close of its own) streams item by item, tracked until closed."""
    items = [b"a", b"", b"bc"]
    mw = WSGIMiddleware(lambda environ, start_response: iter(items), FakeApp())
    outer = current_token()
    result = mw(environ_for(), Recorder())
    assert current_token() is not outer
    assert list(result) == items
    assert mw.tracker.count == 1
    result.close()  # type: ignore[attr-defined]
    assert mw.tracker.count == 0
    assert current_token() is outer


def test_no_request_token_stays_current_when_bodies_close_out_of_order():
    """Two streamed bodies open at once, the first closed first: afterwards the caller's
    token is current again, not one of the requests'."""
    seen: list[CancelToken] = []
    mw = WSGIMiddleware(token_app(seen), FakeApp())
    outer = current_token()
    first = mw(environ_for("/1"), Recorder())
    second = mw(environ_for("/2"), Recorder())
    assert current_token() is seen[1]  # the second body's, while the server sends it
    first.close()  # type: ignore[attr-defined]
    assert current_token() is seen[1]
    second.close()  # type: ignore[attr-defined]
    assert current_token() is outer
    third = mw(environ_for("/3"), Recorder())
    third.close()  # type: ignore[attr-defined]
    assert current_token() is outer
    assert seen[2] is not seen[0]  # the token closed out of order is never used again


def test_middleware_token_is_current_in_the_app_and_its_body():
    """current_token() is the request's token in the app call and while its body iterates."""
    seen: list[object] = []
    fake = FakeApp()
    fake.request_shutdown()
    mw = WSGIMiddleware(body_app(seen), fake)
    result = mw(environ_for(), Recorder())
    list(result)
    result.close()  # type: ignore[attr-defined]
    assert seen[0] is seen[1]
    token = seen[0]
    assert isinstance(token, lifecycle.CancelToken)
    assert fake.shutdown_deadline is not None
    assert token.deadline == pytest.approx(fake.shutdown_deadline - 2 * CUT_MARGIN)
    assert current_token() is not token


def test_middleware_asks_the_server_to_close_during_the_drain():
    """While draining, the environ's close callable is called, and no hop-by-hop header added."""
    fake = FakeApp()
    mw = WSGIMiddleware(body_app([]), fake)
    closed: list[bool] = []
    recorder = Recorder()
    mw(environ_for(extra={CLOSE_CONNECTION_KEY: lambda: closed.append(True)}), recorder).close()  # type: ignore[attr-defined]
    assert closed == []
    fake.request_shutdown()
    mw(environ_for(extra={CLOSE_CONNECTION_KEY: lambda: closed.append(True)}), recorder).close()  # type: ignore[attr-defined]
    assert closed == [True]
    assert all("connection" not in [h.lower() for h, _ in headers] for _, headers in recorder.calls)


def test_middleware_uses_gunicorns_force_close():
    """Under gunicorn (start_response bound to a Response with force_close) it forces the close."""

    class GunicornLikeResponse:
        def __init__(self) -> None:
            self.must_close = False

        def force_close(self) -> None:
            self.must_close = True

        def start_response(self, status, headers, exc_info=None):
            return lambda data: None

    fake = FakeApp()
    mw = WSGIMiddleware(body_app([]), fake)
    response = GunicornLikeResponse()
    mw(environ_for(), response.start_response).close()  # type: ignore[attr-defined]
    assert not response.must_close
    fake.request_shutdown()
    response = GunicornLikeResponse()
    mw(environ_for(), response.start_response).close()  # type: ignore[attr-defined]
    assert response.must_close


def test_middleware_passes_through_under_wsgiserver(gates):
    """Hosted by WSGIServer, the middleware leaves tracking to the server (no double count)."""
    mw = WSGIMiddleware(make_app(gates))
    srv = WSGIServer(mw)
    srv.start(CancelSource().token)
    conn = connect(srv)
    _, body = request(conn)
    conn.close()
    srv.stop(CancelSource(timeout=WAIT).token)
    assert body == b"ok\n"
    assert (mw.tracker.total, srv.tracker.total) == (0, 1)


def test_middleware_stop_waits_for_requests_and_ends_long_lived_ones():
    """stop() waits for a request in flight and cancels the token of a long-lived one."""
    mw = WSGIMiddleware(body_app([]), FakeApp())
    ordinary = mw(environ_for("/a"), Recorder())
    ended = threading.Event()

    def streaming(environ, start_response):
        mark_long_lived()
        token = current_token()
        token.on_cancel(ended.set)
        start_response("200 OK", [])
        return iter([b"x"])  # streamed: in flight until closed

    stream_mw = mw.wsgi_app
    mw.wsgi_app = streaming
    stream = mw(environ_for("/events"), Recorder())
    mw.wsgi_app = stream_mw
    stopper = threading.Thread(target=mw.stop, args=(CancelSource(timeout=WAIT).token,))
    stopper.start()
    ordinary.close()  # type: ignore[attr-defined]
    assert ended.wait(WAIT)
    stream.close()  # type: ignore[attr-defined]
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert mw.tracker.count == 0


def test_middleware_stop_cuts_before_its_deadline_and_raises(log_events):
    """A request still running CUT_MARGIN before the deadline is cut: token, log, error."""
    mw = WSGIMiddleware(body_app([]), FakeApp())
    seen: list[CancelToken] = []
    mw.wsgi_app = token_app(seen)
    result = mw(environ_for("/slow"), Recorder())
    stop = CancelSource(timeout=0.5).token
    with pytest.raises(lifecycle.DeadlineExceeded) as raised:
        mw.stop(stop)
    assert not stop.cancelled  # it returned before its deadline
    result.close()  # type: ignore[attr-defined]
    assert [line.split(" (")[0] for line in raised.value.cut] == ["GET /slow"]
    assert seen[0].reason == "stop deadline: request cut"
    events = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert [line.split(" (")[0] for line in events[0]["running"]] == ["GET /slow"]


def token_app(seen: list[CancelToken]):
    """An app recording its token; its streamed body keeps the request in flight until closed."""

    def app(environ, start_response):
        seen.append(current_token())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"x"])

    return app


def test_middleware_names_every_one_of_100_cut_requests():
    """100 requests cut by the middleware's stop: DeadlineExceeded.cut has 100 labels."""
    mw = WSGIMiddleware(body_app([]), FakeApp())
    bodies = [mw(environ_for(f"/r{i}"), Recorder()) for i in range(100)]
    with pytest.raises(lifecycle.DeadlineExceeded) as raised:
        mw.stop(CancelSource(timeout=0.3).token)
    for body in bodies:
        body.close()  # type: ignore[attr-defined]
    assert len(raised.value.cut) == 100
    assert sorted(line.split(" (")[0] for line in raised.value.cut) == sorted(
        f"GET /r{i}" for i in range(100)
    )


def test_stuck_middleware_under_a_runner_is_cut_not_abandoned(gates):
    """Under a runner, a stuck request makes the middleware's stop raise before its timeout."""
    app = lifecycle.App("web", shutdown_timeout=WAIT, stop_timeout=0.5)
    mw = app.add(WSGIMiddleware(body_app([])), name="wsgi")
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    body = mw(environ_for("/stuck"), Recorder())
    code = runner.stop("test")
    body.close()  # type: ignore[attr-defined]
    info = app.components["wsgi"]
    assert code == ExitCode.TIMEOUT
    assert isinstance(info.error, lifecycle.DeadlineExceeded)
    assert info.error.cut[0].startswith("GET /stuck (")
    assert info.stop_duration is not None
    assert info.stop_duration < 0.5


def test_middleware_ends_a_marked_request_through_its_own_token_only():
    """Marked long-lived, a request's token (in the app and its body) is cancelled by the
    stop; an ordinary request in flight at the same time keeps a live token."""
    tokens: dict[str, list[CancelToken]] = {"/events": [], "/slow": []}

    def app(environ, start_response):
        seen = tokens[environ["PATH_INFO"]]
        if environ["PATH_INFO"] == "/events":
            assert mark_long_lived()
        seen.append(current_token())
        start_response("200 OK", [])

        def body():
            seen.append(current_token())
            yield b"x"

        return body()

    mw = WSGIMiddleware(app, FakeApp())
    stream = mw(environ_for("/events"), Recorder())
    assert list(stream) == [b"x"]
    slow = mw(environ_for("/slow"), Recorder())
    assert list(slow) == [b"x"]
    assert [t.long_lived for t in mw.tracker.running()] == [True, False]
    in_app, in_body = tokens["/events"]
    assert in_body is in_app
    other = tokens["/slow"][0]
    assert other is not in_app
    stopper = threading.Thread(target=mw.stop, args=(CancelSource(timeout=WAIT).token,))
    stopper.start()
    slow.close()  # type: ignore[attr-defined]
    assert in_app.wait(WAIT)  # only long-lived left: the stream is asked to end
    assert in_app.reason == "server stopping: long-lived request asked to end"
    assert not other.cancelled
    stream.close()  # type: ignore[attr-defined]
    stopper.join(WAIT)
    assert not stopper.is_alive()


def test_middleware_request_arriving_during_the_stop_gets_a_live_token():
    """A request that arrives while the stop waits is served with a live token and the deadline."""
    fake = FakeApp()
    mw = WSGIMiddleware(body_app([]), fake)
    held = mw(environ_for("/held"), Recorder())
    stop = CancelSource(timeout=WAIT).token
    stopper = threading.Thread(target=mw.stop, args=(stop,))
    stopper.start()
    wait_until(lambda: mw.draining, "the stop began")
    seen: list[CancelToken] = []
    mw.wsgi_app = token_app(seen)
    mw(environ_for("/late"), Recorder()).close()  # type: ignore[attr-defined]
    held.close()  # type: ignore[attr-defined]
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert stop.deadline is not None
    assert seen[0].deadline == pytest.approx(stop.deadline - 2 * CUT_MARGIN)  # before the cut
    assert seen[0].reason in (None, "closed")  # live while served; released after the stop


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class ThreadingWsgiref(socketserver.ThreadingMixIn, WsgirefServer):
    daemon_threads = True


def test_middleware_in_wsgiref_keeps_the_in_flight_request(gates):
    """Under the stdlib wsgiref server, stop waits for the request in flight; drain is legal."""
    app = lifecycle.App("web", shutdown_timeout=WAIT)
    mw = app.add(WSGIMiddleware(make_app(gates)))
    httpd = make_server(
        "127.0.0.1", 0, mw, server_class=ThreadingWsgiref, handler_class=QuietHandler
    )
    serving = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    try:
        with lifecycle.ThreadedRunner(app, signals=None) as runner:
            host, port = httpd.server_address[:2]
            conn = http.client.HTTPConnection(str(host), int(port), timeout=WAIT)
            conn.request("GET", "/hold")
            assert gates.entered.wait(WAIT)
            codes: list[int] = []
            stopper = threading.Thread(target=lambda: codes.append(runner.stop("test")))
            stopper.start()
            wait_until(lambda: mw.draining, "the drain began")
            gates.release.set()
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"held\n")
            stopper.join(WAIT)
            assert codes == [ExitCode.OK]
            assert mw.tracker.count == 0
            conn.close()
    finally:
        httpd.shutdown()
        serving.join(WAIT)
        httpd.server_close()


# -- WSGIServer: strict requests -------------------------------------------------------------


def test_a_path_holding_a_scheme_reaches_the_app_unchanged(server, gates):
    """GET /public/http://x/admin is PATH_INFO /public/http://x/admin, not /admin (only a
    target that does not start with / is absolute-form)."""
    exchange(server.address, b"GET /public/http://x/admin HTTP/1.1\r\nHost: x\r\n\r\n")
    exchange(server.address, b"GET http://example.com/real?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    paths = [(e["PATH_INFO"], e["QUERY_STRING"]) for e in gates.environs]
    assert paths == [("/public/http://x/admin", ""), ("/real", "q=1")]


def test_the_environ_is_built_from_the_parsed_head(server, gates):
    """Headers become HTTP_*, repeats joined; CONTENT_LENGTH comes from the framing and is
    absent for a chunked body; names with _ are dropped."""
    exchange(
        server.address,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nCookie: a=1\r\nCookie: b=2\r\n"
        b"X_Spoof: 1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    )
    exchange(
        server.address,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    )
    first, second = gates.environs
    assert (first["HTTP_X_A"], first["HTTP_COOKIE"]) == ("1,2", "a=1; b=2")
    assert (first["CONTENT_TYPE"], first["CONTENT_LENGTH"]) == ("text/plain", "2")
    assert "HTTP_X_SPOOF" not in first
    assert "CONTENT_LENGTH" not in second
    assert (first["SERVER_PROTOCOL"], first["REQUEST_METHOD"]) == ("HTTP/1.1", "POST")


def test_100_continue_is_sent_only_when_the_app_reads_the_body(server):
    """Expect: 100-continue: the 100 goes out when the app first reads wsgi.input; an app
    that answers without reading sends none and the connection closes (the client may
    never send that body)."""
    expect = b"Host: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    client = socket.create_connection(server.address, timeout=WAIT)
    client.sendall(b"POST /echo HTTP/1.1\r\n" + expect)
    assert client.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.sendall(b"hello")
    response = http.client.HTTPResponse(client)
    response.begin()
    assert response.read() == b"hello"
    client.close()
    received = exchange(server.address, b"POST / HTTP/1.1\r\n" + expect, half_close=False)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert b"100 Continue" not in received
    assert b"Connection: close" in received


def test_an_app_that_swallows_a_bad_body_still_closes_the_connection(log_events):
    """An app that catches the error of a malformed body and answers anyway: its answer is
    sent, and the connection closes (where the next request starts is unknown)."""

    def app(environ, start_response):
        with contextlib.suppress(ValueError):
            environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    srv = WSGIServer(app)
    srv.start(CancelSource().token)
    try:
        data = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        received = exchange(srv.address, data, half_close=False)
    finally:
        srv.stop(CancelSource(timeout=WAIT).token)
    assert received.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in received


# -- marking from a copied context, request deadlines under a stop ---------------------------


def test_wsgiserver_marking_from_a_copied_context_after_the_request_ended_is_a_no_op(server, gates):
    """Under WSGIServer, a context copied from a request that ended marks nothing (False)."""
    conn = connect(server)
    assert request(conn, path="/copy")[1] == b"ok\n"
    conn.request("GET", "/hold")  # the next request, on the same connection and thread
    assert gates.entered.wait(WAIT)
    assert gates.contexts[0].run(mark_long_lived) is False
    assert server.tracker.counts() == (1, 0)
    gates.release.set()
    assert conn.getresponse().read() == b"held\n"
    conn.close()


def test_middleware_marking_from_a_copied_context_after_the_request_ended_is_a_no_op():
    """Under WSGIMiddleware, a context copied from a request that ended marks nothing, even
    though its pooled slot now serves another request."""
    contexts: list[contextvars.Context] = []

    def app(environ, start_response):
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/copy":
            contexts.append(contextvars.copy_context())
            return [b"copied"]
        return iter([b"streaming"])

    mw = WSGIMiddleware(app, FakeApp())
    assert mw(environ_for("/copy"), Recorder()) == [b"copied"]
    stream = mw(environ_for("/stream"), Recorder())  # reuses the slot the first one had
    assert contexts[0].run(mark_long_lived) is False
    assert mw.tracker.counts() == (1, 0)
    assert list(stream) == [b"streaming"]
    stream.close()  # type: ignore[attr-defined]


def test_middleware_marking_from_a_copied_context_during_the_request_marks_it():
    """Under WSGIMiddleware, a thread running a copy of the request's context marks it."""
    contexts: list[contextvars.Context] = []

    def app(environ, start_response):
        start_response("200 OK", [])
        contexts.append(contextvars.copy_context())
        return iter([b"streaming"])

    mw = WSGIMiddleware(app, FakeApp())
    stream = mw(environ_for("/stream"), Recorder())
    marked: list[bool] = []
    thread = threading.Thread(target=lambda: marked.append(contexts[0].run(mark_long_lived)))
    thread.start()
    thread.join(WAIT)
    assert marked == [True]
    assert mw.tracker.counts() == (0, 1)
    stream.close()  # type: ignore[attr-defined]


@pytest.mark.realtime
def test_middleware_request_begun_during_the_stop_working_until_its_deadline_is_not_cut():
    """A request begun during the stop that waits for its token's deadline, then answers,
    is done before the cut: the stop returns normally."""
    fake = FakeApp()
    mw = WSGIMiddleware(body_app([]), fake)
    held = mw(environ_for("/held"), Recorder())  # keeps the stop waiting
    stop = CancelSource(timeout=0.6).token
    outcome: list[BaseException | None] = []

    def stopping() -> None:
        try:
            mw.stop(stop)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    stopper = threading.Thread(target=stopping)
    stopper.start()
    wait_until(lambda: mw.draining, "the stop began")
    tokens: list[CancelToken] = []

    def until_deadline(environ, start_response):
        token = current_token()
        tokens.append(token)
        token.wait(WAIT)
        start_response("200 OK", [])
        return [b"done"]

    mw.wsgi_app = until_deadline
    assert mw(environ_for("/late"), Recorder()) == [b"done"]
    held.close()  # type: ignore[attr-defined]
    stopper.join(WAIT)
    assert outcome == [None]
    assert stop.deadline is not None
    assert tokens[0].deadline is not None
    assert tokens[0].deadline < stop.deadline - CUT_MARGIN


def waits_for_its_token(answered: list[str | None]):
    """A WSGI app that waits on its token with no timeout, then answers ``late``."""

    def wsgi_app(environ, start_response):
        token = current_token()
        token.wait(timeout=None)
        answered.append(token.reason)
        start_response("200 OK", [("Content-Length", "5")])
        return [b"late\n"]

    return wsgi_app


def test_a_request_begun_in_the_drain_delay_answers_before_the_stops_cut():
    """Begun during the drain delay (the shutdown's 30 s deadline), a request waiting on its
    token is cancelled a margin before the stop's cut (stop_timeout=1), answers, nothing cut."""
    answered: list[str | None] = []
    app = lifecycle.App("web", drain_delay=0.5, shutdown_timeout=30)
    srv = app.add(WSGIServer(waits_for_its_token(answered)), stop_timeout=1.0)
    with lifecycle.ThreadedRunner(app, signals=None) as runner:
        app.request_shutdown("test")
        assert app.shutdown_token.wait(WAIT)
        conn = connect(srv)
        response, body = request(conn)
        conn.close()
        assert (response.status, body) == (200, b"late\n")
        assert answered == [lifecycle.DEADLINE_EXCEEDED]
        assert runner.wait() == ExitCode.OK


def test_middleware_request_begun_in_the_drain_answers_before_the_stops_cut():
    """The same under WSGIMiddleware: the stop (1 s) returns normally, the request answered."""
    answered: list[str | None] = []
    fake = FakeApp(shutdown_timeout=30)
    mw = WSGIMiddleware(waits_for_its_token(answered), fake)
    fake.request_shutdown()
    bodies: list[bytes] = []
    recorder = Recorder()

    def serve() -> None:
        result = mw(environ_for(), recorder)
        bodies.extend(result)
        close = getattr(result, "close", None)
        if close is not None:
            close()

    client = threading.Thread(target=serve)
    client.start()
    wait_until(lambda: mw.tracker.count == 1, "the request is in the app")
    mw.stop(CancelSource(timeout=1.0).token)
    client.join(WAIT)
    assert not client.is_alive()
    assert bodies == [b"late\n"]
    assert answered == [lifecycle.DEADLINE_EXCEEDED]


# -- the request's record: what is current in its context -------------------------------


def test_a_body_closed_from_another_thread_keeps_neither_the_middleware_nor_the_app_alive():
    """A server that closes bodies from a writer thread leaves the record behind (the
    orphans path): the record holds its lane weakly, so dropping the middleware frees it."""
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    class App:
        def __call__(self, environ, start_response):
            start_response("200 OK", [])
            return (chunk for chunk in [b"x"])

    app = App()
    mw = WSGIMiddleware(app)

    def serve(mw: WSGIMiddleware) -> object:
        for _ in range(3):
            body = mw(environ_for("/s"), Recorder())
            assert list(body) == [b"x"]
            closer = threading.Thread(target=body.close)  # type: ignore[attr-defined]
            closer.start()
            closer.join(WAIT)
        return body

    # In a context of its own: the records left current stay there, not in the
    # tests that run after this one in this thread.
    body = contextvars.copy_context().run(serve, mw)
    refs = weakref.ref(mw), weakref.ref(app)
    del mw, app, body
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_a_mark_in_a_middleware_request_inside_an_http_server_marks_the_middleware_s_request():
    """Nested servers: a WSGIMiddleware called from an HTTPServer handler; mark_long_lived()
    in the app marks the innermost request (the middleware's), not the connection's."""
    seen: list[Any] = []

    def app(environ, start_response):
        seen.append(mark_long_lived())
        seen.append(mw.tracker.counts())
        seen.append(srv.tracker.counts())
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    mw = WSGIMiddleware(app)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            recorder = Recorder()
            body = b"".join(mw(environ_for(self.path), recorder))
            self.send_response(int(recorder.calls[0][0].split()[0]))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass

    srv = lifecycle.HTTPServer(Handler, ("127.0.0.1", 0))
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.contextmanager(serving)(srv, lambda: None))
        conn = connect(srv)
        conn.request("GET", "/x")
        assert conn.getresponse().read() == b"ok"
        conn.close()
    marked, inner, outer = seen
    assert marked is True
    assert inner == (0, 1)  # (ordinary, long-lived) of the middleware's requests
    assert outer == (1, 0)  # the connection's request stays ordinary
