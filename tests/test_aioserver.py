"""AsyncStreamServer: drain with Connection: close, refuse after stop, finish in-flight work.

Real sockets on 127.0.0.1. Requests are held in flight with events, never with
sleeps; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import socket
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

import lifecycle
from lifecycle._serving.aioserver import CUT_MARGIN, AsyncStreamServer
from lifecycle._serving.stopseq import FIRST_REQUEST_GRACE

BOUND = 10.0  # seconds: the bound of every wait on something that should happen at once

Route = Callable[[str, lifecycle.CancelToken], Awaitable[tuple[int, bytes]]]


# -- a minimal HTTP/1.1 keep-alive handler and client -------------------------------


def http_handler(get_server: Callable[[], AsyncStreamServer], route: Route):
    """A keep-alive HTTP/1.1 handler: one ``server.request()`` per request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_requests(get_server(), route, reader, writer, await reader.readline())

    return handle


async def serve_requests(
    server: AsyncStreamServer,
    route: Route,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    line: bytes,
) -> None:
    """Serve HTTP/1.1 requests from request line ``line`` on, until the connection closes."""
    while line:
        async with server.request(line.decode("latin-1").strip()) as token:
            while await reader.readline() not in (b"\r\n", b"\n", b""):
                pass  # headers: this handler needs none
            target = line.split()[1].decode("latin-1")
            status, body = await route(target, token)
            close = server.draining
            head = (
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                + ("Connection: close\r\n" if close else "")
                + "\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        if close:
            return
        line = await reader.readline()


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> Response:
    writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    return await read_response(reader)


async def read_response(reader: asyncio.StreamReader) -> Response:
    async with asyncio.timeout(BOUND):
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed with no response")
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
    return Response(int(status_line.split()[1]), headers, body)


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (bounded)."""
    async with asyncio.timeout(BOUND):
        return await reader.read() == b""


_clients: list[asyncio.StreamWriter] = []  # closed by run() at the end of each test


async def connect(server: AsyncStreamServer):
    reader, writer = await asyncio.open_connection(*server.address)
    _clients.append(writer)
    return reader, writer


class Held:
    """``/hold`` requests wait for ``release``; ``entered`` says one is in the handler."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.tokens: list[lifecycle.CancelToken] = []

    async def route(self, target: str, token: lifecycle.CancelToken) -> tuple[int, bytes]:
        self.tokens.append(lifecycle.current_token())
        if target.partition("?")[0] == "/hold":
            self.entered.set()
            await self.release.wait()
        return 200, b"ok"


class Gate:
    """A component that depends on the server: while its stop waits, the server drains."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.open = asyncio.Event()

    async def stop(self, token: lifecycle.CancelToken) -> None:
        self.stopping.set()
        await self.open.wait()


def watch_stop(server: AsyncStreamServer, waiting=None):
    """An event set when stop, with its listener closed, first waits for the work in flight."""
    waiting = asyncio.Event() if waiting is None else waiting
    original = server._ops.wait

    async def wait(*args, **kwargs):
        waiting.set()
        return await original(*args, **kwargs)

    server._ops.wait = wait  # type: ignore[method-assign]
    return waiting


def serve_http(route: Route, **kwargs) -> AsyncStreamServer:
    holder: list[AsyncStreamServer] = []
    server = AsyncStreamServer(http_handler(lambda: holder[0], route), **kwargs)
    holder.append(server)
    return server


async def start_in_app(server: AsyncStreamServer, **app_options) -> lifecycle.AsyncioRunner:
    """Run ``server`` as the component of a started app; return its runner."""
    app = lifecycle.App("t", **app_options)
    app.add(server)
    runner = lifecycle.AsyncioRunner(app, signals=None)
    await runner.start()
    return runner


async def start_watched(route: Route, **app_options):
    """Serve ``route`` in a started app; return the server, its runner and its stop watcher."""
    server = serve_http(route)
    waiting = watch_stop(server)
    return server, await start_in_app(server, **app_options), waiting


async def begin_stop(runner, waiting) -> asyncio.Task[int]:
    """Ask the runner to stop; return the stop task once the server's stop has begun."""
    stopping = asyncio.create_task(runner.stop("test"))
    await asyncio.wait_for(waiting.wait(), BOUND)
    return stopping


def run(main):
    async def bounded():
        try:
            async with asyncio.timeout(30):
                return await main()
        finally:
            for writer in _clients:
                writer.close()
            _clients.clear()

    return asyncio.run(bounded())


# -- basics ------------------------------------------------------------------------------


def test_port_zero_listens_on_an_ephemeral_port_and_is_ready():
    """start() with port 0 binds a free port; ready() is True until stop."""

    async def main():
        server = serve_http(Held().route)
        await server.start()
        assert server.port > 0
        assert server.address == ("127.0.0.1", server.port)
        assert server.ready() is True
        reader, writer = await connect(server)
        assert (await get(reader, writer, "/")).status == 200
        writer.close()
        await server.stop(lifecycle.CancelSource(timeout=5).token)
        assert server.ready() is False

    run(main)


def test_every_request_on_a_kept_alive_connection_is_an_arrival():
    """Each ``server.request()`` moves the tracker's last arrival, not only the connection."""

    async def main():
        server = serve_http(Held().route)
        await server.start()
        try:
            reader, writer = await connect(server)
            assert (await get(reader, writer, "/")).status == 200
            first = server.tracker.last_arrival
            assert first is not None
            assert (await get(reader, writer, "/")).status == 200  # the same connection
            second = server.tracker.last_arrival
            assert second is not None
            assert second > first
        finally:
            await server.stop(lifecycle.CancelSource(timeout=5).token)

    run(main)


def test_stop_returns_at_once_when_nothing_is_in_flight():
    """With idle keep-alive connections only, stop returns long before its deadline."""

    async def main():
        server = serve_http(Held().route, unit="request")
        await server.start()
        reader, writer = await connect(server)
        assert (await get(reader, writer, "/")).status == 200
        began = time.monotonic()
        await server.stop(lifecycle.CancelSource(timeout=10).token)
        assert time.monotonic() - began < 1.0
        assert await at_eof(reader)
        assert server.connections == 0

    run(main)


def test_address_before_start_raises():
    """The address of a server that has not started is an error that says what to do."""
    server = serve_http(Held().route)
    with pytest.raises(RuntimeError, match="before start"):
        _ = server.address


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"port": -1}, ValueError),
        ({"port": 70000}, ValueError),
        ({"backlog": 0}, ValueError),
        ({"unit": "stream"}, ValueError),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, error):
    """A bad port, backlog or unit is rejected at construction."""
    with pytest.raises(error):
        serve_http(Held().route, **kwargs)


