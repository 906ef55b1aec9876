"""ASGIMiddleware: Connection: close during the drain, tracking, tokens, and its stop.

Most tests call the middleware directly with scope/receive/send and a
hand-written ASGI app; one runs a real uvicorn server (skipped without it).
Requests are held with events; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import threading
import time
from typing import Any

import pytest

import lifecycle
from lifecycle._serving.aioserver import AsyncStreamServer
from lifecycle._serving.asgi import ASGIMiddleware
from lifecycle._serving.stopseq import CUT_MARGIN

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
    original = mw._ops.wait

    async def wait(*args, **kwargs):
        waiting.set()
        return await original(*args, **kwargs)

    mw._ops.wait = wait
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


def test_before_the_drain_every_request_shares_one_token():
    """No token is made per request: before the drain every request shares one, live."""
    seen = []

    async def inner(scope, receive, send):
        seen.append(lifecycle.current_token())

    mw = ASGIMiddleware(inner, lifecycle.App("t"))
    sent = Sent()

    async def main():
        await mw(http_scope(), receive_nothing, sent)
        await mw(http_scope(), receive_nothing, sent)

    run(main)
    token1, token2 = seen
    assert (token1 is token2, token1.cancelled, token1.deadline) == (True, False, None)


def test_a_request_begun_before_the_drain_that_answers_during_it_says_close():
    """The response of a request already in flight when the drain begins announces the close,
    so the client's next request on that keep-alive connection goes to a new connection."""
    app = lifecycle.App("t", shutdown_timeout=20)
    sent = Sent()
    inner = Held(headers=[(b"content-type", b"text/plain")])
    mw = ASGIMiddleware(inner, app)

    async def main():
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, sent))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        app.request_shutdown("test")
        assert app.shutdown_token.wait(BOUND)  # the drain has begun
        inner.release.set()
        await asyncio.wait_for(call, BOUND)

    run(main)
    assert sent.start["headers"] == [(b"content-type", b"text/plain"), (b"connection", b"close")]


def test_a_server_that_announces_the_close_gets_its_own_send_until_the_drain():
    """With ``_announce_close`` set (lifecycle.uvicorn), a request begun before the drain gets
    the server's own send, untouched, and the hook is called as the drain begins (the
    shutdown request, and again when the stop begins); a request begun during the drain
    still gets the close from the middleware."""
    app = lifecycle.App("t", shutdown_timeout=20)
    inner = Held(headers=[(b"content-type", b"text/plain")])
    mw = ASGIMiddleware(inner, app)
    announced: list[bool] = []
    mw._announce_close = lambda: announced.append(mw.draining)
    before, during = Sent(), Sent()
    passed: list[object] = []

    async def spy(scope, receive, send):
        passed.append(send)
        await inner(scope, receive, send)

    mw.asgi_app = spy

    async def main():
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, before))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        assert announced == []
        app.request_shutdown("test")
        assert app.shutdown_token.wait(BOUND)
        assert announced == [True]  # as the drain began, with the flag already set
        await mw(http_scope(), receive_nothing, during)
        inner.release.set()
        await asyncio.wait_for(call, BOUND)
        await asyncio.wait_for(mw.stop(), BOUND)

    run(main)
    assert passed[0] is before  # the server's own send: no call of ours per message
    assert passed[1] is not during
    assert before.start["headers"] == [(b"content-type", b"text/plain")]  # the server's part
    assert during.start["headers"] == [(b"content-type", b"text/plain"), (b"connection", b"close")]
    assert announced == [True, True]  # the stop's drain announces again


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
        during = [line.rsplit(" (", 1)[0] for line in mw.running()]
        inner.release.set()
        await asyncio.wait_for(call, BOUND)
        return during

    assert run(main) == ["POST /hold"]
    assert mw.in_flight == 0


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
    assert during.deadline is not None
    # A margin before the shutdown's cut, so that a handler working until it still answers.
    assert app.shutdown_deadline - 2 * CUT_MARGIN <= during.deadline < app.shutdown_deadline
    assert lifecycle.current_token() is not during  # reset after the call


# -- the stop ------------------------------------------------------------------------------------


def test_stop_returns_at_once_when_idle():
    """With nothing in flight, stop returns long before its deadline."""
    mw = ASGIMiddleware(Held())
    began = time.monotonic()
    run(lambda: mw.stop(lifecycle.CancelSource(timeout=10).token))
    assert time.monotonic() - began < 1.0


