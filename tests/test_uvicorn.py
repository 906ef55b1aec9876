"""lifecycle.uvicorn.Server: a real uvicorn on 127.0.0.1, under both runners, with real clients.

Every test runs a real ``uvicorn`` (its h11 protocol, its websockets, its
lifespan) inside a lifecycle runner, threaded or asyncio (the ``run``
fixture), and talks to it over loopback with blocking clients from the test
thread. Moments are held with events (a component whose stop waits on one
keeps the server draining; a handler that signals it entered); every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client
from websockets.exceptions import ConnectionClosed

import lifecycle
import lifecycle.uvicorn
from lifecycle import AsyncioRunner, ExitCode, ThreadedRunner

BOUND = 10.0
RUNNERS = ["thread", "asyncio"]
ROOT = Path(__file__).resolve().parents[1]


# -- the runner fixture --------------------------------------------------------------


class Run:
    """Runs an App under one kind of runner; every blocking call bounded.

    ``thread``: a `ThreadedRunner` (uvicorn then runs on its private loop
    thread). ``asyncio``: an `AsyncioRunner` on an event loop in a helper thread.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.runner: ThreadedRunner | AsyncioRunner | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        if kind == "asyncio":
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.thread.start()

    def _call(self, fn: Any) -> concurrent.futures.Future[Any]:
        if self.loop is not None:

            async def body() -> Any:
                return await fn()

            return asyncio.run_coroutine_threadsafe(body(), self.loop)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as error:
                future.set_exception(error)

        threading.Thread(target=call, daemon=True).start()
        return future

    def start(self, app: lifecycle.App) -> None:
        cls = ThreadedRunner if self.kind == "thread" else AsyncioRunner
        self.runner = runner = cls(app, signals=None)
        self._call(runner.start).result(BOUND)

    def stop_soon(self) -> concurrent.futures.Future[Any]:
        runner = self.runner
        assert runner is not None
        return self._call(lambda: runner.stop("test"))

    def stop(self) -> int:
        return int(self.stop_soon().result(BOUND))

    def close(self) -> None:
        runner = self.runner
        if runner is not None and runner.exit_code is None:
            with contextlib.suppress(Exception):
                self.stop()
        if self.loop is not None and self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(BOUND)
            self.loop.close()


@pytest.fixture(params=RUNNERS)
def run(request: pytest.FixtureRequest, log_events: list[dict[str, Any]]) -> Iterator[Run]:
    """The runner under test, threaded or asyncio."""
    r = Run(request.param)
    try:
        yield r
    finally:
        r.close()


# -- apps and components -------------------------------------------------------------


class Events:
    """A thread-safe record of what the app saw, with bounded waits."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._cond = threading.Condition()

    def add(self, what: str) -> None:
        with self._cond:
            self.seen.append(what)
            self._cond.notify_all()

    def wait_for(self, what: str, timeout: float = BOUND) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: what in self.seen, timeout)
        assert ok, f"{what!r} did not happen; saw {self.seen}"


class TestApp:
    """An ASGI app: lifespan, ``/`` (hello), ``/slow`` (until released), ``/stuck``
    (never ends), ``/sse`` (streams until its token is cancelled), ``/ws`` (echo)."""

    __test__ = False

    def __init__(self) -> None:
        self.events = Events()
        self.release = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.events.add("lifespan startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.events.add("lifespan shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind == "websocket":
            await self.websocket(receive, send)
            return
        path = scope["path"]
        if path == "/sse":
            await self.sse(send)
            return
        if path == "/slow":
            self.events.add("slow entered")
            while not self.release.is_set():
                await asyncio.sleep(0.005)
        elif path == "/stuck":
            self.events.add("stuck entered")
            await asyncio.sleep(3600)  # ignores its token: the stop must cut it
        body = b"hello"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def sse(self, send: Any) -> None:
        lifecycle.mark_long_lived()
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: hello\n\n", "more_body": True})
        self.events.add("sse streaming")
        await lifecycle.current_token().wait_async()
        await send({"type": "http.response.body", "body": b"data: bye\n\n"})
        self.events.add("sse ended")

    async def websocket(self, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.events.add("ws open")
        while True:  # ignores its token: uvicorn's close (1012) ends it
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.events.add(f"ws disconnect {message.get('code')}")
                return
            await send({"type": "websocket.send", "text": message.get("text", "")})


class Gate:
    """Depends on the server: while its stop waits, the server is draining, not stopped."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.open = threading.Event()

    async def stop(self, token: lifecycle.CancelToken) -> None:
        self.stopping.set()
        while not self.open.is_set():
            await asyncio.sleep(0.005)