def test_start_twice_raises():
    """A server starts once."""

    async def main():
        server = serve_http(Held().route)
        await server.start()
        try:
            with pytest.raises(RuntimeError, match="already started"):
                await server.start()
        finally:
            await server.stop(lifecycle.CancelSource(timeout=5).token)

    run(main)


def test_request_outside_a_handler_raises():
    """server.request() outside one of its connection handlers is an error."""
    server = serve_http(Held().route)
    with pytest.raises(RuntimeError, match="inside a connection handler"):
        server.request("GET /")


def test_a_raising_handler_is_logged_and_the_server_goes_on(log_events):
    """A handler's exception is logged with the peer; other connections are served."""

    async def main():
        async def handle(reader, writer):
            if await reader.readline() == b"boom\n":
                raise ValueError("boom")
            writer.write(b"fine\n")

        server = AsyncStreamServer(handle)
        await server.start()
        reader, writer = await connect(server)
        writer.write(b"boom\n")
        assert await at_eof(reader)
        reader, writer = await connect(server)
        writer.write(b"hello\n")
        assert await reader.readline() == b"fine\n"
        await server.stop(lifecycle.CancelSource(timeout=5).token)

    run(main)
    errors = [e for e in log_events if e["event"] == "connection handler raised"]
    assert len(errors) == 1
    assert errors[0]["peer"].startswith("127.0.0.1:")


# -- the drain ------------------------------------------------------------------------------


def test_during_drain_responses_say_close_and_new_connections_are_accepted():
    """Once shutdown is requested, every response says Connection: close; new clients are served."""

    async def main():
        held = Held()
        server = serve_http(held.route)
        gate = Gate()
        app = lifecycle.App("t")
        app.add(server, name="http")
        app.add(gate, depends_on=[server])
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        reader, writer = await connect(server)
        before = await get(reader, writer, "/")
        stopping = asyncio.create_task(runner.stop("test"))
        await asyncio.wait_for(gate.stopping.wait(), BOUND)
        assert server.draining is True
        assert app.ready is False
        during = await get(reader, writer, "/")  # same keep-alive connection
        assert await at_eof(reader)
        reader2, writer2 = await connect(server)  # a new connection during the drain
        fresh = await get(reader2, writer2, "/")
        assert await at_eof(reader2)
        gate.open.set()
        assert await asyncio.wait_for(stopping, BOUND) == lifecycle.ExitCode.OK
        assert (before.status, before.closes) == (200, False)
        assert (during.status, during.closes) == (200, True)
        assert (fresh.status, fresh.closes) == (200, True)

    run(main)