def test_stop_waits_for_in_flight_requests_which_answer_with_connection_close():
    """stop waits for an HTTP request in flight, which is answered."""
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
        await asyncio.wait_for(stopping, BOUND)

    run(main)
    assert sent.start["status"] == 200


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
        running = [line.rsplit(" (", 1)[0] for line in mw.running()]
        began = time.monotonic()
        await asyncio.wait_for(mw.stop(lifecycle.CancelSource(timeout=10).token), BOUND)
        await asyncio.wait_for(call, BOUND)
        return running, time.monotonic() - began

    running, spent = run(main)
    assert running == ["WS /feed"]
    assert spent < 2.0
    assert reasons == ["server stopping"]
    assert sent.messages == [{"type": "websocket.close", "code": 1001}]


@pytest.mark.realtime
def test_stop_cuts_a_stuck_request_before_the_deadline_and_raises_deadline_exceeded(log_events):
    """A request that never ends is cut before the deadline, logged by name, and stop raises."""
    inner = Held()
    mw = ASGIMiddleware(inner, name="api")

    async def main():
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, Sent()))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        token = lifecycle.CancelSource(timeout=0.5).token
        began = time.monotonic()
        with pytest.raises(lifecycle.DeadlineExceeded) as raised:
            await asyncio.wait_for(mw.stop(token), BOUND)
        ended = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, BOUND)
        assert token.deadline is not None
        return raised.value, ended - began, token.deadline - ended

    error, spent, early = run(main)
    assert [line.rsplit(" (", 1)[0] for line in error.cut] == ["GET /hold"]
    assert spent >= 0.3
    assert early > 0  # returned before its token's deadline: the runner never abandons it
    cut = [e for e in log_events if e["event"] == "work cut at the stop deadline"]
    assert [(e["component"], e["running"][0].rsplit(" (", 1)[0]) for e in cut] == [
        ("api", "GET /hold")
    ]
    assert mw.in_flight == 0


def test_a_stop_that_cuts_ends_with_exit_code_timeout():
    """Under the runner, a middleware that had to cut makes the exit code TIMEOUT, not OK."""
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        app = lifecycle.App("t", stop_timeout=0.3)
        app.add(mw, name="asgi")
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, Sent()))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        code = await asyncio.wait_for(runner.stop("test"), BOUND)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, BOUND)
        return code

    assert run(main) == lifecycle.ExitCode.TIMEOUT


def test_a_cut_of_100_requests_names_all_100():
    """DeadlineExceeded.cut holds one line per cut request, however many there are."""
    count = 100
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        calls = [
            asyncio.create_task(mw(http_scope("/hold", f"M{i}"), receive_nothing, Sent()))
            for i in range(count)
        ]
        while mw.in_flight < count:
            await asyncio.sleep(0.005)
        waiting = watch_stop(mw)
        source = lifecycle.CancelSource()
        stopping = asyncio.create_task(mw.stop(source.token))
        await asyncio.wait_for(waiting.wait(), BOUND)
        source.cancel("deadline exceeded")  # the deadline, now
        with pytest.raises(lifecycle.DeadlineExceeded) as raised:
            await asyncio.wait_for(stopping, BOUND)
        await asyncio.wait(calls, timeout=BOUND)
        return raised.value.cut

    cut = run(main)
    assert sorted(line.rsplit(" (", 1)[0] for line in cut) == sorted(
        f"M{i} /hold" for i in range(count)
    )


def test_a_request_arriving_while_stop_ends_a_websocket_gets_a_live_token():
    """A request that arrives after stop cancelled the websockets' tokens is served live."""
    closing, may_close = asyncio.Event(), asyncio.Event()  # replaced in the test's loop
    seen: list[tuple[bool, str | None]] = []

    async def inner(scope, receive, send):
        token = lifecycle.current_token()
        if scope["type"] == "websocket":
            await token.wait_async()
            closing.set()
            await may_close.wait()  # the websocket takes a while to close
            await send({"type": "websocket.close", "code": 1001})
            return
        seen.append((token.cancelled, token.reason))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ASGIMiddleware(inner)
    sent = Sent()

    async def main():
        nonlocal closing, may_close
        closing, may_close = asyncio.Event(), asyncio.Event()
        scope = {"type": "websocket", "path": "/feed", "asgi": {"version": "3.0"}}
        ws = asyncio.create_task(mw(scope, receive_nothing, Sent()))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        await asyncio.wait_for(closing.wait(), BOUND)
        await mw(http_scope(), receive_nothing, sent)  # on a still-open keep-alive connection
        may_close.set()
        await asyncio.wait_for(stopping, BOUND)
        await asyncio.wait_for(ws, BOUND)

    run(main)
    assert seen == [(False, None)]
    assert sent.start["headers"] == [(b"connection", b"close")]


