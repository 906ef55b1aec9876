"""ASGIMiddleware: Connection: close during the drain, tracking, tokens, and its stop.

Most tests call the middleware directly with scope/receive/send and a
hand-written ASGI app; one runs a real uvicorn server (skipped without it).
Requests are held with events; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from typing import Any

import pytest

import lifecycle
from lifecycle._serving.asgi import ASGIMiddleware

BOUND = 10.0


def http_scope(path="/x", method="GET", http_version="1.1"):
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": http_version,
        "method": method,
        "path": path,
        "headers": [],
    }


async def receive_nothing():
    return {"type": "http.request", "body": b"", "more_body": False}


class Sent:
    """An ASGI ``send`` that records what it is sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message):
        self.messages.append(message)

    @property
    def start(self):
        return next(m for m in self.messages if m["type"] == "http.response.start")


class Held:
    """A hand-written ASGI app: ``/hold`` waits for ``release``; it records its tokens."""

    def __init__(self, headers=()) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.headers = list(headers)
        self.tokens: list[lifecycle.CancelToken] = []

    async def __call__(self, scope, receive, send):
        self.tokens.append(lifecycle.current_token())
        if scope["path"] == "/hold":
            self.entered.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"ok"})


def watch_stop(mw, waiting=None):
    """An event set when stop first waits for the requests in flight (drain already on)."""
    waiting = asyncio.Event() if waiting is None else waiting
    original = mw.tracker.wait_idle_async

    async def wait_idle_async(*args, **kwargs):
        waiting.set()
        return await original(*args, **kwargs)

    mw.tracker.wait_idle_async = wait_idle_async
    return waiting


def run(main):
    async def bounded():
        async with asyncio.timeout(30):
            return await main()

    return asyncio.run(bounded())


def draining_app():
    app = lifecycle.App("t", shutdown_timeout=20)
    app.request_shutdown("test")
    return app


# -- pass-through and headers ------------------------------------------------------------


def test_lifespan_passes_through_untouched():
    """A lifespan scope reaches the app with the very same scope, receive and send."""
    seen = []

    async def inner(scope, receive, send):
        seen.append((scope, receive, send))

    async def receive():
        return {"type": "lifespan.startup"}

    send = Sent()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    run(lambda: ASGIMiddleware(inner)(scope, receive, send))
    assert seen == [(scope, receive, send)]


def test_before_shutdown_the_app_headers_are_kept():
    """While the app serves normally, responses are untouched."""
    app = lifecycle.App("t")
    sent = Sent()
    inner = Held(headers=[(b"content-type", b"text/plain")])
    run(lambda: ASGIMiddleware(inner, app)(http_scope(), receive_nothing, sent))
    assert sent.start["headers"] == [(b"content-type", b"text/plain")]


def test_during_drain_responses_say_connection_close():
    """Once shutdown is requested, connection: close replaces any Connection header of the app."""
    sent = Sent()
    inner = Held(headers=[(b"Connection", b"keep-alive"), (b"content-type", b"text/plain")])
    run(lambda: ASGIMiddleware(inner, draining_app())(http_scope(), receive_nothing, sent))
    assert sent.start["headers"] == [(b"content-type", b"text/plain"), (b"connection", b"close")]
    assert inner.headers == [(b"Connection", b"keep-alive"), (b"content-type", b"text/plain")]


def test_a_response_started_during_the_drain_says_close_even_if_the_request_began_before():
    """The header is decided when the response starts, not when the request arrived."""
    app = lifecycle.App("t")
    sent = Sent()
    inner = Held()

    async def main():
        call = asyncio.create_task(
            ASGIMiddleware(inner, app)(http_scope("/hold"), receive_nothing, sent)
        )
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        app.request_shutdown("test")
        inner.release.set()
        await asyncio.wait_for(call, BOUND)

    run(main)
    assert sent.start["headers"] == [(b"connection", b"close")]


def test_http2_responses_get_no_connection_header():
    """HTTP/2 forbids the Connection header: the server's GOAWAY does that job."""
    sent = Sent()
    run(
        lambda: ASGIMiddleware(Held(), draining_app())(
            http_scope(http_version="2"), receive_nothing, sent
        )
    )
    assert sent.start["headers"] == []


# -- tracking and tokens --------------------------------------------------------------------