def test_current_token_carries_the_shutdown_deadline_once_shutdown_was_requested():
    """Before shutdown a request's token has no deadline; during the drain, the shutdown's."""

    async def main():
        held = Held()
        server = serve_http(held.route)
        gate = Gate()
        app = lifecycle.App("t", shutdown_timeout=20)
        app.add(server)
        app.add(gate, depends_on=[server])
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        reader, writer = await connect(server)
        await get(reader, writer, "/")
        stopping = asyncio.create_task(runner.stop("test"))
        await asyncio.wait_for(gate.stopping.wait(), BOUND)
        await get(reader, writer, "/")
        gate.open.set()
        await asyncio.wait_for(stopping, BOUND)
        before, during = held.tokens
        assert before.deadline is None
        assert app.shutdown_deadline is not None
        assert during.deadline is not None
        # A margin before the shutdown's cut, so that a handler working until it still answers.
        assert app.shutdown_deadline - 2 * CUT_MARGIN <= during.deadline < app.shutdown_deadline
        assert during.cancelled is True  # the request ended: its scope closed

    run(main)


# -- the stop ------------------------------------------------------------------------------


def test_in_flight_request_at_stop_finishes_with_connection_close():
    """A request in flight when stop begins is answered, with Connection: close."""

    async def main():
        held = Held()
        server, runner, waiting = await start_watched(held.route)
        reader, writer = await connect(server)
        writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(held.entered.wait(), BOUND)
        stopping = await begin_stop(runner, waiting)
        held.release.set()
        response = await read_response(reader)
        assert await at_eof(reader)
        assert await asyncio.wait_for(stopping, BOUND) == lifecycle.ExitCode.OK
        assert (response.status, response.body, response.closes) == (200, b"ok", True)

    run(main)


def test_after_stop_begins_new_connections_are_refused():
    """Once stop has closed the listening socket, the kernel refuses new connections."""

    async def main():
        held = Held()
        server, runner, waiting = await start_watched(held.route)
        reader, writer = await connect(server)
        writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(held.entered.wait(), BOUND)
        stopping = await begin_stop(runner, waiting)
        assert server.ready() is False
        with pytest.raises(ConnectionRefusedError):
            await connect(server)
        held.release.set()
        assert (await read_response(reader)).status == 200
        assert await asyncio.wait_for(stopping, BOUND) == lifecycle.ExitCode.OK

    run(main)


BACKLOG = 20  # connections queued in the kernel, fewer than the listen backlog (128)


def queue_in_backlog(server: AsyncStreamServer) -> list[socket.socket]:
    """Connect and send a request on BACKLOG sockets without yielding to the loop.

    The kernel completes every handshake itself (the listen backlog holds
    them); the loop, busy running this code, has accepted none of them.
    """
    clients = []
    for _ in range(BACKLOG):
        client = socket.create_connection(server.address, timeout=BOUND)
        client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        clients.append(client)
    return clients


async def outcomes(clients: list[socket.socket]) -> list[str]:
    """Per client: ``"200 close"`` for a response saying Connection: close, else what happened."""
    seen = []
    for client in clients:
        client.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=client)
        _clients.append(writer)
        try:
            response = await read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            seen.append(type(error).__name__)
        else:
            seen.append(f"{response.status} {'close' if response.closes else 'keep-alive'}")
    return seen


@pytest.mark.parametrize("when", ["before stop", "as stop begins"])
def test_connections_queued_in_the_kernel_backlog_are_served_at_stop(when):
    """Connections the kernel completed but the loop had not accepted are served, not reset."""

    async def main():
        server = serve_http(Held().route, unit="request")
        await server.start()
        token = lifecycle.CancelSource(timeout=BOUND).token
        if when == "before stop":
            clients = queue_in_backlog(server)
            await server.stop(token)
        else:
            stopping = asyncio.create_task(server.stop(token))
            await asyncio.sleep(0)  # the stop's first step runs, then the clients arrive
            clients = queue_in_backlog(server)
            await asyncio.wait_for(stopping, BOUND)
        return await outcomes(clients), server.tracker.total

    seen, total = run(main)
    assert seen == ["200 close"] * BACKLOG
    assert total == BACKLOG


def test_idle_keep_alive_connections_close_at_stop_while_mid_request_ones_finish():
    """At stop a request in flight is answered, and idle keep-alive connections are closed."""

    async def main():
        held = Held()
        server, runner, waiting = await start_watched(held.route, stop_timeout=10)
        idle_r, idle_w = await connect(server)
        assert (await get(idle_r, idle_w, "/")).closes is False  # now idle, keep-alive
        busy_r, busy_w = await connect(server)
        busy_w.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(held.entered.wait(), BOUND)
        began = time.monotonic()
        stopping = await begin_stop(runner, waiting)
        held.release.set()
        response = await read_response(busy_r)
        assert await at_eof(idle_r)  # ended by stop, not by its deadline
        assert await asyncio.wait_for(stopping, BOUND) == lifecycle.ExitCode.OK
        assert time.monotonic() - began < 2.0
        assert (response.status, response.closes) == (200, True)

    run(main)