def test_a_second_stop_waits_until_nothing_is_in_flight():
    """Called twice (by the server component and by the app), the second stop waits too."""
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, Sent()))
        await asyncio.wait_for(inner.entered.wait(), BOUND)
        first = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        second = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        for _ in range(5):
            await asyncio.sleep(0)
        waiting = (first.done(), second.done())
        inner.release.set()
        await asyncio.wait_for(asyncio.gather(call, first, second), BOUND)
        return waiting

    assert run(main) == (False, False)
    assert mw.in_flight == 0


def test_a_request_marked_long_lived_after_streams_ended_is_cancelled_at_once():
    """mark_long_lived() once stop asked the streams to end cancels the new stream's token."""
    seen = []
    ending, may_close = asyncio.Event(), asyncio.Event()  # replaced in the test's loop

    async def inner(scope, receive, send):
        token = lifecycle.current_token()
        if scope["type"] == "websocket":
            await token.wait_async()
            ending.set()
            await may_close.wait()  # the websocket takes a while to close
            return
        assert lifecycle.mark_long_lived() is True
        seen.append((token.cancelled, lifecycle.current_token().reason))

    mw = ASGIMiddleware(inner)

    async def main():
        nonlocal ending, may_close
        ending, may_close = asyncio.Event(), asyncio.Event()
        ws = asyncio.create_task(mw({"type": "websocket", "path": "/ws"}, receive_nothing, Sent()))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        await asyncio.wait_for(ending.wait(), BOUND)  # the streams were asked to end
        await mw(http_scope("/events"), receive_nothing, Sent())
        may_close.set()
        await asyncio.wait_for(asyncio.gather(ws, stopping), BOUND)

    run(main)
    assert seen == [(False, "server stopping")]  # born live, cancelled as it turned long-lived


def test_mark_long_lived_in_an_asgi_app_served_by_an_async_stream_server_marks_the_asgi_request():
    """Nested servers: mark_long_lived() marks the innermost request (the ASGI one)."""
    seen: list[Any] = []

    async def inner(scope, receive, send):
        seen.append(lifecycle.mark_long_lived())
        seen.append(mw._work())

    mw = ASGIMiddleware(inner)

    async def handle(reader, writer):
        await reader.readline()
        await mw(http_scope(), receive_nothing, Sent())
        seen.append(server._work())
        writer.write(b"done\n")

    server = AsyncStreamServer(handle)

    async def main():
        await server.start()
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"go\n")
        assert await asyncio.wait_for(reader.readline(), BOUND) == b"done\n"
        writer.close()
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)

    run(main)
    marked, asgi_work, stream_work = seen
    assert marked is True
    assert (asgi_work.ordinary, asgi_work.long_lived) == (0, 1)
    assert (stream_work.ordinary, stream_work.long_lived) == (1, 0)  # the connection unit


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
    assert sent.start["status"] == 200


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
    assert sent.start["status"] == 200


# -- with a real uvicorn ---------------------------------------------------------------------

needs_uvicorn = pytest.mark.skipif(
    importlib.util.find_spec("uvicorn") is None,
    reason="uvicorn is not installed (pip install 'lifecycle[uvicorn]')",
)


class Uvicorn:
    """The shape of the coming uvicorn component: close listener, drain, let uvicorn close."""

    def __init__(self, mw):
        import uvicorn  # noqa: PLC0415 - optional

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
        try:
            await self.mw.stop(token)
        finally:
            await self.server.shutdown()


class Gate:
    """A component that depends on the server: while its stop waits, the server drains."""

    def __init__(self):
        self.stopping = asyncio.Event()
        self.open = asyncio.Event()

    async def stop(self, token):
        self.stopping.set()
        await self.open.wait()


