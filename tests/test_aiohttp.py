"""lifecycle.aiohttp.Server: a real aiohttp app on 127.0.0.1, both runners, a stop without loss.

Requests are held in flight with events, never with sleeps; every wait is
bounded. The clients are raw sockets (what a keep-alive client sees: the
``Connection`` header, the close) and aiohttp's own websocket client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import lifecycle
import lifecycle.aiohttp
from lifecycle import App, AsyncioRunner, ExitCode, ThreadedRunner
from lifecycle._core.tokens import _current
from lifecycle._serving.stopseq import CUT_MARGIN
from lifecycle.aiohttp import Server
from tests.test_aioserver_stop_load import RefillingQueue

BOUND = 10.0  # seconds: the bound of every wait on something that should happen at once
ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "e2e" / "servers" / "lc_aiohttp.py"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- running an app under either runner ----------------------------------------------


class Running:
    """An `App` holding one `Server`, run by a threaded or an asyncio runner.

    ``asyncio``: an `AsyncioRunner` in a dedicated event-loop thread;
    ``thread``: a `ThreadedRunner` (its aiohttp app runs on its loop thread).
    Every call is blocking and bounded, so the test thread plays the client.
    """

    def __init__(self, kind: str, app: App, server: Server) -> None:
        self.kind = kind
        self.app = app
        self.server = server
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.runner: ThreadedRunner | AsyncioRunner
        if kind == "asyncio":
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
            self.thread.start()
            self.runner = AsyncioRunner(app, signals=None)
        else:
            self.runner = ThreadedRunner(app, signals=None)

    def _call(self, fn: Callable[[], Any], timeout: float = BOUND) -> Any:
        if self.loop is None:
            return fn()

        async def body() -> Any:
            return await fn()

        return asyncio.run_coroutine_threadsafe(body(), self.loop).result(timeout)

    def start(self) -> None:
        self._call(self.runner.start)

    def stop(self, timeout: float = BOUND) -> int:
        return int(self._call(lambda: self.runner.stop("test"), timeout))

    def stop_soon(self) -> concurrent.futures.Future[int]:
        """Begin the stop in the background; the future holds the exit code."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(self.stop())
            except BaseException as error:
                future.set_exception(error)

        threading.Thread(target=run, daemon=True).start()
        return future

    def close(self) -> None:
        if self.runner.exit_code is None and self.runner.scheduler is not None:
            with contextlib.suppress(Exception):
                self.stop()
        if self.loop is not None and self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(BOUND)
            self.loop.close()


@pytest.fixture(params=["thread", "asyncio"])
def kind(request: pytest.FixtureRequest) -> str:
    """The runner under test (one test body, both runners)."""
    return str(request.param)


class Holder:
    """A component that depends on the server: while its stop is held, the server drains.

    The server stops after its dependents, so from the shutdown request until
    `release` the server is in its drain, as during a drain delay, without a
    clock in the test.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._open = threading.Event()

    def stop(self, token: lifecycle.CancelToken) -> None:
        self.stopping.set()
        self._open.wait(BOUND)

    def release(self) -> None:
        self._open.set()


@contextlib.contextmanager
def running(
    kind: str,
    web_app: web.Application,
    *,
    health_paths: bool = False,
    holder: Holder | None = None,
    **app_options: Any,
) -> Iterator[Running]:
    app = App("t", **app_options)
    server = Server(web_app, "127.0.0.1", 0, health_paths=health_paths, access_log=None)
    app.add(server, name="http")
    if holder is not None:
        app.add(holder, name="holder", depends_on=[server])
    run = Running(kind, app, server)
    try:
        run.start()
        yield run
    finally:
        if holder is not None:
            holder.release()
        run.close()


def begin_drain(run: Running, holder: Holder) -> None:
    """Request the shutdown; return once the server drains (its dependent's stop is held)."""
    run.app.request_shutdown("test")
    assert holder.stopping.wait(BOUND)
    assert run.server.draining is True


class Gate:
    """Held handlers: ``entered`` says one is in; `release` lets them all go (any thread)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._open = False
        self._lock = threading.Lock()

    async def wait(self) -> None:
        with self._lock:
            if self._event is None:
                self._loop = asyncio.get_running_loop()
                self._event = asyncio.Event()
                if self._open:
                    self._event.set()
            event = self._event
        self.entered.set()
        await event.wait()

    def release(self) -> None:
        with self._lock:
            self._open = True
            if self._event is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._event.set)


# -- a raw HTTP/1.1 keep-alive client ---------------------------------------------------


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class Client:
    """One keep-alive connection; reads Content-Length and chunked bodies."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(server.address, timeout=BOUND)
        self.file = self.sock.makefile("rb")

    def send(self, path: str) -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())

    def get(self, path: str) -> Response:
        self.send(path)
        return self.read()

    def read_head(self) -> tuple[int, dict[str, str]]:
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionError("closed with no response")
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def read_chunk(self) -> bytes:
        size = int(self.file.readline().strip(), 16)
        data = self.file.read(size)
        self.file.readline()
        return data

    def read(self) -> Response:
        status, headers = self.read_head()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while chunk := self.read_chunk():
                body += chunk
        else:
            body = self.file.read(int(headers.get("content-length", "0")))
        return Response(status, headers, body)

    def at_eof(self) -> bool:
        """True once the server closed the connection (bounded by the socket timeout)."""
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def clients() -> Iterator[Callable[[Server], Client]]:
    made: list[Client] = []

    def connect(server: Server) -> Client:
        client = Client(server)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def refused(server: Server) -> bool:
    try:
        socket.create_connection(server.address, timeout=BOUND).close()
    except ConnectionRefusedError:
        return True
    return False