def build(
    asgi: Any, *, stop_timeout: float = BOUND, gate: bool = False, **options: Any
) -> tuple[lifecycle.App, lifecycle.uvicorn.Server, Gate | None]:
    app = lifecycle.App("t", stop_timeout=stop_timeout, shutdown_timeout=3 * BOUND)
    options.setdefault("access_log", False)
    server = app.add(lifecycle.uvicorn.Server(asgi, "127.0.0.1", 0, **options), name="uv")
    g = app.add(Gate(), depends_on=[server]) if gate else None
    return app, server, g


# -- a raw HTTP/1.1 client -------------------------------------------------------------


class Client:
    """One keep-alive connection, read with bounded blocking calls."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def send(self, target: str) -> None:
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed before a response: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, body

    def get(self, target: str = "/") -> tuple[int, dict[str, str], bytes]:
        self.send(target)
        return self.response()

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            assert self._fill(), f"closed before {marker!r}: {self.buffer!r}"
        return self.buffer

    def at_eof(self) -> bool:
        """True once the server closed the connection (bounded by the socket timeout)."""
        while self._fill():
            pass
        return True


# -- serving and stopping ----------------------------------------------------------------


def test_serves_and_stops_clean(run):
    """A real uvicorn serves through lifecycle and a stop with nothing in flight exits OK."""
    asgi = TestApp()
    app, server, _ = build(asgi)
    run.start(app)
    client = Client(server.port)
    try:
        status, headers, body = client.get("/")
    finally:
        client.close()
    assert (status, body) == (200, b"hello")
    assert headers["server"] == "uvicorn"
    assert "date" in headers
    assert "connection" not in headers
    assert run.stop() == ExitCode.OK


def test_keep_alive_client_sees_connection_close_during_the_drain(run):
    """During the drain the server still serves, and says Connection: close, then closes."""
    app, server, gate = build(TestApp(), gate=True)
    assert gate is not None
    run.start(app)
    client = Client(server.port)
    try:
        before = client.get("/")
        stopping = run.stop_soon()
        assert gate.stopping.wait(BOUND)
        assert server.middleware.draining
        during = client.get("/")  # the same keep-alive connection
        closed = client.at_eof()
        fresh = Client(server.port)  # still accepting during the drain
        try:
            fresh_answer = fresh.get("/")
        finally:
            fresh.close()
        gate.open.set()
        code = stopping.result(BOUND)
    finally:
        client.close()
    assert before[0] == 200
    assert "connection" not in before[1]
    assert during[0] == 200
    assert during[1]["connection"] == "close"
    assert closed
    assert fresh_answer[1]["connection"] == "close"
    assert code == ExitCode.OK


def test_idle_keep_alive_is_closed_at_stop_and_a_busy_one_finishes(run):
    """At the stop an idle keep-alive connection is closed and a busy one gets its whole
    answer (with Connection: close): nothing is lost."""
    asgi = TestApp()
    app, server, _ = build(asgi)
    run.start(app)
    idle, busy = Client(server.port), Client(server.port)
    try:
        assert idle.get("/")[0] == 200
        busy.send("/slow")
        asgi.events.wait_for("slow entered")
        stopping = run.stop_soon()
        idle_closed = idle.at_eof()  # closed by the stop while the busy one still runs
        asgi.release.set()
        status, headers, body = busy.response()
        busy_closed = busy.at_eof()
        code = stopping.result(BOUND)
    finally:
        idle.close()
        busy.close()
    assert idle_closed
    assert (status, body, headers["connection"]) == (200, b"hello", "close")
    assert busy_closed
    assert code == ExitCode.OK


def test_a_new_connection_during_the_stop_is_refused(run):
    """Once the stop began, the listening socket is closed: a new connection is refused."""
    asgi = TestApp()
    app, server, _ = build(asgi)
    run.start(app)
    busy = Client(server.port)
    try:
        busy.send("/slow")
        asgi.events.wait_for("slow entered")
        stopping = run.stop_soon()
        deadline = time.monotonic() + BOUND
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            except ConnectionRefusedError:
                refused = True
            except ConnectionResetError:
                pass  # its handshake was under way as the socket closed: the kernel resets it
            except TimeoutError:
                pass  # its SYN came as the stop took in the queue: dropped; connect again
        asgi.release.set()
        assert busy.response()[0] == 200
        code = stopping.result(BOUND)
    finally:
        busy.close()
    assert refused
    assert code == ExitCode.OK


def test_a_connection_accepted_just_before_the_stop_gets_its_first_request_served(run):
    """A connection accepted just before the stop, silent until the listener closed, is not
    closed as idle: its first request, sent then, is served with Connection: close."""
    asgi = TestApp()
    app, server, _ = build(asgi)
    run.start(app)
    late = Client(server.port)  # accepted, no request yet
    try:
        stopping = run.stop_soon()
        deadline = time.monotonic() + BOUND
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            except ConnectionRefusedError:
                refused = True
            except ConnectionResetError:
                pass  # its handshake was under way as the socket closed: the kernel resets it
            except TimeoutError:
                pass  # its SYN came as the stop took in the queue: dropped; connect again
        status, headers, body = late.get("/")  # within FIRST_REQUEST_GRACE of its accept
        code = stopping.result(BOUND)
    finally:
        late.close()
    assert refused
    assert (status, body, headers["connection"]) == (200, b"hello", "close")
    assert code == ExitCode.OK


def test_sse_stream_watching_its_token_ends_cleanly_at_the_stop(run):
    """A streaming (SSE) handler that watches current_token() is asked to end at the stop,
    sends its last event and the stream ends: exit OK, long before the stop timeout."""
    asgi = TestApp()
    app, server, _ = build(asgi)
    run.start(app)
    client = Client(server.port)
    try:
        client.send("/sse")
        client.until(b"data: hello")
        asgi.events.wait_for("sse streaming")
        began = time.monotonic()
        stopping = run.stop_soon()
        data = client.until(b"0\r\n\r\n")  # the chunked body's end
        code = stopping.result(BOUND)
        took = time.monotonic() - began
    finally:
        client.close()
    assert b"data: bye" in data
    assert "sse ended" in asgi.events.seen
    assert code == ExitCode.OK
    assert took < BOUND / 2


def fastapi_sse_app(events: Events) -> Any:
    """A FastAPI app streaming server-sent events until its token is cancelled."""
    from fastapi import FastAPI  # noqa: PLC0415 - only this test needs it
    from fastapi.responses import StreamingResponse  # noqa: PLC0415

    api = FastAPI()

    @api.get("/sse")
    async def sse() -> StreamingResponse:
        # In the endpoint, not in the generator: Starlette streams from a task of its own.
        lifecycle.mark_long_lived()
        token = lifecycle.current_token()

        async def stream() -> Any:
            yield "data: hello\n\n"
            events.add("sse streaming")
            await token.wait_async()
            yield "data: bye\n\n"
            events.add("sse ended")

        return StreamingResponse(stream(), media_type="text/event-stream")

    return api


def test_fastapi_sse_stream_ends_cleanly_at_the_stop(run):
    """A FastAPI StreamingResponse whose endpoint marked it long-lived ends at the stop with
    its last event, exit OK, long before the stop timeout."""
    events = Events()
    app, server, _ = build(fastapi_sse_app(events))
    run.start(app)
    client = Client(server.port)
    try:
        client.send("/sse")
        client.until(b"data: hello")
        events.wait_for("sse streaming")
        began = time.monotonic()
        stopping = run.stop_soon()
        data = client.until(b"0\r\n\r\n")
        code = stopping.result(BOUND)
        took = time.monotonic() - began
    finally:
        client.close()
    assert b"data: bye" in data
    assert code == ExitCode.OK
    assert took < BOUND / 2


def fastapi_marking_generator_app(events: Events) -> Any:
    """A FastAPI app whose StreamingResponse generator marks itself long-lived.

    Starlette iterates the body in a task of its own (uvicorn says ASGI
    spec_version 2.3): the mark is made from that task's context, a copy of
    the request's.
    """
    from fastapi import FastAPI  # noqa: PLC0415 - only this test needs it
    from fastapi.responses import StreamingResponse  # noqa: PLC0415

    api = FastAPI()

    @api.get("/sse")
    async def sse() -> StreamingResponse:
        async def stream() -> Any:
            marked = lifecycle.mark_long_lived()
            events.add(f"marked {marked}")
            yield "data: hello\n\n"
            events.add("sse streaming")
            await lifecycle.current_token().wait_async()
            yield "data: bye\n\n"
            events.add("sse ended")

        return StreamingResponse(stream(), media_type="text/event-stream")

    return api


def test_fastapi_stream_marked_inside_its_generator_is_ended_through_its_token(run):
    """mark_long_lived() called inside a StreamingResponse generator marks the request:
    the stop cancels the generator's token (it sends its last event) instead of waiting
    for the stream until the stop timeout, and the exit is OK."""
    events = Events()
    app, server, _ = build(fastapi_marking_generator_app(events), stop_timeout=BOUND)
    run.start(app)
    client = Client(server.port)
    try:
        client.send("/sse")
        client.until(b"data: hello")
        events.wait_for("sse streaming")
        began = time.monotonic()
        stopping = run.stop_soon()
        data = client.until(b"0\r\n\r\n")
        code = stopping.result(BOUND)
        took = time.monotonic() - began
    finally:
        client.close()
    assert "marked True" in events.seen
    assert b"data: bye" in data
    assert "sse ended" in events.seen
    assert code == ExitCode.OK
    assert took < BOUND / 2


def test_websocket_is_closed_with_1012_at_the_stop(run):
    """An open websocket whose handler ignores its token is closed by the stop with code
    1012 (service restart); the app sees the disconnect; exit OK."""
    asgi = TestApp()
    app, server, _ = build(asgi)
    run.start(app)
    with websockets.sync.client.connect(
        f"ws://127.0.0.1:{server.port}/ws", open_timeout=BOUND, close_timeout=BOUND
    ) as ws:
        ws.send("ping")
        assert ws.recv(timeout=BOUND) == "ping"
        stopping = run.stop_soon()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=BOUND)
    code = stopping.result(BOUND)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012
    asgi.events.wait_for("ws disconnect 1012")
    assert code == ExitCode.OK


def test_lifespan_startup_runs_in_start_and_shutdown_in_stop(run):
    """The app's lifespan startup has run when start returns; its shutdown runs in the stop."""
    asgi = TestApp()
    app, _, _ = build(asgi)
    run.start(app)
    assert asgi.events.seen == ["lifespan startup"]
    assert run.stop() == ExitCode.OK
    assert asgi.events.seen == ["lifespan startup", "lifespan shutdown"]