async def read_head(reader):
    """Status and headers of one HTTP/1.1 response (bounded)."""
    async with asyncio.timeout(BOUND):
        status = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status.split()[1]), headers


async def request(reader, writer, target="/x"):
    """GET ``target`` on a keep-alive connection: (status, its Connection header)."""
    writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await writer.drain()
    status, headers = await read_head(reader)
    await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), BOUND)
    return status, headers.get("connection")


@needs_uvicorn
def test_uvicorn_with_the_middleware_says_connection_close_during_the_drain():
    """Real uvicorn with the middleware says Connection: close during the drain, then closes."""

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


@needs_uvicorn
def test_uvicorn_a_request_arriving_while_stop_ends_a_stream_is_served_with_a_live_token():
    """Through uvicorn: while stop ends a long-lived stream, a request on a kept-alive
    connection is served with a live token and answered with Connection: close."""
    seen: list[tuple[bool, str | None]] = []
    ended, may_end = asyncio.Event(), asyncio.Event()  # replaced in the test's loop

    async def inner(scope, receive, send):
        if scope["path"] == "/stream":
            lifecycle.mark_long_lived()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await lifecycle.current_token().wait_async()
            ended.set()
            await may_end.wait()  # the stream takes a while to end
            await send({"type": "http.response.body", "body": b"bye\n"})
            return
        seen.append((lifecycle.current_token().cancelled, lifecycle.current_token().reason))
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        nonlocal ended, may_end
        ended, may_end = asyncio.Event(), asyncio.Event()
        app = lifecycle.App("t", stop_timeout=BOUND)
        mw = ASGIMiddleware(inner, app)
        server = app.add(Uvicorn(mw), name="uvicorn")
        runner = lifecycle.AsyncioRunner(app, signals=None)
        await runner.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        stream_r, stream_w = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            before = await request(reader, writer)
            stream_w.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            await stream_w.drain()
            await read_head(stream_r)
            stopping = asyncio.create_task(runner.stop("test"))
            await asyncio.wait_for(ended.wait(), BOUND)  # stop ended the stream's token
            during = await request(reader, writer)  # the kept-alive connection, still open
            may_end.set()
            code = await asyncio.wait_for(stopping, BOUND)
        finally:
            writer.close()
            stream_w.close()
        return before, during, code

    before, during, code = run(main)
    assert before == (200, None)
    assert during == (200, "close")
    assert seen == [(False, None), (False, None)]
    assert code == lifecycle.ExitCode.OK


# -- more than one stop, and what comes after the stop ---------------------------------------


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


async def hold_one(mw, inner):
    """A request held in the app; its task once the app has it."""
    call = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, Sent()))
    await asyncio.wait_for(inner.entered.wait(), BOUND)
    return call


async def begin_stop(mw, token):
    """A stop task, once it waits for the requests in flight."""
    waiting = watch_stop(mw)
    stopping = asyncio.create_task(mw.stop(token))
    await asyncio.wait_for(waiting.wait(), BOUND)
    return stopping


def test_a_second_stop_during_a_stop_that_cuts_raises_the_same_deadline_exceeded():
    """Called while the first stop runs, a second waits for it and raises what it raises."""
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        call = await hold_one(mw, inner)
        source = lifecycle.CancelSource()
        first = await begin_stop(mw, source.token)
        second = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        for _ in range(5):
            await asyncio.sleep(0)
        waited = (first.done(), second.done())
        source.cancel("deadline exceeded")  # the first stop's deadline, now
        await asyncio.wait([first, second, call], timeout=BOUND)
        return waited, first.exception(), second.exception()

    waited, first, second = run(main)
    assert waited == (False, False)
    assert isinstance(first, lifecycle.DeadlineExceeded)
    assert second is first