def test_a_request_arriving_on_an_idle_connection_as_stop_begins_is_served():
    """An idle keep-alive connection whose next request is arriving is not closed: it is served."""

    async def main():
        server = serve_http(Held().route, unit="request")
        await server.start()
        client = socket.create_connection(server.address, timeout=BOUND)
        client.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=client)
        _clients.append(writer)
        assert (await get(reader, writer, "/")).closes is False  # now idle, kept alive
        client.send(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")  # in the kernel, unread
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)  # no yield before
        return await read_response(reader)

    late = run(main)
    assert (late.status, late.closes) == (200, True)


def test_a_request_arriving_after_stop_ended_the_streams_gets_a_live_token():
    """A first request on a connection accepted before the listener closed, arriving once
    stop has ended the long-lived requests, runs with a live token carrying the deadline."""

    async def main():
        seen: list[tuple[bool, str | None, float | None]] = []
        streaming, ended, may_end = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def route(target, token):
            if target == "/stream":
                lifecycle.mark_long_lived()
                streaming.set()
                await lifecycle.current_token().wait_async()
                ended.set()
                await may_end.wait()  # the stream takes a while to end
                return 200, b"bye"
            token = lifecycle.current_token()
            seen.append((token.cancelled, token.reason, token.deadline))
            return 200, b"ok"

        server = serve_http(route, unit="request")
        runner = await start_in_app(server, stop_timeout=BOUND)
        stream_r, stream_w = await connect(server)
        stream_w.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(streaming.wait(), BOUND)
        late_r, late_w = await connect(server)  # accepted; its first request comes later
        while server.connections < 2:
            await asyncio.sleep(0.001)
        stopping = asyncio.create_task(runner.stop("test"))
        await asyncio.wait_for(ended.wait(), BOUND)  # stop ended the stream's token
        late = await get(late_r, late_w, "/late")
        may_end.set()
        stream = await read_response(stream_r)
        code = await asyncio.wait_for(stopping, BOUND)
        return late, stream, code, seen

    late, stream, code, seen = run(main)
    assert (late.status, late.closes) == (200, True)
    assert (stream.status, stream.body) == (200, b"bye")
    assert code == lifecycle.ExitCode.OK
    assert [(cancelled, reason) for cancelled, reason, _ in seen] == [(False, None)]
    assert seen[0][2] is not None  # it learns when it would be cut


@pytest.mark.realtime
def test_unit_request_ends_connections_that_never_sent_a_request():
    """With unit="request" a silent connection holds stop up only for the first-request grace."""

    async def main():
        server = serve_http(Held().route, unit="request")
        await server.start()
        reader, _ = await connect(server)
        began = time.monotonic()
        await server.stop(lifecycle.CancelSource(timeout=10).token)
        spent = time.monotonic() - began
        return spent, await at_eof(reader)

    spent, closed = run(main)
    assert closed is True
    assert FIRST_REQUEST_GRACE * 0.9 <= spent < FIRST_REQUEST_GRACE + 1.0


def test_a_silent_connection_sending_its_first_request_within_the_grace_is_served():
    """A connection accepted just before stop, whose request comes soon after, is served."""

    async def main():
        server = serve_http(Held().route, unit="request")
        await server.start()
        reader, writer = await connect(server)
        while server.connections == 0:
            await asyncio.sleep(0.001)
        stopping = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=10).token))
        for _ in range(10):
            await asyncio.sleep(0)  # the stop closes what is idle and past its grace
        response = await get(reader, writer, "/")
        await asyncio.wait_for(stopping, BOUND)
        return response

    response = run(main)
    assert (response.status, response.closes) == (200, True)


def test_connection_unit_handler_is_waited_for_at_stop():
    """A handler that never marks requests is one unit of work: stop waits for it."""

    async def main():
        entered, release = asyncio.Event(), asyncio.Event()

        async def handle(reader, writer):
            await reader.readline()
            entered.set()
            await release.wait()
            writer.write(b"done\n")
            await writer.drain()

        server = AsyncStreamServer(handle)
        await server.start()
        waiting = watch_stop(server)
        reader, writer = await connect(server)
        writer.write(b"go\n")
        await asyncio.wait_for(entered.wait(), BOUND)
        stopping = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=10).token))
        await asyncio.wait_for(waiting.wait(), BOUND)
        assert not stopping.done()
        release.set()
        assert await asyncio.wait_for(reader.readline(), BOUND) == b"done\n"
        await asyncio.wait_for(stopping, BOUND)

    run(main)


