"""`ASGIMiddleware`: the application side of a zero-loss shutdown, for any ASGI server.

What an ASGI server cannot do alone, the middleware does from inside the
application. uvicorn's last responses before it closes a keep-alive
connection do not say ``Connection: close``, so the client's next request on
that connection is reset: 16 of 16 in-flight connections per stop, measured
with 16 keep-alive clients. With the middleware:

* **http** -- every request is tracked and runs under `lifecycle.current_token`
  (shared by the requests; cancelled only when the stop cuts). Once the app's
  shutdown is requested (the drain), every response gets ``connection:
  close`` in its ``http.response.start`` headers, so HTTP/1.1 servers
  (uvicorn/h11, hypercorn) tell the client before they close the connection,
  instead of closing under the client's next request. A stream or long poll
  calls `lifecycle.mark_long_lived`: the stop asks it to end instead of
  waiting for it.
* **websocket** -- long-lived from the start: the stop does not wait for it,
  it cancels its token (the application closes the socket when it sees that).
* **lifespan** and anything else pass through untouched.

`ASGIMiddleware.stop` is the application's part of the stop sequence of
`lifecycle._serving.stopseq` (the same for every server kind). The component
that owns the ASGI server calls it right after closing the listening socket
and before it lets the server close its connections::

    close listener -> await middleware.stop(token) -> server closes connections

A request that arrives during the stop on a connection still open is served
with a live token, and anything cut raises `DeadlineExceeded` (exit code
TIMEOUT), as with every server kind.

The request hot path builds nothing that is needed only at shutdown: no
token per ordinary request, no ``send`` wrapper before the drain, and the
drain check is a plain attribute read.

Pure ASGI 3: no dependency on any framework or server.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import FrameType
from typing import Any

from .._core.tokens import (
    CancelSource,
    CancelToken,
    _current,
    current_token,
)
from .._core.views import ShutdownView
from .aioserver import _Serving
from .inflight import describe_work
from .stopseq import Waiting, Work, drive_async

__all__ = ["ASGIApp", "ASGIMiddleware"]


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application: ``async def app(scope, receive, send)``."""

_CLOSE = (b"connection", b"close")
# HTTP versions whose responses may carry a Connection header (HTTP/2 and 3
# forbid it: their servers end connections with GOAWAY instead).
_CONNECTION_HEADER_VERSIONS = frozenset({"1.0", "1.1"})
_CUT_REASON = "server stop deadline: request cut"


def _with_connection_close(message: Message) -> Message:
    """A copy of an ``http.response.start`` message whose headers say ``connection: close``."""
    headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
    kept = [(k, v) for k, v in headers if bytes(k).lower() != b"connection"]
    kept.append(_CLOSE)
    return {**message, "headers": kept}


def _closing_send(send: Send) -> Send:
    """``send``, with ``connection: close`` put in the response's headers."""

    def closing_send(message: Message) -> Awaitable[None]:
        # A plain function returning send's awaitable: no extra coroutine per message.
        if message["type"] == "http.response.start":
            message = _with_connection_close(message)
        return send(message)

    return closing_send


class _Call:
    """One HTTP request or websocket in progress.

    Made per request, so it holds only what the hot path has at hand; the
    label is built from the scope when the stop needs it.
    """

    __slots__ = ("began", "mw", "scope", "server_send", "source")

    def __init__(self, mw: ASGIMiddleware, scope: Scope, began: float) -> None:
        self.mw = mw
        self.scope = scope
        self.began = began
        self.source: CancelSource | None = None  # own token, once long-lived
        self.server_send: Send | None = None

    def send(self, message: Message) -> Awaitable[None]:
        """The server's ``send``; a response that starts once draining says close.

        Also for a request begun before the drain: its response may start after
        the drain began, and must then announce the close too, or the client's
        next request on that keep-alive connection races the server's close. A
        plain method returning the server's awaitable: no coroutine per message.
        """
        if (
            self.mw.draining
            and message["type"] == "http.response.start"
            and self.scope.get("http_version", "1.1") in _CONNECTION_HEADER_VERSIONS
        ):
            message = _with_connection_close(message)
        assert self.server_send is not None
        return self.server_send(message)

    @property
    def label(self) -> str:
        scope = self.scope
        if scope["type"] == "websocket":
            return f"WS {scope.get('path', '')}"
        return f"{scope.get('method', '?')} {scope.get('path', '')}"