def test_a_second_stop_whose_deadline_comes_first_cuts_and_both_raise():
    """A second stop with an earlier deadline does not return with work still running:
    the running stop cuts at its time, and both raise DeadlineExceeded naming the cut."""
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        call = await hold_one(mw, inner)
        first = await begin_stop(mw, lifecycle.CancelSource(timeout=BOUND).token)
        source = lifecycle.CancelSource()
        second = asyncio.create_task(mw.stop(source.token))
        for _ in range(5):
            await asyncio.sleep(0)
        waited = second.done()
        source.cancel("deadline exceeded")  # the second stop's deadline, now
        await asyncio.wait([first, second], timeout=BOUND)
        return waited, first.exception(), second.exception(), call.done(), mw.in_flight

    waited, first, second, call_done, in_flight = run(main)
    assert waited is False
    assert isinstance(second, lifecycle.DeadlineExceeded)
    assert [line.rsplit(" (", 1)[0] for line in second.cut] == ["GET /hold"]
    assert first is second
    assert (call_done, in_flight) == (True, 0)


def test_a_second_stop_after_the_first_was_abandoned_raises_for_what_it_cut():
    """The first stop's task is cancelled (abandoned): it cuts; a stop waiting on it raises
    DeadlineExceeded for that cut instead of returning as if nothing had been lost."""
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        call = await hold_one(mw, inner)
        first = await begin_stop(mw, lifecycle.CancelSource(timeout=BOUND).token)
        second = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait([first, second, call], timeout=BOUND)
        return first.cancelled(), second.exception()

    abandoned, second = run(main)
    assert abandoned is True
    assert isinstance(second, lifecycle.DeadlineExceeded)
    assert [line.rsplit(" (", 1)[0] for line in second.cut] == ["GET /hold"]


def test_a_second_stop_abandoned_cuts_what_runs_and_the_first_raises():
    """A second stop whose task is cancelled (abandoned at its deadline) leaves nothing
    running, as an abandoned first stop does: the running stop cuts and raises."""
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        call = await hold_one(mw, inner)
        first = await begin_stop(mw, lifecycle.CancelSource().token)  # no deadline of its own
        second = asyncio.create_task(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        await asyncio.sleep(0)  # the second stop takes its first step and waits
        second.cancel()
        await asyncio.wait([first, second, call], timeout=BOUND)
        return second.cancelled(), first.exception(), call.done()

    abandoned, first, call_done = run(main)
    assert (abandoned, call_done) == (True, True)
    assert isinstance(first, lifecycle.DeadlineExceeded)
    assert [line.rsplit(" (", 1)[0] for line in first.cut] == ["GET /hold"]


@pytest.mark.parametrize("first_cut", [False, True])
def test_a_stop_after_a_finished_stop_returns_its_outcome_at_once(first_cut):
    """Once a stop returned (or raised), another returns (or raises the same) without
    waiting, even with a request begun after the first."""
    inner = Held()
    mw = ASGIMiddleware(inner)

    async def main():
        first_error = None
        if first_cut:
            call = await hold_one(mw, inner)
            source = lifecycle.CancelSource()
            first = await begin_stop(mw, source.token)
            source.cancel("deadline exceeded")
            await asyncio.wait([first, call], timeout=BOUND)
            first_error = first.exception()
            inner.entered.clear()
        else:
            await mw.stop(lifecycle.CancelSource(timeout=BOUND).token)
        late = asyncio.create_task(mw(http_scope("/hold"), receive_nothing, Sent()))
        await asyncio.sleep(0)  # the late request takes its first step
        again = finishes_at_once(mw.stop(lifecycle.CancelSource(timeout=BOUND).token))
        inner.release.set()
        await asyncio.wait_for(late, BOUND)
        return first_error, again

    first_error, again = run(main)
    assert again is first_error
    assert (first_error is not None) == first_cut


async def cut_stop(mw, inner):
    """A stop that cuts a held request; returns once it raised."""
    call = await hold_one(mw, inner)
    source = lifecycle.CancelSource()
    stopping = await begin_stop(mw, source.token)
    source.cancel("deadline exceeded")
    await asyncio.wait([stopping, call], timeout=BOUND)
    assert isinstance(stopping.exception(), lifecycle.DeadlineExceeded)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        (
            http_scope("/x"),
            [
                503,
                [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"56"),
                    (b"retry-after", b"0"),
                    (b"connection", b"close"),
                ],
            ],
        ),
        (
            http_scope("/x", http_version="2"),
            [
                503,
                [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"56"),
                    (b"retry-after", b"0"),
                ],
            ],
        ),
        ({"type": "websocket", "path": "/ws"}, [{"type": "websocket.close", "code": 1001}]),
    ],
    ids=["http/1.1", "http/2", "websocket"],
)
def test_after_a_stop_that_cut_requests_are_refused_without_calling_the_app(scope, expected):
    """Once the stop has cut, a request arriving on a connection the server has not closed
    yet gets a 503 saying where to go (a websocket: a close), never a cancelled token."""
    inner = Held()
    mw = ASGIMiddleware(inner, name="api")
    sent = Sent()

    async def main():
        await cut_stop(mw, inner)
        await asyncio.wait_for(mw(scope, receive_nothing, sent), BOUND)

    run(main)
    assert len(inner.tokens) == 1  # the request cut; the late one never reached the app
    if scope["type"] == "websocket":
        assert sent.messages == expected
    else:
        assert [sent.start["status"], sent.start["headers"]] == expected
        body = sent.messages[-1]["body"]
        said = b"'api' is stopping; send the request to another instance\n"
        assert (len(body), body) == (56, said)
    assert mw.in_flight == 0