def test_a_request_is_tracked_while_in_flight():
    """An HTTP request is one ticket, labelled with method and path, from call to return."""
    inner = Held()
    mw = ASGIMiddleware(inner, lifecycle.App("t"))

    async def main():
        call = asyncio.create_task(mw(http_scope("/hold", "POST"), receive_nothing, Sent()))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        during = [(t.label, t.long_lived) for t in mw.tracker.running()]
        inner.release.set()
        await asyncio.wait_for(call, BOUND)
        return during

    assert run(main) == [("POST /hold", False)]
    assert (mw.tracker.count, mw.tracker.total) == (0, 1)


def test_current_token_gets_the_shutdown_deadline_once_shutdown_was_requested():
    """Before shutdown a request's token has no deadline; once requested, the shutdown's."""
    app = lifecycle.App("t", shutdown_timeout=20)
    inner = Held()
    mw = ASGIMiddleware(inner, app)

    async def main():
        await mw(http_scope(), receive_nothing, Sent())
        app.request_shutdown("test")
        await mw(http_scope(), receive_nothing, Sent())

    run(main)
    before, during = inner.tokens
    assert (before.deadline, before.cancelled) == (None, False)
    assert app.shutdown_deadline is not None
    assert during.deadline == app.shutdown_deadline
    assert lifecycle.current_token() is not during  # reset after the call


# -- the stop ------------------------------------------------------------------------------------


def test_stop_returns_at_once_when_idle():
    """With nothing in flight, stop returns True long before its deadline."""
    mw = ASGIMiddleware(Held())
    began = time.monotonic()
    assert run(lambda: mw.stop(lifecycle.CancelSource(timeout=10).token)) is True
    assert time.monotonic() - began < 1.0


def test_stop_waits_for_in_flight_requests_which_answer_with_connection_close():
    """stop waits for an HTTP request in flight; its response says connection: close."""
    inner = Held()
    mw = ASGIMiddleware(inner)
    sent = Sent()

    async def main():
        waiting = watch_stop(mw)
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, sent))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        stopping = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=10).token))
        await asyncio.wait_for(waiting.wait(), BOUND)
        assert mw.draining is True
        assert not stopping.done()
        inner.release.set()
        await asyncio.wait_for(call, BOUND)
        return await asyncio.wait_for(stopping, BOUND)

    assert run(main) is True
    assert sent.start["headers"] == [(b"connection", b"close")]


def test_a_websocket_is_long_lived_and_its_token_is_cancelled_at_stop():
    """stop does not wait for a websocket: it cancels its token and the app closes it."""
    opened = asyncio.Event()  # replaced in the test's loop
    reasons = []

    async def ws_app(scope, receive, send):
        token = lifecycle.current_token()
        opened.set()
        await token.wait_async()
        reasons.append(token.reason)
        await send({"type": "websocket.close", "code": 1001})

    mw = ASGIMiddleware(ws_app)
    sent = Sent()

    async def main():
        nonlocal opened
        opened = asyncio.Event()
        scope = {"type": "websocket", "path": "/feed", "asgi": {"version": "3.0"}}
        call = asyncio.create_task(mw(scope, receive_nothing, sent))
        await asyncio.wait_for(opened.wait(), BOUND)
        tickets = [(t.label, t.long_lived) for t in mw.tracker.running()]
        began = time.monotonic()
        clean = await asyncio.wait_for(mw.stop(lifecycle.CancelSource(timeout=10).token), BOUND)
        await asyncio.wait_for(call, BOUND)
        return tickets, clean, time.monotonic() - began

    tickets, clean, spent = run(main)
    assert tickets == [("WS /feed", True)]
    assert clean is True
    assert spent < 2.0
    assert reasons == ["server stopping"]
    assert sent.messages == [{"type": "websocket.close", "code": 1001}]


@pytest.mark.realtime
def test_stop_cuts_a_stuck_request_at_the_deadline_and_logs_it(log_events):
    """A request that never ends is cancelled just before the deadline and named in the log."""
    inner = Held()
    mw = ASGIMiddleware(inner, name="api")

    async def main():
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, Sent()))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        began = time.monotonic()
        clean = await asyncio.wait_for(mw.stop(lifecycle.CancelSource(timeout=0.5).token), BOUND)
        spent = time.monotonic() - began
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, BOUND)
        return clean, spent

    clean, spent = run(main)
    assert clean is False
    assert 0.3 <= spent < 1.0
    cut = [e for e in log_events if e["event"] == "requests cut at the stop deadline"]
    assert [(e["component"], e["requests"]) for e in cut] == [("api", ["GET /hold"])]
    assert mw.tracker.count == 0