def test_stuck_handler_is_cut_within_the_budget_named_with_its_stack(run, log_events, caplog):
    """A handler that never ends: the stop cuts it before its deadline, names it, logs
    where it was stuck, still runs the lifespan shutdown, and the exit code is TIMEOUT.
    The cut is one ERROR entry: uvicorn logs no "Exception in ASGI application" for it."""
    caplog.set_level(logging.DEBUG, logger="uvicorn.error")
    asgi = TestApp()
    stop_timeout = 1.0
    app, server, _ = build(asgi, stop_timeout=stop_timeout)
    run.start(app)
    client = Client(server.port)
    try:
        client.send("/stuck")
        asgi.events.wait_for("stuck entered")
        began = time.monotonic()
        code = run.stop()
        took = time.monotonic() - began
        status = client.response()[0]  # uvicorn answers the cut request 500
    finally:
        client.close()
    assert code == ExitCode.TIMEOUT
    assert took < stop_timeout
    assert "lifespan shutdown" in asgi.events.seen
    assert status == 500
    info = app.components["uv"]
    assert isinstance(info.error, lifecycle.DeadlineExceeded)
    assert [c.split(" (")[0] for c in info.error.cut] == ["GET /stuck"]
    assert f"uvicorn:127.0.0.1:{server.port}" in str(info.error)
    cut = [e for e in log_events if e["event"] == "request cut at the stop deadline"]
    assert [e["request"] for e in cut] == ["GET /stuck"]
    assert cut[0]["log_level"] == "warning"  # the detail; the cut is the one ERROR entry
    assert "in __call__" in cut[0]["stack"]
    assert "asyncio.sleep(3600)" in cut[0]["stack"]
    errors = [e["event"] for e in log_events if e["log_level"] in ("error", "critical")]
    assert errors == ["work cut at the stop deadline"]
    tracebacks = [r for r in caplog.records if r.name == "uvicorn.error" and r.exc_info]
    assert [r.getMessage() for r in tracebacks] == []