def test_after_a_clean_stop_a_late_request_is_served_and_a_websocket_told_to_end():
    """The server closes its connections after the middleware's stop: a request arriving
    on one meanwhile is served with connection: close and a live token carrying the stop's
    deadline; a websocket's token is cancelled at once, so nothing waits on it."""
    seen: list[tuple[str, bool, str | None, float | None]] = []

    async def inner(scope, receive, send):
        token = lifecycle.current_token()
        seen.append((scope["type"], token.cancelled, token.reason, token.deadline))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    mw = ASGIMiddleware(inner)
    sent = Sent()
    stop_token = lifecycle.CancelSource(timeout=BOUND).token

    async def main():
        await mw.stop(stop_token)
        await asyncio.wait_for(mw(http_scope(), receive_nothing, sent), BOUND)
        await asyncio.wait_for(
            mw({"type": "websocket", "path": "/ws"}, receive_nothing, Sent()), BOUND
        )

    run(main)
    assert [(kind, cancelled, reason) for kind, cancelled, reason, _ in seen] == [
        ("http", False, None),
        ("websocket", True, "server stopping"),
    ]
    assert stop_token.deadline is not None
    for *_, deadline in seen:  # what the stop gives requests begun during it: before its cut
        assert deadline is not None
        assert stop_token.deadline - 2 * CUT_MARGIN <= deadline < stop_token.deadline
    assert (sent.start["status"], sent.start["headers"]) == (200, [(b"connection", b"close")])
    assert mw.in_flight == 0