def test_as_a_component_under_the_asyncio_runner_stop_waits_for_requests():
    """Registered with app.add, the middleware is bound to the app and drains at its stop."""
    inner = Held()
    mw = ASGIMiddleware(inner)
    sent = Sent()

    async def main():
        app = lifecycle.App("t")
        app.add(mw, name="asgi")
        waiting = watch_stop(mw)
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, sent))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        stopping = asyncio.create_task(runner.stop("test"))
        await asyncio.wait_for(waiting.wait(), BOUND)
        assert mw.draining is True
        inner.release.set()
        await asyncio.wait_for(call, BOUND)
        return await asyncio.wait_for(stopping, BOUND)

    assert run(main) == lifecycle.ExitCode.OK
    assert sent.start["headers"] == [(b"connection", b"close")]


def test_under_the_threaded_runner_stop_waits_for_a_request_on_another_loop():
    """With ThreadedRunner, stop runs on the private loop and waits for a request on another."""
    inner_entered, release = threading.Event(), threading.Event()

    async def inner(scope, receive, send):
        inner_entered.set()
        await asyncio.to_thread(release.wait, BOUND)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ASGIMiddleware(inner)
    waiting = watch_stop(mw, threading.Event())
    app = lifecycle.App("t")
    app.add(mw)
    runner = lifecycle.ThreadedRunner(app, signals=None)
    runner.start()
    sent = Sent()
    client = threading.Thread(target=lambda: asyncio.run(mw(http_scope(), receive_nothing, sent)))
    client.start()
    assert inner_entered.wait(BOUND)
    codes: list[int] = []
    stopper = threading.Thread(target=lambda: codes.append(runner.stop("test")))
    stopper.start()
    assert waiting.wait(BOUND)  # stop waits while the request is held on the other loop
    assert stopper.is_alive()
    release.set()
    client.join(BOUND)
    stopper.join(BOUND)
    assert codes == [lifecycle.ExitCode.OK]
    assert sent.start["headers"] == [(b"connection", b"close")]


# -- with a real uvicorn ---------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("uvicorn") is None,
    reason="uvicorn is not installed (pip install 'lifecycle[uvicorn]')",
)
def test_uvicorn_with_the_middleware_says_connection_close_during_the_drain():
    """Real uvicorn with the middleware says Connection: close during the drain, then closes."""
    import uvicorn  # noqa: PLC0415 - optional

    class Uvicorn:
        """The shape of the coming uvicorn component: close listener, drain, let uvicorn close."""

        def __init__(self, mw):
            self.mw = mw
            config = uvicorn.Config(mw, host="127.0.0.1", port=0, lifespan="off", log_level="error")
            config.load()
            self.server = uvicorn.Server(config)
            self.server.lifespan = config.lifespan_class(config)
            self.port = 0

        async def start(self, token):
            await self.server.startup()
            self.port = self.server.servers[0].sockets[0].getsockname()[1]

        async def stop(self, token):
            for listener in self.server.servers:
                listener.close()
            await self.mw.stop(token)
            await self.server.shutdown()

    class Gate:
        def __init__(self):
            self.stopping = asyncio.Event()
            self.open = asyncio.Event()

        async def stop(self, token):
            self.stopping.set()
            await self.open.wait()

    async def request(reader, writer):
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers["content-length"]))
        return int(status.split()[1]), headers.get("connection")

    async def main():
        app = lifecycle.App("t")
        mw = ASGIMiddleware(Held(headers=[(b"content-length", b"2")]), app)
        server = app.add(Uvicorn(mw), name="uvicorn")
        gate = app.add(Gate(), depends_on=[server])
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            before = await request(reader, writer)
            stopping = asyncio.create_task(runner.stop("test"))
            await asyncio.wait_for(gate.stopping.wait(), BOUND)
            during = await request(reader, writer)  # the same keep-alive connection
            closed = await asyncio.wait_for(reader.read(), BOUND) == b""
            gate.open.set()
            code = await asyncio.wait_for(stopping, BOUND)
        finally:
            writer.close()
        return before, during, closed, code

    before, during, closed, code = run(main)
    assert before == (200, None)
    assert during == (200, "close")
    assert closed is True
    assert code == lifecycle.ExitCode.OK