# -- health paths on the traffic port ---------------------------------------------------


def test_health_paths_answer_on_the_traffic_port_and_readyz_turns_503_at_the_drain(run):
    """health_paths=True: /livez and /readyz answered on the traffic port, with the health
    endpoint's answers; /readyz 503 once shutdown is requested, /livez still 200."""
    app, server, gate = build(TestApp(), gate=True, health_paths=True)
    assert gate is not None
    run.start(app)
    client = Client(server.port)
    try:
        ready = client.get("/readyz")
        live = client.get("/livez")
        verbose = client.get("/readyz?verbose")
        stopping = run.stop_soon()
        assert gate.stopping.wait(BOUND)
        probe = Client(server.port)
        try:
            draining = probe.get("/readyz")
            live_draining = probe.get("/livez") if not probe.at_eof() else None
        finally:
            probe.close()
        gate.open.set()
        code = stopping.result(BOUND)
    finally:
        client.close()
    assert (ready[0], ready[2]) == (200, b"ok\n")
    assert (live[0], live[2]) == (200, b"ok\n")
    assert b"[+]component uv running" in verbose[2]
    assert draining[0] == 503
    assert draining[1]["connection"] == "close"
    assert live_draining is None  # the drain closed the probe's connection after its answer
    assert code == ExitCode.OK