def hello_app(**routes: Handler) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    application = web.Application()
    application.router.add_get("/", hello)
    for path, handler in routes.items():
        application.router.add_get(f"/{path}", handler)
    return application


# -- basics --------------------------------------------------------------------------------


def test_serves_under_the_runner_and_stops_with_exit_ok(kind, clients):
    """A real aiohttp app answers on its port; the handler sees a live current_token; stop is OK."""
    seen: list[lifecycle.CancelToken] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(lifecycle.current_token())
        return web.Response(text="t")

    with running(kind, hello_app(token=token)) as run:
        client = clients(run.server)
        assert client.get("/").body == b"hello"
        response = client.get("/token")
        assert (response.status, response.closes) == (200, False)
        assert run.server.ready() is True
        assert run.stop() == ExitCode.OK
        assert refused(run.server)
    assert len(seen) == 1
    assert seen[0].cancelled is True  # the server's token, released when it stopped


def test_handler_token_is_the_servers_not_the_start_phases(kind, clients):
    """current_token() in a handler is cancelled only by the cut, not when start ends."""
    seen: list[lifecycle.CancelToken] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(lifecycle.current_token())
        return web.Response(text="t")

    with running(kind, hello_app(token=token)) as run:
        clients(run.server).get("/token")
        assert seen[0].cancelled is False
        assert seen[0].deadline is None  # no shutdown requested yet: no deadline


def test_requests_in_progress_together_are_each_counted_once(kind, clients):
    """The server keys its record of a request by the payload writer aiohttp makes for each
    request: three held at once (two connections, and a keep-alive one after two requests
    on it) are three records, named by running(); a key shared by two would lose one."""
    writers: list[object] = []
    entered = threading.Condition()
    gate = Gate()

    async def hold(request: web.Request) -> web.Response:
        with entered:
            writers.append(request._payload_writer)
            entered.notify_all()
        await gate.wait()
        return web.Response(text="held")

    with running(kind, hello_app(hold=hold)) as run:
        first, second, third = clients(run.server), clients(run.server), clients(run.server)
        assert third.get("/").body == third.get("/").body == b"hello"
        for client in (first, second, third):
            client.send("/hold")
        with entered:
            assert entered.wait_for(lambda: len(writers) == 3, BOUND)
        try:
            assert len({id(writer) for writer in writers}) == 3
            assert run.server.in_flight == 3
            assert [line.split(" (")[0] for line in run.server.running()] == ["GET /hold"] * 3
        finally:
            gate.release()
        assert [client.read().body for client in (first, second, third)] == [b"held"] * 3
        assert run.server.in_flight == 0