def test_a_stop_before_lifespan_startup_lets_lifespan_through():
    """Stopped before the server ran its lifespan (a shutdown during startup), the middleware
    still passes lifespan through untouched, and later requests say connection: close."""
    lifespans = []

    async def inner(scope, receive, send):
        if scope["type"] == "lifespan":
            lifespans.append((await receive())["type"])
            await send({"type": "lifespan.startup.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive_startup():
        return {"type": "lifespan.startup"}

    mw = ASGIMiddleware(inner)
    sent, lifespan_sent = Sent(), Sent()

    async def main():
        await mw.stop(lifecycle.CancelSource(timeout=BOUND).token)
        await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, receive_startup, lifespan_sent)
        await mw(http_scope(), receive_nothing, sent)

    run(main)
    assert lifespans == ["lifespan.startup"]
    assert lifespan_sent.messages == [{"type": "lifespan.startup.complete"}]
    assert (sent.start["status"], sent.start["headers"]) == (200, [(b"connection", b"close")])


# -- mark_long_lived from a context copied out of a request -------------------------------


def test_a_mark_from_a_copy_of_an_ended_request_does_not_mark_the_next_one():
    """Requests served one after another in one context (as on a keep-alive connection):
    the copy of request 1's context marks nothing in request 2, and says so."""
    seen: list[Any] = []
    copies: list[Any] = []

    async def inner(scope, receive, send):
        if scope["path"] == "/first":
            copies.append(contextvars.copy_context())
        else:
            seen.append(copies[0].run(lifecycle.mark_long_lived))
            seen.append(mw._work())
        await send({"type": "http.response.start", "status": 200, "headers": []})

    mw = ASGIMiddleware(inner)

    async def main():
        await mw(http_scope("/first"), receive_nothing, Sent())
        await mw(http_scope("/second"), receive_nothing, Sent())
        seen.append(copies[0].run(lifecycle.mark_long_lived))  # between requests

    run(main)
    marked, work, later = seen
    assert marked is False
    assert (work.ordinary, work.long_lived) == (1, 0)
    assert later is False
    assert mw._long_lived == {}


def test_a_mark_from_a_task_or_thread_during_the_request_marks_it():
    """During its request, a task the app created or a thread it started marks that request."""
    seen: list[Any] = []

    async def mark_in_task() -> bool:
        return lifecycle.mark_long_lived()

    async def inner(scope, receive, send):
        if scope["path"] == "/task":
            seen.append(await asyncio.create_task(mark_in_task()))
        else:
            seen.append(await asyncio.to_thread(lifecycle.mark_long_lived))
        seen.append(mw._work())
        await send({"type": "http.response.start", "status": 200, "headers": []})

    mw = ASGIMiddleware(inner)

    async def main():
        await mw(http_scope("/task"), receive_nothing, Sent())
        await mw(http_scope("/thread"), receive_nothing, Sent())

    run(main)
    in_task, task_work, in_thread, thread_work = seen
    assert (in_task, in_thread) == (True, True)
    assert (task_work.ordinary, task_work.long_lived) == (0, 1)
    assert (thread_work.ordinary, thread_work.long_lived) == (0, 1)
    assert mw._long_lived == {}  # released as each request ended


def test_a_mark_from_a_thread_makes_the_request_s_own_token_current_in_the_request_too():
    """The request's context holds its record, not a token: once a thread it started marked
    it, current_token() in the request is the request's own token, which ending the
    long-lived requests cancels; a second mark, in either context, says True."""
    seen: dict[str, Any] = {}

    def mark_twice() -> tuple[bool, bool, lifecycle.CancelToken]:
        return lifecycle.mark_long_lived(), lifecycle.mark_long_lived(), lifecycle.current_token()

    async def inner(scope, receive, send):
        seen["before"] = lifecycle.current_token()
        seen["thread"] = await asyncio.to_thread(mark_twice)
        seen["after"] = lifecycle.current_token()
        seen["again"] = lifecycle.mark_long_lived()
        seen["work"] = mw._work()
        mw._end_long_lived(list(mw._long_lived.values()))
        seen["cancelled"] = await asyncio.to_thread(seen["after"].wait, BOUND)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    mw = ASGIMiddleware(inner)

    async def main():
        await mw(http_scope("/stream"), receive_nothing, Sent())

    run(main)
    first, second, in_thread = seen["thread"]
    assert (first, second, seen["again"]) == (True, True, True)
    assert seen["after"] is in_thread
    assert seen["after"] is not seen["before"]
    assert (seen["work"].ordinary, seen["work"].long_lived) == (0, 1)
    assert seen["cancelled"] is True
    assert mw._long_lived == {}


def test_a_copy_of_a_long_lived_request_s_context_keeps_its_own_token_once_it_ended():
    """A thread or copy outliving a websocket, or a request marked long-lived, keeps the
    request's own token, closed (cancelled) when the request ended: never a live one."""
    copies: dict[str, contextvars.Context] = {}

    async def inner(scope, receive, send):
        if scope["type"] == "websocket":
            copies["websocket"] = contextvars.copy_context()
            return
        copies["before the mark"] = contextvars.copy_context()
        assert lifecycle.mark_long_lived()
        copies["after the mark"] = contextvars.copy_context()

    mw = ASGIMiddleware(inner)

    async def main():
        await mw({"type": "websocket", "path": "/ws"}, receive_nothing, Sent())
        await mw(http_scope("/stream"), receive_nothing, Sent())

    run(main)
    for name, copy in copies.items():
        token = copy.run(lifecycle.current_token)
        assert token is not mw._tokens.root, name
        assert token.cancelled, name


def test_current_token_in_a_request_is_the_middleware_s_and_the_callers_after():
    """Outside any request current_token() is the caller's; inside, the middleware's shared
    token (the root before the drain), whatever the caller had made current."""
    seen: list[Any] = []

    async def inner(scope, receive, send):
        seen.append(lifecycle.current_token())

    mw = ASGIMiddleware(inner)
    outer = lifecycle.CancelSource().token

    async def main():
        with lifecycle.use_token(outer):
            await mw(http_scope(), receive_nothing, Sent())
            seen.append(lifecycle.current_token())

    run(main)
    assert seen == [mw._tokens.root, outer]


def test_a_mark_from_a_task_after_its_request_ended_returns_false():
    """A task begun in one request that marks while another request runs marks nothing."""
    seen: list[Any] = []
    late: list[asyncio.Task[bool]] = []
    go = threading.Event()  # set in request 2: the task of request 1 marks then

    async def mark_when_told() -> bool:
        await asyncio.to_thread(go.wait, BOUND)
        return lifecycle.mark_long_lived()

    async def inner(scope, receive, send):
        if scope["path"] == "/first":
            late.append(asyncio.create_task(mark_when_told()))
        else:
            go.set()
            seen.append(await asyncio.wait_for(late[0], BOUND))
            seen.append(mw._work())

    mw = ASGIMiddleware(inner)

    async def main():
        await mw(http_scope("/first"), receive_nothing, Sent())
        await mw(http_scope("/second"), receive_nothing, Sent())

    run(main)
    marked, work = seen
    assert marked is False
    assert (work.ordinary, work.long_lived) == (1, 0)


def test_after_an_asgi_call_in_a_stream_server_handler_its_request_is_the_handler_s_again():
    """Nested servers: once the ASGI call returned, a mark in the handler marks the
    AsyncStreamServer's connection, not the ended ASGI request."""
    seen: list[Any] = []

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    mw = ASGIMiddleware(inner)

    async def handle(reader, writer):
        await reader.readline()
        await mw(http_scope(), receive_nothing, Sent())
        seen.append(lifecycle.mark_long_lived())
        seen.append(server._work())
        writer.write(b"done\n")

    server = AsyncStreamServer(handle)

    async def main():
        await server.start()
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"go\n")
        assert await asyncio.wait_for(reader.readline(), BOUND) == b"done\n"
        writer.close()
        await server.stop(lifecycle.CancelSource(timeout=BOUND).token)

    run(main)
    marked, work = seen
    assert marked is True
    assert (work.ordinary, work.long_lived) == (0, 1)