def test_health_paths_answer_head_without_a_body_and_refuse_other_methods(run):
    """The traffic port's probes answer as the health endpoint does: HEAD gets the status
    and headers without a body, POST gets 405 naming the allowed methods."""
    app, server, _ = build(TestApp(), health_paths=True)
    run.start(app)
    client = Client(server.port)
    try:
        client.sock.sendall(b"HEAD /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        client.until(b"\r\n\r\n")
        head, client.buffer = client.buffer.split(b"\r\n\r\n", 1)
        client.sock.sendall(b"POST /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        post = client.response()
    finally:
        client.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert b"cache-control: no-store" in head.lower()
    assert client.buffer == b""  # no body after the HEAD answer
    assert post[0] == 405
    assert "GET" in post[1]["allow"]
    assert run.stop() == ExitCode.OK


def test_livez_stays_200_during_the_drain(run):
    """/livez on the traffic port answers 200 while the app drains."""
    app, server, gate = build(TestApp(), gate=True, health_paths=True)
    assert gate is not None
    run.start(app)
    stopping = run.stop_soon()
    assert gate.stopping.wait(BOUND)
    probe = Client(server.port)
    try:
        live = probe.get("/livez")
    finally:
        probe.close()
    gate.open.set()
    assert live[0] == 200
    assert stopping.result(BOUND) == ExitCode.OK


# -- bad input ---------------------------------------------------------------------------


def test_port_in_use_names_the_port_and_the_fix(run):
    """A port already in use fails the start with the port and the way out in the message."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        app = lifecycle.App("t")
        app.add(lifecycle.uvicorn.Server(TestApp(), "127.0.0.1", port), name="uv")
        with pytest.raises(lifecycle.StartupError) as raised:
            run.start(app)
    finally:
        taken.close()
    error = app.components["uv"].error
    assert isinstance(error, OSError)
    assert error.errno == errno.EADDRINUSE
    assert f"port {port} is in use" in str(error)
    assert "0 picks a free one" in str(error)
    assert raised.value.component == "uv"


@pytest.mark.parametrize(
    ("app", "words"),
    [
        ("main:app", "not an import string"),
        (TestApp, "got the class TestApp"),
        (42, "async callable"),
    ],
)
def test_not_an_asgi_app_is_refused_with_what_to_pass(app, words):
    """What cannot be an ASGI app object is refused at once, saying what to pass."""
    with pytest.raises(TypeError, match=words):
        lifecycle.uvicorn.Server(app)


@pytest.mark.parametrize("option", ["timeout_graceful_shutdown", "workers", "reload", "uds"])
def test_options_that_fight_the_stop_are_refused(option):
    """Options that would take the stop or the process away from lifecycle are refused."""
    options: dict[str, Any] = {option: 1}
    with pytest.raises(ValueError, match=option):
        lifecycle.uvicorn.Server(TestApp(), **options)


@pytest.mark.parametrize("interface", ["asgi2", "wsgi"])
def test_an_interface_other_than_asgi3_is_refused(interface):
    """The middleware uvicorn calls is an ASGI 3 app: another interface cannot serve it."""
    with pytest.raises(ValueError, match="ASGI 3"):
        lifecycle.uvicorn.Server(TestApp(), interface=interface)


def test_an_option_uvicorn_does_not_know_is_a_type_error():
    """An unknown option says it is not one of uvicorn.Config's."""
    with pytest.raises(TypeError, match=r"uvicorn\.Config"):
        lifecycle.uvicorn.Server(TestApp(), no_such_option=1)


def test_a_failed_lifespan_startup_fails_the_start(run):
    """An app whose lifespan startup fails fails the component's start, naming the cause."""

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    app = lifecycle.App("t")
    app.add(lifecycle.uvicorn.Server(failing, "127.0.0.1", 0), name="uv")
    with pytest.raises(lifecycle.StartupError):
        run.start(app)
    assert "lifespan startup failed" in str(app.components["uv"].error)


@pytest.mark.process
def test_without_uvicorn_the_import_error_names_the_extra():
    """Without uvicorn, importing lifecycle.uvicorn says which extra to install."""
    code = "import sys; sys.modules['uvicorn'] = None; import lifecycle.uvicorn"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=BOUND,
    )
    assert done.returncode == 1
    assert "ImportError: lifecycle.uvicorn needs uvicorn 0.30 or later" in done.stderr
    assert "pip install 'lifecycle[uvicorn]'" in done.stderr


def test_uvicorn_would_install_no_signal_handler():
    """The uvicorn.Server inside never installs signal handlers, even if serve() is called."""
    import uvicorn  # noqa: PLC0415 - the real package, as the integration uses it

    server = lifecycle.uvicorn._EmbeddedUvicorn(uvicorn.Config(TestApp(), log_config=None))
    before = signal.getsignal(signal.SIGTERM)
    with server.capture_signals():
        during = signal.getsignal(signal.SIGTERM)
    assert during is before
    assert signal.getsignal(signal.SIGTERM) is before


# -- real processes, real signals -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.process
@pytest.mark.parametrize("runner", RUNNERS)
def test_sigterm_in_a_child_process_exits_with_lifecycles_code(runner):
    """A child running lifecycle.uvicorn.Server gets SIGTERM: lifecycle's handler is the one
    installed while uvicorn serves, the exit code is lifecycle's (0, not -15: uvicorn
    raises no signal again), and the handlers found before the run are back after it."""
    port = _free_port()
    env = {**os.environ, "LC_RUNNER": runner, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/e2e/servers/lc_uvicorn.py"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            assert line, f"child ended early: {lines}"
            lines.append(line.strip())
            if "serving, SIGTERM handler" in line:
                break
        client = Client(port)
        try:
            assert client.get("/work?ms=1")[0] == 200
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=BOUND)
        lines += out.decode().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(BOUND)
    text = "\n".join(lines)
    assert proc.returncode == 0, text
    assert "SIGTERM handler SignalHandlers.install.<locals>.on_signal" in text, text
    assert "handle_exit" not in text
    assert "lc_uvicorn: handlers restored True" in text, text
    assert "stopped, exit code 0" in text, text


# -- more than one stop, and stop racing start ------------------------------------------------


def free_port() -> int:
    """A port no one listens on now (the kernel picked it; the server may bind it again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def refuses(port: int) -> bool:
    """True when a connection to ``port`` is refused (no listening socket there)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=BOUND).close()
    except ConnectionRefusedError:
        return True
    return False