def test_requests_get_the_servers_token_whatever_context_their_connection_came_from():
    """Before the drain, a request's token is the server's: on a connection the listener
    accepted under a start token, and on one made in a context holding another token."""
    seen: list[lifecycle.CancelToken] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(lifecycle.current_token())
        return web.Response(text="t")

    async def main() -> tuple[lifecycle.CancelToken, lifecycle.CancelToken]:
        server = Server(hello_app(token=token), "127.0.0.1", 0, access_log=None)
        starting = lifecycle.CancelSource()
        _current.set(starting.token)  # as a runner's start phase does
        await server.start(starting.token)
        starting.cancel("the start phase ended")
        elsewhere = lifecycle.CancelSource()
        elsewhere.cancel("not the server's")
        _current.set(elsewhere.token)
        ours, theirs = socket.socketpair()
        web_server = server._web_server
        assert web_server is not None
        await asyncio.get_running_loop().connect_accepted_socket(web_server, ours)
        for sock in (theirs, socket.create_connection(server.address, timeout=BOUND)):
            with sock:
                sock.sendall(b"GET /token HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert (await asyncio.to_thread(sock.recv, 4096)).startswith(b"HTTP/1.1 200")
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        return server._tokens.root, elsewhere.token

    root, elsewhere = asyncio.run(main())
    assert seen == [root, root]
    assert elsewhere not in seen


def test_a_non_application_is_refused_with_the_fix():
    """Passing anything but a web.Application raises TypeError saying what to pass."""
    with pytest.raises(
        TypeError, match=r"needs an aiohttp\.web\.Application.*web\.Application\(\)"
    ):
        Server(object())  # type: ignore[arg-type]
    runner = web.AppRunner(web.Application())
    with pytest.raises(TypeError, match="not its AppRunner"):
        Server(runner)  # type: ignore[arg-type]


def test_handle_signals_is_refused():
    """lifecycle owns the signals: handle_signals cannot be passed to the AppRunner."""
    with pytest.raises(ValueError, match="lifecycle owns SIGTERM"):
        Server(web.Application(), handle_signals=True)


def test_port_in_use_names_the_port_and_the_fix(kind):
    """A port already bound fails the start with an OSError naming it and the fix."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cleaned = threading.Event()

    async def cleanup(application: web.Application) -> None:
        cleaned.set()

    web_app = web.Application()
    web_app.on_cleanup.append(cleanup)
    app = App("t")
    server = app.add(Server(web_app, "127.0.0.1", port), name="http")
    run = Running(kind, app, server)
    try:
        with pytest.raises(lifecycle.StartupError) as raised:
            run.start()
        assert raised.value.component == "http"
        cause = run.app.components["http"].error
        assert isinstance(cause, OSError)
        assert cause.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{port}" in str(cause)
        assert "already in use" in str(cause)
        assert "port=0 picks a free one" in str(cause)
        assert cleaned.is_set()  # on_cleanup undid the startup
    finally:
        run.close()
        taken.close()


def test_aiohttp_missing_raises_import_error_naming_the_extra():
    """Without aiohttp, importing lifecycle.aiohttp says how to install it."""
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "try:\n    import lifecycle.aiohttp\n"
        "except ImportError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert "pip install 'lifecycle[aiohttp]'" in done.stdout, done.stderr


def test_health_paths_refuse_an_app_that_routes_them():
    """health_paths=True on an app that already routes /readyz raises, naming the way out."""
    web_app = web.Application()

    async def mine(request: web.Request) -> web.Response:
        return web.Response()

    web_app.router.add_get("/readyz", mine)
    with pytest.raises(ValueError, match="already routes /readyz"):
        Server(web_app, health_paths=True)


# -- the drain -----------------------------------------------------------------------------


def test_keep_alive_client_sees_connection_close_during_the_drain(kind, clients):
    """Once shutdown is requested, responses say Connection: close; new connections are served."""
    gate = Gate()

    async def hold(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="held")

    holder = Holder()
    with running(kind, hello_app(hold=hold), holder=holder) as run:
        early = clients(run.server)
        assert early.get("/").closes is False
        busy = clients(run.server)
        busy.send("/hold")  # in flight when the shutdown is requested
        assert gate.entered.wait(BOUND)
        begin_drain(run, holder)
        response = early.get("/")
        assert (response.status, response.closes) == (200, True)
        assert early.at_eof()  # aiohttp closes after a response that says so
        late = clients(run.server)  # still accepting during the drain
        assert late.get("/").closes is True
        missing = clients(run.server).get("/nowhere")  # a raised HTTPException too
        assert (missing.status, missing.closes) == (404, True)
        gate.release()
        held = busy.read()
        assert (held.body, held.closes) == (b"held", True)  # begun before, answered during


def test_a_stream_the_handler_prepares_during_the_drain_says_close(kind, clients):
    """A StreamResponse prepared by the handler after the drain began also says close."""
    gate = Gate()

    async def stream(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"part")
        await response.write_eof()
        return response

    holder = Holder()
    with running(kind, hello_app(stream=stream), holder=holder) as run:
        client = clients(run.server)
        client.send("/stream")
        assert gate.entered.wait(BOUND)
        begin_drain(run, holder)
        gate.release()
        response = client.read()
        assert (response.body, response.closes) == (b"part", True)


def test_health_paths_answer_like_the_health_server(kind, clients):
    """/readyz is 200 while running and 503 once shutdown is requested; /livez stays 200."""
    holder = Holder()
    with running(kind, hello_app(), health_paths=True, holder=holder) as run:
        assert clients(run.server).get("/readyz").status == 200
        verbose = clients(run.server).get("/readyz?verbose")
        assert b"readyz check passed" in verbose.body
        begin_drain(run, holder)
        readyz = clients(run.server).get("/readyz")
        assert (readyz.status, readyz.body, readyz.closes) == (503, b"not ready\n", True)
        livez = clients(run.server).get("/livez")
        assert (livez.status, livez.body) == (200, b"ok\n")


def test_health_paths_need_the_server_in_an_app():
    """health_paths=True without App.add fails the start, saying to add it."""
    server = Server(hello_app(), "127.0.0.1", 0, health_paths=True)

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"app\.add\(server\)"):
            await server.start()

    asyncio.run(main())


# -- the stop -------------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed_at_stop(kind, clients):
    """A keep-alive connection idle between requests is closed by the stop, which returns OK."""
    with running(kind, hello_app()) as run:
        client = clients(run.server)
        assert client.get("/").closes is False
        began = time.monotonic()
        assert run.stop() == ExitCode.OK
        assert time.monotonic() - began < 1.0  # not held by the idle connection
        assert client.at_eof()


def test_in_flight_request_finishes_and_on_shutdown_cleanup_run_in_order(kind, clients):
    """Stop: listener closed, on_shutdown, in-flight requests finish, then on_cleanup."""
    gate = Gate()
    order: list[str] = []
    holder: list[Server] = []

    async def hold(request: web.Request) -> web.Response:
        await gate.wait()
        order.append("request finished")
        return web.Response(text="held")

    async def on_shutdown(application: web.Application) -> None:
        order.append(f"on_shutdown (refused: {refused(holder[0])})")
        gate.release()

    async def on_cleanup(application: web.Application) -> None:
        order.append("on_cleanup")

    web_app = hello_app(hold=hold)
    web_app.on_shutdown.append(on_shutdown)
    web_app.on_cleanup.append(on_cleanup)
    with running(kind, web_app) as run:
        holder.append(run.server)
        client = clients(run.server)
        client.send("/hold")
        assert gate.entered.wait(BOUND)
        assert run.stop() == ExitCode.OK
        response = client.read()
        assert (response.body, response.closes) == (b"held", True)
    assert order == ["on_shutdown (refused: True)", "request finished", "on_cleanup"]


def test_a_first_request_arriving_during_the_stop_is_served_with_a_live_token(kind, clients):
    """A connection accepted before the listener closed, first request during the stop: served."""
    gate = Gate()
    stopping = threading.Event()
    seen: list[lifecycle.CancelToken] = []

    async def hold(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text="held")

    async def token(request: web.Request) -> web.Response:
        seen.append(lifecycle.current_token())
        return web.Response(text="t")

    async def on_shutdown(application: web.Application) -> None:
        stopping.set()  # the listener is closed: the stop is under way

    web_app = hello_app(hold=hold, token=token)
    web_app.on_shutdown.append(on_shutdown)
    with running(kind, web_app) as run:
        busy = clients(run.server)
        busy.send("/hold")  # keeps the stop waiting
        assert gate.entered.wait(BOUND)
        silent = clients(run.server)  # accepted, no request yet (within the first-request grace)
        code = run.stop_soon()
        assert stopping.wait(BOUND)
        response = silent.get("/token")
        assert (response.status, response.closes) == (200, True)
        assert seen[0].cancelled is False
        assert seen[0].deadline is not None  # it knows when it would be cut
        gate.release()
        assert busy.read().closes is True
        assert code.result(BOUND) == ExitCode.OK


def test_streaming_handler_watching_its_token_ends_at_stop(kind, clients):
    """A stream marked long-lived is not waited for: its token is cancelled and it ends."""
    streaming = threading.Event()
    ended: list[str | None] = []

    async def events(request: web.Request) -> web.StreamResponse:
        assert lifecycle.mark_long_lived() is True
        token = lifecycle.current_token()
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"tick\n")
        streaming.set()
        while not await token.wait_async(BOUND):
            await response.write(b"tick\n")
        ended.append(token.reason)
        await response.write(b"bye\n")
        await response.write_eof()
        return response

    with running(kind, hello_app(events=events), stop_timeout=BOUND) as run:
        client = clients(run.server)
        client.send("/events")
        assert client.read_head()[0] == 200
        assert client.read_chunk() == b"tick\n"
        assert streaming.wait(BOUND)
        began = time.monotonic()
        assert run.stop() == ExitCode.OK
        assert time.monotonic() - began < BOUND / 2  # ended by its token, not by the deadline
        assert client.read_chunk() == b"bye\n"
    assert ended == ["server stopping"]


def test_websocket_is_closed_with_1001_going_away(kind):
    """At stop, an open websocket gets a close frame with code 1001; its handler's token fires."""
    tokens: list[lifecycle.CancelToken] = []

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        tokens.append(lifecycle.current_token())
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        return ws

    with running(kind, hello_app(ws=ws_handler), stop_timeout=BOUND) as run:
        url = f"http://127.0.0.1:{run.server.port}/ws"
        connected = threading.Event()
        outcome: list[Any] = []

        async def client() -> None:
            async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
                await ws.send_str("hi")
                outcome.append((await ws.receive(timeout=BOUND)).data)
                connected.set()
                message = await ws.receive(timeout=BOUND)
                outcome.append((message.type, message.data, message.extra))

        thread = threading.Thread(target=lambda: asyncio.run(client()))
        thread.start()
        assert connected.wait(BOUND)
        began = time.monotonic()
        assert run.stop() == ExitCode.OK
        spent = time.monotonic() - began
        thread.join(BOUND)
    assert outcome[0] == "echo hi"
    assert outcome[1][:2] == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.GOING_AWAY)
    assert spent < BOUND / 2
    assert tokens[0].cancelled is True
    assert tokens[0].reason == "server stopping"