def test_a_request_begun_in_the_drain_answers_before_the_stops_cut():
    """Begun once shutdown was requested (the shutdown's 30 s deadline), a request waiting on
    its token is cancelled a margin before the stop's cut (1 s), answers; stop returns."""
    app = lifecycle.App("t", shutdown_timeout=30)
    answered: list[str | None] = []
    entered = asyncio.Event()

    async def waits(scope, receive, send):
        token = lifecycle.current_token()
        entered.set()
        await token.wait_async(timeout=None)
        answered.append(token.reason)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late\n"})

    mw = ASGIMiddleware(waits, app)
    app.request_shutdown("test")
    sent = Sent()

    async def main():
        call = asyncio.create_task(mw(http_scope(), receive_nothing, sent))
        await asyncio.wait_for(entered.wait(), BOUND)
        await asyncio.wait_for(mw.stop(lifecycle.CancelSource(timeout=1.0).token), BOUND)
        await asyncio.wait_for(call, BOUND)

    run(main)
    assert sent.start["status"] == 200
    assert answered == [lifecycle.DEADLINE_EXCEEDED]


def test_setting_asgi_app_sends_the_next_requests_to_the_new_app():
    """``asgi_app`` is the app every request goes to; set, it takes the next ones."""

    def answering(body: bytes) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        return app

    first, second = answering(b"first"), answering(b"second")
    mw = ASGIMiddleware(first)
    assert mw.asgi_app is first

    async def body_of() -> bytes:
        sent = Sent()
        await mw(http_scope(), receive_nothing, sent)
        body: bytes = sent.messages[-1]["body"]
        return body

    assert asyncio.run(body_of()) == b"first"
    mw.asgi_app = second
    assert mw.asgi_app is second
    assert asyncio.run(body_of()) == b"second"


def test_the_token_of_a_request_is_current_in_it_and_reset_after():
    """Called by a server that runs requests in one task: the request's token is undone after."""
    held = Held()
    mw = ASGIMiddleware(held)

    async def main() -> None:
        before = lifecycle.current_token()
        await mw(http_scope(), receive_nothing, Sent())
        assert lifecycle.current_token() is before
        assert len(held.tokens) == 1
        assert held.tokens[0] is not before  # the middleware's, while the request ran

    asyncio.run(main())