class ASGIMiddleware(_Serving):
    """Wrap an ASGI app so that it drains without losing a request.

    Args:
        asgi_app: the ASGI 3 application to wrap.
        app: the `lifecycle.App` whose shutdown starts the drain. May be
            None when the middleware is registered with ``app.add`` (which
            binds it) or stopped by hand.
        name: for logs.

    Every HTTP/1.x request that begins during the drain (from the shutdown
    request on) is answered with ``connection: close``. Inside the application,
    `lifecycle.current_token` is the request's token: carrying the deadline
    of the cut once shutdown was requested, cancelled when the stop cuts; a
    websocket's, or a request's marked with `lifecycle.mark_long_lived`, is
    cancelled when the stop asks the long-lived requests to end.

    Example::

        app = lifecycle.App(drain_delay=5)
        asgi = lifecycle.ASGIMiddleware(my_asgi_app, app)
        # the server component (or your own code) calls, after closing its listener:
        #     await asgi.stop(token)

    Added in 0.1.
    """

    def __init__(
        self, asgi_app: ASGIApp, app: ShutdownView | None = None, *, name: str = "asgi"
    ) -> None:
        if not callable(asgi_app):
            raise TypeError(f"asgi_app must be an ASGI application (callable), got {asgi_app!r}")
        super().__init__()
        self.asgi_app = asgi_app
        self.name = name
        self._calls: set[_Call] = set()
        self._ops = _StopOps(self)
        if app is not None:
            self.lifecycle_bind(app)

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "draining" if self.draining else "serving"
        return f"<ASGIMiddleware {self.name!r} {state} in_flight={self.in_flight}>"

    @property
    def in_flight(self) -> int:
        """How many HTTP requests and websockets are in progress now."""
        return len(self._calls)

    def running(self) -> list[str]:
        """``["GET /slow (12.3s)", "WS /feed (40.1s)"]``: what is in progress, oldest first."""
        return describe_work(self._calls, time.monotonic())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.asgi_app(scope, receive, send)
            return
        # The hot path: no token, no task lookup, one context variable (the
        # shared token, bound to this middleware) and one thin send wrapper
        # that reads the drain flag when the response starts.
        call = _Call(self, scope, time.monotonic())
        calls = self._calls
        calls.add(call)
        if kind == "websocket":
            self._mark(call, make_current=False)  # long-lived from the start
            assert call.source is not None
            reset = _current.set(call.source.token)
        elif self.draining:
            reset = _current.set(self._request_token())
            if scope.get("http_version", "1.1") in _CONNECTION_HEADER_VERSIONS:
                send = _closing_send(send)
        else:
            reset = _current.set(self._tokens.root)
            call.server_send = send
            send = call.send
        try:
            await self.asgi_app(scope, receive, send)
        finally:
            _current.reset(reset)
            calls.discard(call)
            if call.source is not None:
                call.source.close()
            if self._stopping:
                self._waiter.wake()  # the stop may be waiting for this request

    async def stop(self, token: CancelToken | None = None) -> None:
        """The application's part of the stop; call it once the listener is closed.

        1. wait for the ordinary HTTP requests in progress (new ones that
           arrive on connections still open are served, with a live token);
        2. cancel the long-lived requests' tokens (websockets, streams end);
           wait again;
        3. `CUT_MARGIN` before ``token``'s deadline, cancel what still runs,
           name it and raise.

        Returns at once when nothing is in flight. Called again (by the
        server component and by the app, say), it waits, by its own token,
        until nothing is in flight.

        Raises:
            DeadlineExceeded: requests were cut; ``.cut`` names every one.
        """
        if token is None:
            token = current_token()
        if self._stopping:
            await self._waiter.wait(lambda: not self._calls, token.remaining(), token)
            return
        self._stopping = True
        await drive_async(self._ops, token, name=self.name, sockets=False)

    # -- internals -------------------------------------------------------------

    def _lc_mark_long_lived(self) -> None:
        # The request marked is the one whose __call__ is on the caller's stack.
        # From a task of its own, marking finds no request and does nothing.
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            call = _call_of(frame, self._calls)
            if call is not None:
                self._mark(call)
                return
            frame = frame.f_back

    def _mark(self, call: _Call, *, make_current: bool = True) -> None:
        """Make ``call`` long-lived: a token of its own, cancelled when streams end."""
        if call.source is not None or call not in self._calls:
            return

        def keep(source: CancelSource) -> None:
            call.source = source

        source = self._long_lived_source(keep)
        if make_current:
            _current.set(source.token)  # for the rest of the request
        if self._stopping:
            self._waiter.wake()

    def _work(self) -> Work:
        calls = list(self._calls)
        long_lived = sum(1 for c in calls if c.source is not None)
        return Work(len(calls) - long_lived, long_lived)