def test_stuck_handler_is_cut_within_the_budget_and_named(kind, clients, log_events):
    """A handler ignoring its token: stop ends in budget, TIMEOUT, the cut named with its stack."""
    cleaned = threading.Event()

    async def stuck_here(request: web.Request) -> web.Response:
        await asyncio.Event().wait()  # never set
        return web.Response()  # pragma: no cover

    order: list[str] = []

    async def on_shutdown(application: web.Application) -> None:
        order.append("on_shutdown")

    async def on_cleanup(application: web.Application) -> None:
        order.append("on_cleanup")
        cleaned.set()

    web_app = hello_app(stuck=stuck_here)
    web_app.on_shutdown.append(on_shutdown)
    web_app.on_cleanup.append(on_cleanup)
    with running(kind, web_app, stop_timeout=0.5) as run:
        client = clients(run.server)
        client.send("/stuck")
        deadline = time.monotonic() + BOUND
        while run.server.in_flight == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        began = time.monotonic()
        code = run.stop()
        spent = time.monotonic() - began
        assert code == ExitCode.TIMEOUT
        assert 0.5 - 2 * CUT_MARGIN <= spent < 1.0
        assert client.at_eof()  # its connection was closed
        info = run.app.components["http"]
        assert isinstance(info.error, lifecycle.DeadlineExceeded)
        assert [line.split(" (")[0] for line in info.error.cut] == ["GET /stuck"]
    assert cleaned.is_set()  # on_cleanup ran after the cut
    assert order == ["on_shutdown", "on_cleanup"]
    cut = [e for e in log_events if e["event"] == "request cut at the stop deadline"]
    assert len(cut) == 1
    assert cut[0]["request"].startswith("GET /stuck (")
    assert "stuck_here" in cut[0]["stack"]


