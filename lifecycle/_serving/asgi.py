"""`ASGIMiddleware`: the application side of a zero-loss shutdown, for any ASGI server.

What an ASGI server cannot do alone (ROLLING-FINDINGS: uvicorn loses ~16
requests per stop because its last responses do not say ``Connection:
close``), the middleware does from inside the application:

* **http** -- every request is tracked in an `InFlight` and runs under its
  own `lifecycle.current_token`. Once the app's shutdown is requested (the
  drain), every response gets ``connection: close`` in its
  ``http.response.start`` headers, so HTTP/1.1 servers (uvicorn/h11,
  hypercorn) tell the client before they close the connection, instead of
  closing under the client's next request.
* **websocket** -- tracked as long-lived: stop does not wait for it, it
  cancels its token (the application closes the socket when it sees that).
* **lifespan** and anything else pass through untouched.

`ASGIMiddleware.stop` is the application's part of the stop sequence. The
component that owns the ASGI server calls it right after closing the
listening socket and before it lets the server close its connections::

    close listener -> await middleware.stop(token) -> server closes connections

Pure ASGI 3: no dependency on any framework or server.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import structlog

from .._core.tokens import CancelSource, CancelToken, _current, current_token
from .aioserver import _cut_source
from .inflight import InFlight, cut_deadline

if TYPE_CHECKING:
    from .._core.views import ShutdownView as App

__all__ = ["ASGIApp", "ASGIMiddleware"]

_log = structlog.get_logger("lifecycle")

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


def _with_connection_close(message: Message) -> Message:
    """A copy of an ``http.response.start`` message whose headers say ``connection: close``."""
    headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
    kept = [(k, v) for k, v in headers if bytes(k).lower() != b"connection"]
    kept.append(_CLOSE)
    return {**message, "headers": kept}


class ASGIMiddleware:
    """Wrap an ASGI app so that it drains without losing a request.

    Args:
        asgi_app: the ASGI 3 application to wrap.
        app: the `lifecycle.App` whose shutdown starts the drain. May be
            None when the middleware is registered with ``app.add`` (which
            binds it) or stopped by hand.
        name: for logs.

    During the drain (from the shutdown request on) every HTTP/1.x response
    carries ``connection: close``. Inside the application,
    `lifecycle.current_token` is the request's token: cancelled when the
    server stops (what a websocket handler watches), and carrying the
    shutdown deadline once shutdown was requested.

    Example::

        app = lifecycle.App(drain_delay=5)
        asgi = lifecycle.ASGIMiddleware(my_asgi_app, app)
        # the server component (or your own code) calls, after closing its listener:
        #     await asgi.stop(token)

    Added in 0.1.
    """

    def __init__(self, asgi_app: ASGIApp, app: App | None = None, *, name: str = "asgi") -> None:
        if not callable(asgi_app):
            raise TypeError(f"asgi_app must be an ASGI application (callable), got {asgi_app!r}")
        self.asgi_app = asgi_app
        self.name = name
        self.tracker = InFlight(f"{name} requests")
        """The `InFlight` of requests and websockets in progress."""
        self._shutdown: CancelToken | None = None
        self._shutdown_deadline: Callable[[], float | None] = _no_deadline
        self._requests = CancelSource()
        # ticket id -> the task running that request (to cut it at the deadline).
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._stopping = False
        self._stop_deadline: float | None = None
        if app is not None:
            self.lifecycle_bind(app)

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "draining" if self.draining else "serving"
        return f"<ASGIMiddleware {self.name!r} {state} in_flight={self.tracker.count}>"

    def lifecycle_bind(self, app: App) -> None:
        """Watch ``app``'s shutdown token and deadline (``App.add`` calls this)."""
        self._shutdown = app.shutdown_token
        self._shutdown_deadline = lambda: app.shutdown_deadline

    @property
    def draining(self) -> bool:
        """True once the app's shutdown was requested (or `stop` began)."""
        shutdown = self._shutdown
        return self._stopping or (shutdown is not None and shutdown.cancelled)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            long_lived = False
            label = f"{scope.get('method', '?')} {scope.get('path', '')}"
            if scope.get("http_version", "1.1") in _CONNECTION_HEADER_VERSIONS:
                send = self._closing_send(send)
        elif kind == "websocket":
            long_lived = True
            label = f"WS {scope.get('path', '')}"
        else:
            await self.asgi_app(scope, receive, send)
            return
        tracker = self.tracker
        ticket = tracker.enter(label, long_lived=long_lived)
        assert ticket is not None  # never closed: a request that arrived is served
        task = asyncio.current_task()
        if task is not None:
            self._tasks[ticket.id] = task
        token = self._requests.token
        source: CancelSource | None = None
        deadline = self._deadline()
        if deadline is not None:
            source = CancelSource(token, deadline=deadline)
            token = source.token
        reset = _current.set(token)
        try:
            await self.asgi_app(scope, receive, send)
        finally:
            _current.reset(reset)
            if source is not None:
                source.close()
            self._tasks.pop(ticket.id, None)
            tracker.leave(ticket)

    def _closing_send(self, send: Send) -> Send:
        def closing_send(message: Message) -> Awaitable[None]:
            # A plain function returning send's awaitable: no extra coroutine per message.
            if message["type"] == "http.response.start" and self.draining:
                message = _with_connection_close(message)
            return send(message)

        return closing_send

    def _deadline(self) -> float | None:
        shutdown = self._shutdown
        if not self._stopping and (shutdown is None or not shutdown.cancelled):
            return None  # the hot path: no shutdown requested
        return cut_deadline(self._shutdown_deadline(), self._stop_deadline)

    async def wait_idle(
        self, token: CancelToken | None = None, *, ignore_long_lived: bool = False
    ) -> bool:
        """Wait until no request is in progress (or ``token`` fires); True if idle.

        With ``ignore_long_lived`` websockets do not count.
        """
        return await self.tracker.wait_idle_async(token, ignore_long_lived=ignore_long_lived)

    async def stop(self, token: CancelToken | None = None) -> bool:
        """The application's part of the stop; call it once the listener is closed.

        1. wait for the HTTP requests in progress;
        2. cancel every request's token (websockets end), wait again;
        3. ``CUT_MARGIN`` before ``token``'s deadline, cancel the tasks still
           running and log them by name.

        Returns True if nothing had to be cut. Returns at once when idle.
        Calling it again waits for idleness under the new token.
        """
        if token is None:
            token = current_token()
        if self._stopping:
            return await self.wait_idle(token)
        self._stopping = True
        self._stop_deadline = token.deadline
        try:
            with _cut_source(token) as cut:
                await self.tracker.wait_idle_async(cut.token, ignore_long_lived=True)
                self._requests.cancel("server stopping")
                idle = await self.tracker.wait_idle_async(cut.token)
            if not idle:
                self._cut(log=True)
                await self._join_cut(token)
            return idle
        except BaseException:
            self._cut(log=False)  # the stop itself was cancelled: leave nothing behind
            raise

    def _cut(self, *, log: bool) -> None:
        if log:
            _log.warning(
                "requests cut at the stop deadline",
                component=self.name,
                requests=[t.label for t in self.tracker.running()],
                running=self.tracker.describe(),
            )
        for task in list(self._tasks.values()):
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs
                task.get_loop().call_soon_threadsafe(task.cancel)

    async def _join_cut(self, token: CancelToken) -> None:
        remaining = token.remaining()
        await self.tracker.wait_idle_async(
            timeout=1.0 if remaining is None else max(remaining, 0.01)
        )


def _no_deadline() -> float | None:
    return None