def test_long_lived_request_token_is_cancelled_at_stop():
    """A long-lived stream is not waited for: its token is cancelled and it ends by itself."""

    async def main():
        streaming = asyncio.Event()
        seen: list[str | None] = []
        holder: list[AsyncStreamServer] = []

        async def handle(reader, writer):
            await reader.readline()
            async with holder[0].request("SUBSCRIBE news", long_lived=True) as token:
                assert lifecycle.current_token() is token
                streaming.set()
                await token.wait_async()
                seen.append(token.reason)
                writer.write(b"bye\n")
                await writer.drain()

        server = AsyncStreamServer(handle)
        holder.append(server)
        runner = await start_in_app(server)
        reader, writer = await connect(server)
        writer.write(b"SUBSCRIBE news\n")
        await asyncio.wait_for(streaming.wait(), BOUND)
        began = time.monotonic()
        assert await asyncio.wait_for(runner.stop("test"), BOUND) == lifecycle.ExitCode.OK
        assert time.monotonic() - began < 2.0  # not held until the stop deadline
        assert await asyncio.wait_for(reader.readline(), BOUND) == b"bye\n"
        assert seen == ["server stopping"]

    run(main)


@pytest.mark.realtime
def test_stuck_handler_is_cut_at_the_deadline_and_named_in_the_log(log_events):
    """A handler that ignores its token is cut just before the deadline and logged by name."""

    async def main():
        held = Held()
        server = serve_http(held.route)
        app = lifecycle.App("t", stop_timeout=0.5)
        app.add(server, name="http")
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        reader, writer = await connect(server)
        writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")  # never released
        await asyncio.wait_for(held.entered.wait(), BOUND)
        began = time.monotonic()
        code = await asyncio.wait_for(runner.stop("test"), BOUND)
        spent = time.monotonic() - began
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await read_response(reader)
        return code, spent

    code, spent = run(main)
    assert code == lifecycle.ExitCode.TIMEOUT  # cut within its bound, and the code says so
    assert 0.5 - 2 * CUT_MARGIN <= spent < 1.0
    cut = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert len(cut) == 1
    assert cut[0]["component"].startswith("tcp:127.0.0.1:")
    assert [line.split(" (")[0] for line in cut[0]["running"]] == ["GET /hold HTTP/1.1"]


# -- under the threaded runner ------------------------------------------------------------


def test_threaded_runner_serves_on_its_private_loop_and_finishes_in_flight_work():
    """Under ThreadedRunner the server runs on the private loop; stop finishes a held request."""
    entered, release = threading.Event(), threading.Event()

    async def route(target, token):
        if target == "/hold":
            entered.set()
            await asyncio.to_thread(release.wait, BOUND)
        return 200, b"ok"

    server = serve_http(route)
    waiting = watch_stop(server, threading.Event())
    app = lifecycle.App("t")
    app.add(server)
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    results: list[tuple[int, str | None]] = []

    def client():
        conn = http.client.HTTPConnection(*server.address, timeout=BOUND)
        conn.request("GET", "/hold")
        response = conn.getresponse()
        response.read()
        results.append((response.status, response.getheader("Connection")))
        conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    assert entered.wait(BOUND)
    codes: list[int] = []
    stopper = threading.Thread(target=lambda: codes.append(runner.stop("test")))
    stopper.start()
    assert waiting.wait(BOUND)  # the listener is closed, stop waits for the request
    assert app.ready is False
    release.set()
    thread.join(BOUND)
    stopper.join(BOUND)
    assert results == [(200, "close")]
    assert codes == [lifecycle.ExitCode.OK]
    assert server.connections == 0


# -- what a cut names ------------------------------------------------------------------


async def begin_cut_stop(server: AsyncStreamServer):
    """Start a stop with no deadline; return its task and the source whose cancel cuts at once."""
    waiting = watch_stop(server)
    source = lifecycle.CancelSource()
    stopping = asyncio.create_task(server.stop(source.token))
    await asyncio.wait_for(waiting.wait(), BOUND)
    return stopping, source


async def stop_cut(stopping: asyncio.Task[None], source: lifecycle.CancelSource) -> list[str]:
    """Cut the stop now (its token fires); return the labels of DeadlineExceeded.cut."""
    source.cancel("deadline exceeded")
    with pytest.raises(lifecycle.DeadlineExceeded) as raised:
        await asyncio.wait_for(stopping, BOUND)
    return [line.rsplit(" (", 1)[0] for line in raised.value.cut]