def run_async(main: Any, loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """``main()`` on a fresh event loop (``loop`` if given), bounded."""

    async def bounded() -> Any:
        async with asyncio.timeout(3 * BOUND):
            return await main()

    factory = None if loop is None else (lambda: loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


async def until(holds: Any, what: str) -> None:
    """Let the loop run until ``holds()``, bounded by `BOUND` seconds."""
    deadline = time.monotonic() + BOUND
    while not holds():
        assert time.monotonic() < deadline, f"{what} did not happen"
        await asyncio.sleep(0)


async def send_async(port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def bare(asgi: Any, port: int = 0) -> lifecycle.uvicorn.Server:
    """A Server used without an App (started and stopped by the test)."""
    return lifecycle.uvicorn.Server(asgi, "127.0.0.1", port, access_log=False)


async def stop_waiting_for_work(server: lifecycle.uvicorn.Server, token: Any) -> asyncio.Task[Any]:
    """A stop task, once it has closed the listener and waits for the requests in flight."""
    stopping = asyncio.create_task(server.stop(token))
    await until(lambda: server.middleware._stopping, "the stop")
    return stopping


def test_a_second_stop_during_a_stop_waits_for_it_and_shares_its_cut():
    """Called while the first stop runs, a second waits for it and raises the same
    DeadlineExceeded once the first one's deadline cuts the stuck request."""
    asgi = TestApp()
    server = bare(asgi)

    async def main() -> Any:
        await server.start()
        _, writer = await send_async(server.port, "/stuck")
        await until(lambda: "stuck entered" in asgi.events.seen, "the request")
        source = lifecycle.CancelSource()
        first = await stop_waiting_for_work(server, source.token)
        second = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=BOUND).token))
        for _ in range(5):
            await asyncio.sleep(0)
        waited = (first.done(), second.done())
        source.cancel("deadline exceeded")  # the first stop's deadline, now
        await asyncio.wait([first, second], timeout=BOUND)
        writer.close()
        return waited, first.exception(), second.exception()

    waited, first, second = run_async(main)
    assert waited == (False, False)
    assert isinstance(first, lifecycle.DeadlineExceeded)
    assert [line.rsplit(" (", 1)[0] for line in first.cut] == ["GET /stuck"]
    assert second is first
    assert "lifespan shutdown" in asgi.events.seen