def test_stop_by_hand_raises_deadline_exceeded_when_its_token_fires():
    """server.stop(token) outside an App: a token cancelled early cuts at once and raises."""

    async def main() -> list[str]:
        entered = asyncio.Event()

        async def stuck(request: web.Request) -> web.Response:
            entered.set()
            await asyncio.Event().wait()
            return web.Response()  # pragma: no cover

        server = Server(hello_app(stuck=stuck), "127.0.0.1", 0, access_log=None)
        await server.start()
        _, writer = await asyncio.open_connection(*server.address)
        writer.write(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(entered.wait(), BOUND)
        source = lifecycle.CancelSource()
        stopping = asyncio.create_task(server.stop(source.token))
        await asyncio.sleep(0)
        source.cancel("now")
        with pytest.raises(lifecycle.DeadlineExceeded) as raised:
            await asyncio.wait_for(stopping, BOUND)
        writer.close()
        return [line.split(" (")[0] for line in raised.value.cut]

    assert asyncio.run(main()) == ["GET /stuck"]


def test_a_hanging_on_shutdown_is_cancelled_and_the_stop_stays_in_budget(kind, log_events):
    """An on_shutdown receiver that never returns is cancelled at the cut time and logged."""

    async def forever(application: web.Application) -> None:
        await asyncio.Event().wait()

    web_app = hello_app()
    web_app.on_shutdown.append(forever)
    with running(kind, web_app, stop_timeout=0.5) as run:
        began = time.monotonic()
        code = run.stop()
        assert time.monotonic() - began < 1.0
    assert code == ExitCode.OK  # nothing was cut: no request was in flight
    stuck = [e for e in log_events if "on_shutdown did not finish" in e["event"]]
    assert len(stuck) == 1
    assert "forever" in stuck[0]["stack"]


def test_a_raising_on_cleanup_fails_the_stop(kind, log_events):
    """An on_cleanup that raises is logged with its stack and fails the component (exit FAILED)."""

    async def broken(application: web.Application) -> None:
        raise RuntimeError("pool already closed")

    web_app = hello_app()
    web_app.on_cleanup.append(broken)
    with running(kind, web_app) as run:
        assert run.stop() == ExitCode.FAILED
        error = run.app.components["http"].error
        assert isinstance(error, RuntimeError)
    assert any(e["event"] == "aiohttp on_cleanup raised" for e in log_events)


def test_connections_queued_in_the_backlog_are_served_at_stop(clients):
    """Connections the kernel completed before the listener closed are served, not reset."""

    async def main() -> list[int]:
        server = Server(hello_app(), "127.0.0.1", 0, access_log=None)
        await server.start()
        loop = asyncio.get_running_loop()
        listener = lifecycle.aiohttp._listener(server._site)  # type: ignore[arg-type]
        assert listener is not None
        for sock in listener.sockets:
            loop.remove_reader(sock.fileno())  # the loop stops accepting: they stay queued
        queued = []
        for _ in range(20):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(server.address)
            queued.append(sock)
        await asyncio.sleep(0.05)  # let the handshakes complete in the kernel
        for sock in queued:
            sock.setblocking(True)
            sock.settimeout(BOUND)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)

        def read_all() -> list[int]:
            statuses = []
            for sock in queued:
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                statuses.append(int(data.split()[1]) if data else 0)
                sock.close()
            return statuses

        return await asyncio.to_thread(read_all)

    assert asyncio.run(main()) == [200] * 20