class _StopOps:
    """The stop sequence's operations (`AsyncStopOps`) on an `ASGIMiddleware`.

    The middleware owns no socket: the sequence skips the listener and
    connection steps (``sockets=False``).
    """

    def __init__(self, mw: ASGIMiddleware) -> None:
        self.mw = mw

    def work(self) -> Work:
        return self.mw._work()

    def drain(self, deadline: float | None) -> None:
        self.mw._drain(deadline)

    async def close_listener(self, timeout: float | None) -> None:
        """Not a step of a middleware's stop: the server owns the listener."""

    def close_idle(self, now: float) -> float | None:
        """Not a step of a middleware's stop: the server owns the connections."""
        return None

    async def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        mw = self.mw

        def holds() -> bool:
            work = mw._work()
            return (work.ordinary if what == "ordinary" else work.requests) == 0

        await mw._waiter.wait(holds, timeout, token)

    def end_long_lived(self) -> None:
        mw = self.mw
        mw._end_long_lived([c.source for c in list(mw._calls) if c.source is not None])

    def cut(self) -> list[str]:
        mw = self.mw
        cut = mw.running()
        mw._tokens.cut(_CUT_REASON)
        for task in _tasks_serving(mw._calls):
            task.cancel()
        return cut

    async def join(self, timeout: float | None) -> bool:
        mw = self.mw
        await mw._waiter.wait(lambda: not mw._calls, timeout)
        return not mw._calls


def _tasks_serving(calls: set[_Call]) -> list[asyncio.Task[Any]]:
    """The tasks of the running loop that serve one of ``calls``.

    A request does not record its task: ``asyncio.current_task()`` costs
    0.3 us on Python 3.11, a third of what the middleware may add per
    request. At the cut the tasks are found instead (`_call_served`). A
    request served on another event loop is not found here: the cut cancels
    its token only.
    """
    return [task for task in asyncio.all_tasks() if _call_served(task, calls) is not None]


def _call_served(task: asyncio.Task[Any], calls: set[_Call]) -> _Call | None:
    """The one of ``calls`` that ``task`` serves, if any.

    Follows the task's chain of awaited coroutines to a frame of
    `ASGIMiddleware.__call__`, whose local ``call`` is the request it serves.
    """
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None)
        call = None if frame is None else _call_of(frame, calls)
        if call is not None:
            return call
        awaited = getattr(awaited, "cr_await", None)
    return None


def _call_of(frame: FrameType, calls: set[_Call]) -> _Call | None:
    """The request of ``calls`` that ``frame`` serves, if it is one of `ASGIMiddleware.__call__`."""
    if frame.f_code is not ASGIMiddleware.__call__.__code__:
        return None
    call = frame.f_locals.get("call")
    return call if call in calls else None