def test_a_second_stop_whose_deadline_comes_first_cuts_and_both_raise():
    """A second stop with an earlier deadline does not return with a request still running:
    the running stop cuts at its time and both raise the same DeadlineExceeded."""
    asgi = TestApp()
    server = bare(asgi)

    async def main() -> Any:
        await server.start()
        _, writer = await send_async(server.port, "/stuck")
        await until(lambda: "stuck entered" in asgi.events.seen, "the request")
        first = await stop_waiting_for_work(server, lifecycle.CancelSource().token)
        source = lifecycle.CancelSource()
        second = asyncio.create_task(server.stop(source.token))
        for _ in range(5):
            await asyncio.sleep(0)
        waited = second.done()
        source.cancel("deadline exceeded")  # the second stop's deadline, now
        await asyncio.wait([first, second], timeout=BOUND)
        writer.close()
        return waited, first.exception(), second.exception()

    waited, first, second = run_async(main)
    assert waited is False
    assert isinstance(second, lifecycle.DeadlineExceeded)
    assert first is second


@pytest.mark.parametrize("first_cut", [False, True])
def test_a_stop_after_a_finished_stop_returns_its_outcome_at_once(first_cut):
    """Once a stop returned (or raised), another returns (or raises the same) at once."""
    asgi = TestApp()
    server = bare(asgi)

    async def main() -> Any:
        await server.start()
        first_error = None
        writer = None
        if first_cut:
            _, writer = await send_async(server.port, "/stuck")
            await until(lambda: "stuck entered" in asgi.events.seen, "the request")
            source = lifecycle.CancelSource()
            first = await stop_waiting_for_work(server, source.token)
            source.cancel("deadline exceeded")
            await asyncio.wait([first], timeout=BOUND)
            first_error = first.exception()
        else:
            await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        again = server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        try:
            again.send(None)
        except StopIteration:
            outcome = None
        except BaseException as error:  # the outcome under test
            outcome = error
        else:
            again.close()
            raise AssertionError("the second stop waited instead of finishing at once")
        if writer is not None:
            writer.close()
        return first_error, outcome

    first_error, again = run_async(main)
    assert again is first_error
    assert (first_error is not None) == first_cut