def test_start_twice_raises():
    """A server starts once."""

    async def main() -> None:
        server = Server(hello_app(), "127.0.0.1", 0, access_log=None)
        await server.start()
        try:
            with pytest.raises(RuntimeError, match="already started"):
                await server.start()
        finally:
            await server.stop(lifecycle.CancelSource(timeout=BOUND).token)

    asyncio.run(main())


def test_the_take_in_is_capped_at_a_full_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue that never runs dry does not hold the listener open: the stop takes in
    ``backlog + 1`` connections (all Linux queues), closes the socket, then serves them."""
    queue = RefillingQueue(most=200)
    real_dup = asyncio.trsock.TransportSocket.dup  # type: ignore[attr-defined]

    def dup(sock: Any) -> Any:
        real_dup(sock).close()
        return queue

    async def main() -> tuple[int, list[bytes], bool]:
        server = Server(hello_app(), "127.0.0.1", 0, backlog=4, access_log=None)
        await server.start()
        monkeypatch.setattr(asyncio.trsock.TransportSocket, "dup", dup)  # type: ignore[attr-defined]
        try:
            await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        finally:
            monkeypatch.undo()
        answers = [peer.recv(4096) for peer in queue.peers]
        return len(queue.peers), answers, refused(server)

    try:
        taken, answers, was_refused = asyncio.run(main())
    finally:
        queue.release()
    assert taken == 5  # backlog + 1 taken in, not the 200 on offer
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers), answers
    assert was_refused


# -- one stop, however many calls; a stop racing the start --------------------------------


def stuck_app(entered: asyncio.Event) -> web.Application:
    """``GET /stuck``: sets ``entered``, then never returns (until cut)."""

    async def stuck(request: web.Request) -> web.Response:
        entered.set()
        await asyncio.Event().wait()
        return web.Response()  # pragma: no cover

    return hello_app(stuck=stuck)


def watch_stop(server: Server) -> asyncio.Event:
    """An event set when the stop, its listener closed, first waits for the work in flight."""
    waiting = asyncio.Event()
    original = server._ops.wait

    async def wait(*args: Any, **kwargs: Any) -> None:
        waiting.set()
        await original(*args, **kwargs)

    server._ops.wait = wait  # type: ignore[method-assign]
    return waiting


def finishes_at_once(coro: Any) -> BaseException | None:
    """Run ``coro`` one step: what it raised (None if it returned); fails if it waited."""
    try:
        coro.send(None)
    except StopIteration:
        return None
    except BaseException as error:  # the outcome under test
        return error
    coro.close()
    raise AssertionError(f"{coro!r} waited instead of finishing at once")


def test_a_second_stop_during_a_stop_waits_for_it_and_shares_its_cut():
    """A stop called while another runs returns with it, raising the same DeadlineExceeded;
    a stop called after it returns that outcome at once."""

    async def main() -> Any:
        entered = asyncio.Event()
        server = Server(stuck_app(entered), "127.0.0.1", 0, access_log=None)
        await server.start()
        _, writer = await asyncio.open_connection(*server.address)
        writer.write(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(entered.wait(), BOUND)
        waiting = watch_stop(server)
        source = lifecycle.CancelSource()
        first = asyncio.create_task(server.stop(source.token))
        await asyncio.wait_for(waiting.wait(), BOUND)
        second = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=BOUND).token))
        for _ in range(5):
            await asyncio.sleep(0)  # loop iterations: the second stop has begun waiting
        waited = (first.done(), second.done())
        source.cancel("deadline exceeded")
        done, _ = await asyncio.wait([first, second], timeout=BOUND)
        errors = [task.exception() for task in (first, second)]
        later = finishes_at_once(server.stop(lifecycle.CancelSource(timeout=BOUND).token))
        writer.close()
        return waited, len(done), errors, later

    waited, done, (first, second), later = asyncio.run(main())
    assert waited == (False, False)
    assert done == 2
    assert isinstance(first, lifecycle.DeadlineExceeded)
    assert [line.split(" (")[0] for line in first.cut] == ["GET /stuck"]
    assert second is first
    assert later is first


def test_a_second_stop_whose_deadline_comes_first_cuts_the_running_one():
    """A stop called during a stop with no deadline cuts it by its own deadline: both end."""

    async def main() -> list[BaseException | None]:
        entered = asyncio.Event()
        server = Server(stuck_app(entered), "127.0.0.1", 0, access_log=None)
        await server.start()
        _, writer = await asyncio.open_connection(*server.address)
        writer.write(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(entered.wait(), BOUND)
        waiting = watch_stop(server)
        first = asyncio.create_task(server.stop(lifecycle.CancelSource().token))
        await asyncio.wait_for(waiting.wait(), BOUND)
        source = lifecycle.CancelSource()
        second = asyncio.create_task(server.stop(source.token))
        for _ in range(5):
            await asyncio.sleep(0)
        source.cancel("its own deadline")
        done, _ = await asyncio.wait([first, second], timeout=BOUND)
        writer.close()
        assert len(done) == 2
        return [task.exception() for task in (first, second)]

    first, second = asyncio.run(main())
    assert isinstance(first, lifecycle.DeadlineExceeded)
    assert second is first


def test_a_stop_after_a_finished_stop_returns_its_outcome_at_once(log_events):
    """The error of an on_cleanup receiver is the outcome of every later stop too."""

    async def broken(application: web.Application) -> None:
        raise RuntimeError("pool already closed")

    async def main() -> tuple[BaseException | None, BaseException | None]:
        web_app = hello_app()
        web_app.on_cleanup.append(broken)
        server = Server(web_app, "127.0.0.1", 0, access_log=None)
        await server.start()
        try:
            await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        except RuntimeError as error:
            first: BaseException | None = error
        else:
            first = None
        return first, finishes_at_once(server.stop(lifecycle.CancelSource(timeout=BOUND).token))

    first, later = asyncio.run(main())
    assert isinstance(first, RuntimeError)
    assert later is first


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


def tasks_left() -> list[asyncio.Task[Any]]:
    """The tasks of the running loop other than the test's own."""
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_a_stop_before_start_leaves_the_port_closed_and_start_refuses():
    """A server stopped before it started never listens, nor runs on_startup: start() raises."""
    port = free_port()
    signals: list[str] = []

    async def startup(application: web.Application) -> None:
        signals.append("startup")

    async def main() -> tuple[bool, bool, list[asyncio.Task[Any]]]:
        web_app = hello_app()
        web_app.on_startup.append(startup)
        server = Server(web_app, "127.0.0.1", port, access_log=None)
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        with pytest.raises(RuntimeError, match="was stopped"):
            await server.start()
        return refuses(port), server.ready(), tasks_left()

    assert asyncio.run(main()) == (True, False, [])
    assert signals == []


class PausingLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``create_server`` pauses once the socket listens, until resumed."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        server = await super().create_server(*args, **kwargs)
        self.paused.set()
        await asyncio.wait_for(self.resume.wait(), BOUND)
        return server


@pytest.mark.parametrize("where", ["on_startup", "listening"])
def test_a_stop_during_start_leaves_nothing_listening(where):
    """stop() from another task while start() runs on_startup or listens: once stop returns
    the port refuses, no task is left, start() raises, on_cleanup ran after on_startup, and
    a request that reached the socket while it listened is answered."""
    port = free_port()
    loop = PausingLoop()
    startup_paused = asyncio.Event()
    signals: list[str] = []

    async def startup(application: web.Application) -> None:
        signals.append("startup")
        if where == "on_startup":
            startup_paused.set()
            await asyncio.wait_for(loop.resume.wait(), BOUND)

    async def cleanup(application: web.Application) -> None:
        signals.append("cleanup")

    async def main() -> tuple[bool, bool, list[asyncio.Task[Any]], str | None]:
        web_app = hello_app()
        web_app.on_startup.append(startup)
        web_app.on_cleanup.append(cleanup)
        server = Server(web_app, "127.0.0.1", port, access_log=None)
        starting = asyncio.create_task(server.start())
        paused = startup_paused if where == "on_startup" else loop.paused
        await asyncio.wait_for(paused.wait(), BOUND)
        early = None
        if where == "listening":
            early = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
            early.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        stopping = asyncio.create_task(server.stop(lifecycle.CancelSource(timeout=BOUND).token))
        await asyncio.sleep(0)  # one loop iteration: the stop task takes its first step
        loop.resume.set()
        await asyncio.wait_for(stopping, BOUND)
        refused_then = refuses(port)
        with pytest.raises(RuntimeError, match="was stopped"):
            await asyncio.wait_for(starting, BOUND)
        answered = None
        if early is not None:
            answer = await asyncio.to_thread(early.recv, 4096)
            answered = answer.split()[1].decode()
            early.close()
        return refused_then, refuses(port), tasks_left(), answered

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        outcome = runner.run(main())
    expected = None if where == "on_startup" else "200"
    assert outcome == (True, True, [], expected)
    assert signals == ["startup", "cleanup"]