def test_a_cut_of_100_requests_names_all_100():
    """DeadlineExceeded.cut holds one line per cut request, however many there are."""
    count = 100

    async def main():
        held = Held()
        server = serve_http(held.route, unit="request")
        await server.start()
        for i in range(count):
            _, writer = await connect(server)
            writer.write(f"GET /hold?{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        await asyncio.wait_for(wait_for_tickets(server, count), BOUND)
        stopping, source = await begin_cut_stop(server)
        return await stop_cut(stopping, source)

    labels = run(main)
    assert sorted(labels) == sorted(f"GET /hold?{i} HTTP/1.1" for i in range(count))


async def wait_for_tickets(server: AsyncStreamServer, busy: int) -> None:
    """Until ``busy`` requests are in progress on the server."""
    while sum(not t.long_lived for t in server.tracker.running()) < busy:
        await asyncio.sleep(0.005)


def idle_handler(holder: list[AsyncStreamServer], greeted: asyncio.Event, route: Route):
    """A handler that is idle while it awaits something other than its reader (a greeting)."""
    never = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readline()
        if first == b"IDLE\n":
            greeted.set()
            await never.wait()  # idle, deaf to the close of its connection
            return
        await serve_requests(holder[0], route, reader, writer, first)

    return handle


def test_idle_connections_are_not_counted_as_cut_work():
    """At a cut, idle connections are closed but never named as cut requests."""

    async def main():
        held, greeted = Held(), asyncio.Event()
        holder: list[AsyncStreamServer] = []
        server = AsyncStreamServer(idle_handler(holder, greeted, held.route), unit="request")
        holder.append(server)
        await server.start()
        _, idle_w = await connect(server)
        idle_w.write(b"IDLE\n")
        await asyncio.wait_for(greeted.wait(), BOUND)
        _, busy_w = await connect(server)
        busy_w.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(held.entered.wait(), BOUND)
        stopping, source = await begin_cut_stop(server)
        labels = await stop_cut(stopping, source)
        return labels, server.connections

    labels, connections = run(main)
    assert labels == ["GET /hold HTTP/1.1"]
    assert connections == 0


def test_a_cut_that_ends_only_idle_connections_is_no_deadline_exceeded():
    """When only idle connections remain at the deadline, stop closes them and returns cleanly."""

    async def main():
        greeted = asyncio.Event()
        holder: list[AsyncStreamServer] = []
        server = AsyncStreamServer(idle_handler(holder, greeted, Held().route), unit="request")
        holder.append(server)
        await server.start()
        _, idle_w = await connect(server)
        idle_w.write(b"IDLE\n")
        await asyncio.wait_for(greeted.wait(), BOUND)
        stopping, source = await begin_cut_stop(server)
        source.cancel("deadline exceeded")
        await asyncio.wait_for(stopping, BOUND)
        return server.connections

    assert run(main) == 0


# -- stop racing start ---------------------------------------------------------------------


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


def tasks_left() -> list[asyncio.Task[object]]:
    """The tasks of the running loop other than the test's own."""
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


class PausingLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``create_server`` pauses at one of its real suspension points.

    ``"before bind"``: before it binds (where a host name is resolved);
    ``"listening"``: the one loop iteration asyncio yields once the socket
    listens (in ``create_server`` itself, or in ``Server.start_serving``), held
    open until the test resumes it.
    """

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def create_server(self, *args, **kwargs):
        if self.where == "before bind":
            await self._pause()
        server = await super().create_server(*args, **kwargs)
        if self.where == "listening":
            if kwargs.get("start_serving", True):
                await self._pause()
            else:
                serve = server.start_serving

                async def start_serving() -> None:
                    await serve()
                    await self._pause()

                server.start_serving = start_serving  # type: ignore[method-assign]
        return server

    async def _pause(self) -> None:
        self.paused.set()
        await asyncio.wait_for(self.resume.wait(), BOUND)


def run_on(loop: asyncio.AbstractEventLoop, main):
    """`run`, on ``loop``."""

    async def bounded():
        try:
            async with asyncio.timeout(30):
                return await main()
        finally:
            for writer in _clients:
                writer.close()
            _clients.clear()

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        return runner.run(bounded())


def test_a_stop_before_start_leaves_the_port_closed_and_start_refuses():
    """A server stopped before it started never listens: start() raises, saying why."""
    port = free_port()

    async def main():
        server = serve_http(Held().route, port=port)
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        with pytest.raises(RuntimeError, match="was stopped"):
            await server.start()
        return refuses(port), server.ready(), tasks_left()

    assert run(main) == (True, False, [])


@pytest.mark.parametrize("where", ["before bind", "listening"])
def test_a_stop_during_start_leaves_nothing_listening(where):
    """stop() from another task while start() binds: once stop returns the port refuses,
    no task of the server is left, start() raises instead of returning, and a request
    that reached the socket while it listened is answered."""
    port = free_port()
    loop = PausingLoop(where)

    async def main():
        server = serve_http(Held().route, port=port, unit="request")
        starting = asyncio.create_task(server.start())
        await asyncio.wait_for(loop.paused.wait(), BOUND)
        early = None
        if where == "listening":
            early = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
            early.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        stopping = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=BOUND).token))
        await asyncio.sleep(0)  # one loop iteration: the stop task takes its first step
        loop.resume.set()
        await asyncio.wait_for(stopping, BOUND)
        refused = refuses(port)
        with pytest.raises(RuntimeError, match="was stopped"):
            await asyncio.wait_for(starting, BOUND)
        answered = None if early is None else (await outcomes([early]))[0].split()[0]
        return refused, refuses(port), server.connections, tasks_left(), answered

    expected = None if where == "before bind" else "200"
    assert run_on(loop, main) == (True, True, 0, [], expected)


@pytest.mark.parametrize("where", ["before bind", "listening"])
def test_a_start_cancelled_midway_leaves_nothing_listening(where):
    """A start cancelled while it binds (a start timeout) leaves no listening socket behind."""
    port = free_port()
    loop = PausingLoop(where)

    async def main():
        server = serve_http(Held().route, port=port)
        starting = asyncio.create_task(server.start())
        await asyncio.wait_for(loop.paused.wait(), BOUND)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(starting, BOUND)
        return refuses(port), server.ready(), tasks_left()

    assert run_on(loop, main) == (True, False, [])


@pytest.mark.parametrize("action", ["stop", "cancel"])
def test_interrupting_start_at_any_step_leaves_nothing_listening(action):
    """Whatever loop iteration start() has reached (and with a client connecting at each),
    a stop leaves the port refusing with no connection or task left; so does a cancel
    that lands before start returned."""

    async def attempt(steps: int, port: int) -> tuple[bool, int, list[asyncio.Task[object]], bool]:
        server = serve_http(Held().route, port=port, unit="request")
        starting = asyncio.create_task(server.start())
        clients = []
        for _ in range(steps):
            try:  # the kernel completes it at once if the socket listens, or refuses it
                client = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
            except ConnectionRefusedError:
                pass
            else:
                client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                clients.append(client)
            await asyncio.sleep(0)  # one loop iteration: start takes its next step
        answered = True
        try:
            if action == "stop":
                await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
                refused = refuses(port)
                await asyncio.wait([starting], timeout=BOUND)
                # Zero loss: every request that reached the socket while it listened is answered.
                seen, clients = await outcomes(clients), []
                answered = all(outcome.startswith("200 ") for outcome in seen)
            else:
                cancelled = starting.cancel()
                await asyncio.wait([starting], timeout=BOUND)
                if not cancelled or not starting.cancelled():
                    await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
                refused = refuses(port)
            if not starting.cancelled():
                starting.exception()  # retrieved: a start that a stop pre-empted raises
            return refused, server.connections, tasks_left(), answered
        finally:
            for client in clients:
                client.close()

    async def main():
        return [await attempt(steps, free_port()) for steps in range(8)]

    assert run(main) == [(True, 0, [], True)] * 8


def test_a_second_stop_during_a_stop_waits_for_it_and_shares_its_cut():
    """A stop called while another runs returns with it, raising the same DeadlineExceeded;
    a stop called after it returns that outcome at once."""

    async def main():
        held = Held()
        server = serve_http(held.route, unit="request")
        await server.start()
        _, writer = await connect(server)
        writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(held.entered.wait(), BOUND)
        first, source = await begin_cut_stop(server)
        second = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=BOUND).token))
        for _ in range(5):
            await asyncio.sleep(0)
        waited = (first.done(), second.done())
        source.cancel("deadline exceeded")
        done, _ = await asyncio.wait([first, second], timeout=BOUND)
        errors = [task.exception() for task in (first, second)]
        later = server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        return waited, len(done), errors, finishes_at_once(later)

    waited, done, (first, second), later = run(main)
    assert waited == (False, False)
    assert done == 2
    assert isinstance(first, lifecycle.DeadlineExceeded)
    assert second is first
    assert later is first


def finishes_at_once(coro) -> BaseException | None:
    """Run ``coro`` one step: what it raised (None if it returned); fails if it waited."""
    try:
        coro.send(None)
    except StopIteration:
        return None
    except BaseException as error:  # the outcome under test
        return error
    coro.close()
    raise AssertionError(f"{coro!r} waited instead of finishing at once")


# -- mark_long_lived from a context copied out of a request -------------------------------


def script_handler(holder: list[AsyncStreamServer], script):
    """A handler that runs ``script(server, reader, writer)`` once, then answers ``done``."""

    async def handle(reader, writer):
        await reader.readline()
        await script(holder[0], reader, writer)
        writer.write(b"done\n")
        await writer.drain()

    return handle


def run_script(script, **kwargs):
    """Serve one connection with ``script``; return the server once the handler answered."""
    holder: list[AsyncStreamServer] = []
    server = AsyncStreamServer(script_handler(holder, script), **kwargs)
    holder.append(server)

    async def main():
        await server.start()
        reader, writer = await connect(server)
        writer.write(b"go\n")
        assert await asyncio.wait_for(reader.readline(), BOUND) == b"done\n"
        writer.close()
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        return server

    return run(main)


def work_of(server: AsyncStreamServer) -> tuple[int, int]:
    work = server._work()
    return work.ordinary, work.long_lived


def test_a_mark_from_a_copy_of_an_ended_request_does_not_mark_the_next_one():
    """The copy of request 1's context marks nothing once it ended: request 2 stays ordinary."""
    seen: list[object] = []

    async def script(server, reader, writer):
        with server.request("first"):
            copied = contextvars.copy_context()
        with server.request("second"):
            seen.append(copied.run(lifecycle.mark_long_lived))
            seen.append(work_of(server))
        seen.append(copied.run(lifecycle.mark_long_lived))  # between requests: none of its own
        seen.append(work_of(server))

    server = run_script(script)
    assert seen == [False, (1, 0), False, (0, 0)]
    assert server.tracker.total == 1


def test_a_mark_from_a_task_or_thread_during_the_request_marks_it():
    """During its request, a task it created or a thread it started marks that request."""
    seen: list[object] = []

    async def script(server, reader, writer):
        with server.request("task"):
            seen.append(await asyncio.create_task(mark_in_task()))
            seen.append(work_of(server))
        with server.request("thread"):
            seen.append(await asyncio.to_thread(lifecycle.mark_long_lived))
            seen.append(work_of(server))
        seen.append(work_of(server))

    async def mark_in_task() -> bool:
        return lifecycle.mark_long_lived()

    run_script(script)
    assert seen == [True, (0, 1), True, (0, 1), (0, 0)]


def test_a_mark_from_a_task_after_its_request_ended_returns_false():
    """A task begun in request 1 that marks once request 2 runs marks nothing."""
    seen: list[object] = []

    async def script(server, reader, writer):
        go = asyncio.Event()

        async def late() -> bool:
            await go.wait()
            return lifecycle.mark_long_lived()

        with server.request("first"):
            task = asyncio.create_task(late())
        with server.request("second"):
            go.set()
            seen.append(await asyncio.wait_for(task, BOUND))
            seen.append(work_of(server))

    run_script(script)
    assert seen == [False, (1, 0)]


def test_a_mark_from_a_copy_of_an_inner_request_leaves_the_outer_one_ordinary():
    """Nested blocks: the copy of the inner one marks nothing once it ended; the handler's own
    context then marks the outer one."""
    seen: list[object] = []

    async def script(server, reader, writer):
        with server.request("outer"):
            with server.request("inner"):
                copied = contextvars.copy_context()
            seen.append(copied.run(lifecycle.mark_long_lived))
            seen.append(work_of(server))
            seen.append(lifecycle.mark_long_lived())
            seen.append(work_of(server))

    run_script(script)
    assert seen == [False, (1, 0), True, (0, 1)]


def test_connection_unit_a_copy_marks_the_connection_only_while_it_is_open():
    """Connection mode: a copy marks the connection while its handler runs, nothing after."""
    seen: list[object] = []
    copies: list[contextvars.Context] = []

    async def script(server, reader, writer):
        copies.append(contextvars.copy_context())
        seen.append(work_of(server))

    server = run_script(script)
    assert seen == [(1, 0)]
    assert copies[0].run(lifecycle.mark_long_lived) is False  # the connection ended
    assert work_of(server) == (0, 0)
    assert server._streams == set()

    seen.clear()

    async def marks(server, reader, writer):
        seen.append(await asyncio.to_thread(lifecycle.mark_long_lived))
        seen.append(work_of(server))

    run_script(marks)
    assert seen == [True, (0, 1)]


def test_a_copy_made_before_the_first_request_marks_none_of_the_later_ones():
    """A copy of the handler's context from before any request block belongs to the
    connection unit, which the first block ended: it marks nothing."""
    seen: list[object] = []

    async def script(server, reader, writer):
        copied = contextvars.copy_context()
        with server.request("first"):
            seen.append(copied.run(lifecycle.mark_long_lived))
            seen.append(work_of(server))

    run_script(script)
    assert seen == [False, (1, 0)]


def test_a_request_begun_in_the_drain_delay_answers_before_the_stops_cut():
    """Begun during the drain delay (the shutdown's 30 s deadline), a request waiting on its
    token is cancelled a margin before the stop's cut (stop_timeout=1), answers, nothing cut."""
    answered: list[str | None] = []

    async def waits(target: str, token: lifecycle.CancelToken) -> tuple[int, bytes]:
        current = lifecycle.current_token()
        await current.wait_async(timeout=None)
        answered.append(current.reason)
        return 200, b"late"

    async def main():
        server = serve_http(waits)
        app = lifecycle.App("t", drain_delay=0.5, shutdown_timeout=30)
        app.add(server, stop_timeout=1.0)
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        app.request_shutdown("test")
        await asyncio.wait_for(app.shutdown_token.wait_async(), BOUND)
        reader, writer = await connect(server)
        response = await get(reader, writer, "/")
        return response, await asyncio.wait_for(runner.wait(), BOUND)

    response, code = run(main)
    assert response.status == 200
    assert answered == [lifecycle.DEADLINE_EXCEEDED]
    assert code == lifecycle.ExitCode.OK