def test_a_stop_before_start_leaves_the_port_closed_and_start_refuses():
    """A server stopped before it started never listens: start() raises, saying why,
    and the app's lifespan never starts."""
    port = free_port()
    asgi = TestApp()
    server = bare(asgi, port)

    async def main() -> Any:
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        with pytest.raises(RuntimeError, match="was stopped"):
            await server.start()
        return refuses(port), server.ready()

    assert run_async(main) == (True, False)
    assert asgi.events.seen == []


class PausingLoop(asyncio.SelectorEventLoop):
    """An event loop that holds the one iteration asyncio yields once the socket listens
    (``Server.start_serving``) until the test resumes it."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        server = await super().create_server(*args, **kwargs)
        serve = server.start_serving

        async def start_serving() -> None:
            await serve()
            self.paused.set()
            await asyncio.wait_for(self.resume.wait(), BOUND)

        server.start_serving = start_serving  # type: ignore[method-assign]
        return server


class HeldStartup(TestApp):
    """The lifespan startup waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.in_startup = asyncio.Event()
        self.release_startup = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            self.in_startup.set()
            await asyncio.wait_for(self.release_startup.wait(), BOUND)
            self.events.add("lifespan startup")
            await send({"type": "lifespan.startup.complete"})
            await receive()
            self.events.add("lifespan shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        await super().__call__(scope, receive, send)


@pytest.mark.parametrize("where", ["lifespan startup", "listening"])
def test_a_stop_during_start_leaves_nothing_listening(where):
    """stop() from another task while start() runs: once stop returns the port refuses,
    start() raises instead of returning, the lifespan that started is shut down, and a
    request that reached the socket while it listened is answered."""
    port = free_port()
    loop = PausingLoop()
    asgi = HeldStartup()
    server = bare(asgi, port)

    async def main() -> Any:
        if where == "listening":
            asgi.release_startup.set()
        starting = asyncio.create_task(server.start())
        early = None
        if where == "listening":
            await asyncio.wait_for(loop.paused.wait(), BOUND)
            early = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
            early.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        else:
            await asyncio.wait_for(asgi.in_startup.wait(), BOUND)
        stopping = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=BOUND).token))
        await asyncio.sleep(0)  # one loop iteration: the stop task takes its first step
        loop.resume.set()
        asgi.release_startup.set()
        await asyncio.wait_for(stopping, BOUND)
        refused = refuses(port)
        with pytest.raises(RuntimeError, match="was stopped"):
            await asyncio.wait_for(starting, BOUND)
        answered = None
        if early is not None:
            early.settimeout(BOUND)
            answered = early.recv(65536).split(b"\r\n", 1)[0]
            early.close()
        return refused, server.ready(), answered

    expected = None if where == "lifespan startup" else b"HTTP/1.1 200 OK"
    assert run_async(main, loop) == (True, False, expected)
    assert asgi.events.seen == ["lifespan startup", "lifespan shutdown"]