def test_a_stop_that_gave_up_on_the_start_leaves_the_start_to_close_what_it_made():
    """A stop whose token fires while start() listens returns; the start then closes its
    socket, ends what it accepted, runs on_cleanup and raises."""
    port = free_port()
    loop = PausingLoop()
    signals: list[str] = []

    async def cleanup(application: web.Application) -> None:
        signals.append("cleanup")

    async def main() -> tuple[bool, bool, list[asyncio.Task[Any]], bytes]:
        web_app = hello_app()
        web_app.on_cleanup.append(cleanup)
        server = Server(web_app, "127.0.0.1", port, access_log=None)
        starting = asyncio.create_task(server.start())
        await asyncio.wait_for(loop.paused.wait(), BOUND)
        early = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        source = lifecycle.CancelSource()
        stopping = asyncio.create_task(server.stop(source.token))
        await asyncio.sleep(0)  # one loop iteration: the stop waits for the start
        source.cancel("the stop's deadline")
        await asyncio.wait_for(stopping, BOUND)
        stopped_first = not starting.done()
        loop.resume.set()
        with pytest.raises(RuntimeError, match="was stopped"):
            await asyncio.wait_for(starting, BOUND)
        ended = await asyncio.to_thread(early.recv, 4096)  # reset or closed: b"" either way
        early.close()
        return stopped_first, refuses(port), tasks_left(), ended

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        outcome = runner.run(main())
    assert outcome == (True, True, [], b"")
    assert signals == ["cleanup"]


# -- real child processes, real signals ---------------------------------------------------------


class Child:
    """The lc_aiohttp server in a child process; its output lines in a queue (bounded reads)."""

    def __init__(self, *args: str) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(self.port), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, marker: str) -> None:
        """Until the child prints a line holding ``marker`` (bounded)."""
        deadline = time.monotonic() + BOUND
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {marker!r} in {self.seen}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if marker in line:
                return

    def connect(self) -> socket.socket:
        """A connection to the child once it listens (retried while refused, bounded)."""
        deadline = time.monotonic() + BOUND
        pause = threading.Event()
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=BOUND)
            except ConnectionRefusedError:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, f"not listening: {self.output()}"
                pause.wait(0.02)

    def output(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return "".join(self.seen)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by PID: only the child this test started
        self.proc.wait(BOUND)
        self._reader.join(BOUND)  # it reads to the end of the child's output
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.process
@pytest.mark.parametrize("runner", ["thread", "asyncio"])
def test_sigterm_to_a_child_ends_with_exit_0(runner):
    """SIGTERM to a real process serving an aiohttp app: in-flight work finishes, exit 0."""
    child = Child("--drain-delay", "0.2", "--runner", runner)
    try:
        sock = child.connect()
        sock.sendall(b"GET /work?ms=300&tell=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        child.wait_for("work request entered")
        child.proc.send_signal(signal.SIGTERM)
        data = b""
        while b"done" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        sock.close()
        assert child.proc.wait(BOUND) == 0
    finally:
        child.close()
    assert data.startswith(b"HTTP/1.1 200"), child.output()
    assert b"Connection: close" in data, child.output()


@pytest.mark.process
def test_sigterm_with_a_stuck_handler_ends_with_exit_timeout():
    """SIGTERM with a handler that never returns: cut at the stop timeout, exit TIMEOUT (3)."""
    child = Child("--drain-delay", "0", "--stop-timeout", "0.5")
    try:
        sock = child.connect()
        sock.sendall(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
        child.wait_for("stuck request entered")
        began = time.monotonic()
        child.proc.send_signal(signal.SIGTERM)
        assert child.proc.wait(BOUND) == ExitCode.TIMEOUT
        assert time.monotonic() - began < 3.0
        sock.close()
    finally:
        child.close()
    assert "GET /stuck" in child.output()


@pytest.mark.realtime
def test_readyz_on_the_traffic_port_survives_a_blocking_ready(clients):
    """A component's ready() that blocks makes /readyz 503 within 1 s; the loop keeps serving."""
    unblock = threading.Event()

    class Stuck:
        def start(self, token: lifecycle.CancelToken) -> None:
            pass

        def ready(self) -> bool:
            unblock.wait(BOUND)
            return True

    app = App("t")
    server = app.add(Server(hello_app(), "127.0.0.1", 0, health_paths=True, access_log=None))
    app.add(Stuck(), name="stuck")
    run = Running("asyncio", app, server)
    try:
        run.start()
        began = time.monotonic()
        readyz = clients(server).get("/readyz?verbose")
        assert readyz.status == 503
        assert b"did not answer within 1s" in readyz.body
        assert time.monotonic() - began < 2.0
        assert clients(server).get("/").body == b"hello"  # the loop was never blocked
    finally:
        unblock.set()
        run.close()
