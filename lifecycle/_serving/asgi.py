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
TIMEOUT), as with every server kind. The server usually still holds
connections when the middleware's stop returns (it closes them next): a
request arriving on one then is served the same way, while one arriving once
the stop has cut is refused at once (HTTP: ``503`` with ``connection:
close``; websocket: closed) without calling the application, since its
token could only be a cancelled one.

The request hot path builds nothing that is needed only at shutdown: no
token per ordinary request, one C-level ``functools.partial`` per request
that is at once the request's record and its ``send`` (the only wrapper: it
reads the drain flag when the response starts), and the drain check is a
plain attribute read.

Which request `lifecycle.mark_long_lived` marks: the one whose context the
call runs in. Each request notes its record in its context (a context
variable of the middleware's): a task the application creates, or a thread
it starts with a copy of the context, marks that request while it runs, and
nothing once it ended (the call returns False), however many requests the
middleware serves in that context by then.

Pure ASGI 3: no dependency on any framework or server.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import partial
from types import FrameType
from typing import Any

from .._core.log import get_logger
from .._core.tokens import (
    CancelSource,
    CancelToken,
    _current,
    _reset_current,
    _set_current,
    current_token,
)
from .._core.views import ShutdownView
from .aioserver import _Serving
from .inflight import describe_work
from .stopseq import Waiting, Work, drive_async

__all__ = ["ASGIApp", "ASGIMiddleware"]

_log = get_logger()

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
_GOING_AWAY = 1001  # the websocket close code of a server going down
# Bound once: the hot path calls it without an attribute lookup each.
_monotonic = time.monotonic


def _with_connection_close(message: Message) -> Message:
    """A copy of an ``http.response.start`` message whose headers say ``connection: close``."""
    headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
    kept = [(k, v) for k, v in headers if bytes(k).lower() != b"connection"]
    kept.append(_CLOSE)
    return {**message, "headers": kept}


def _responding(
    mw: ASGIMiddleware, scope: Scope, send: Send, began: float, message: Message
) -> Awaitable[None]:
    """The server's ``send``; a response that starts once draining says ``connection: close``.

    Bound per request as ``partial(_responding, mw, scope, send, began)``:
    that partial is the request's record in ``mw._calls`` too (its ``args``
    say what it is and since when), and what is current in the request's
    context in place of a token (`ASGIMiddleware._lc_token_of` answers
    `current_token` from it: the middleware's root token). Four arguments:
    with the message, as many as a partial passes without allocating. Also
    for a request begun before the drain: its response may start after the
    drain began, and must then announce the close too, or the client's next
    request on that keep-alive connection races the server's close. It
    returns the server's awaitable: no coroutine per message. Not the
    ``send`` of a request begun before the drain when the server announces
    the close itself (`ASGIMiddleware._announce_close`, as `lifecycle.uvicorn`
    does): such a request then costs no call of ours per message.
    """
    if (
        mw.draining
        and message["type"] == "http.response.start"
        and scope.get("http_version", "1.1") in _CONNECTION_HEADER_VERSIONS
    ):
        message = _with_connection_close(message)
    return send(message)


def _responding_draining(  # noqa: PLR0917 - bound positionally by one partial per request
    mw: ASGIMiddleware,
    scope: Scope,
    send: Send,
    began: float,
    token: CancelToken,
    message: Message,
) -> Awaitable[None]:
    """`_responding` for a request begun during the drain: its record carries its ``token``."""
    return _responding(mw, scope, send, began, message)


# One request in progress: partial(_responding, mw, scope, send, began), or
# partial(_responding_draining, mw, scope, send, began, token) once draining.
_Call = partial


class _Running:
    """A request in progress as `describe_work` reads it (made only when asked)."""

    __slots__ = ("began", "label")

    def __init__(self, call: _Call[Awaitable[None]]) -> None:
        scope: Scope = call.args[1]
        self.began: float = call.args[3]
        if scope["type"] == "websocket":
            self.label = f"WS {scope.get('path', '')}"
        else:
            self.label = f"{scope.get('method', '?')} {scope.get('path', '')}"


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
    cancelled when the stop asks the long-lived requests to end. Once the
    stop has cut, requests are refused without calling the application.

    Example::

        app = lifecycle.App(drain_delay=5)
        asgi = lifecycle.ASGIMiddleware(my_asgi_app, app)
        # the server component (or your own code) calls, after closing its listener:
        #     await asgi.stop(token)

    Added in 0.1.
    """

    # What the request hot path reads and writes, in slots: an attribute of an
    # instance whose ``__dict__`` was materialised (``App.add`` does) is read
    # by a dictionary lookup with a hint; a slot is read at a fixed offset,
    # whatever else happened to the instance. Those set by `_Serving` too.
    __slots__ = (
        "_announce_close",
        "_asgi_app",
        "_calls",
        "_http_app",
        "_long_lived",
        "_own_task",
        "_refusing",
        "_root",
        "_stopping",
        "_waiter",
        "draining",
        "last_arrival",
    )

    def __init__(
        self, asgi_app: ASGIApp, app: ShutdownView | None = None, *, name: str = "asgi"
    ) -> None:
        if not callable(asgi_app):
            raise TypeError(f"asgi_app must be an ASGI application (callable), got {asgi_app!r}")
        super().__init__()
        self.asgi_app = asgi_app
        self.name = name
        self._calls: set[_Call[Awaitable[None]]] = set()
        self.last_arrival: float | None = None
        """When the last HTTP request or websocket began (``time.monotonic()``); None before."""
        # The request a context belongs to is its record, made current in it in
        # place of a token (one context variable per request for both): held by
        # the context and any copy of it, so never reused for another request
        # while a copy could still name it.
        # The own sources of the requests in progress that are long-lived.
        self._long_lived: dict[_Call[Awaitable[None]], CancelSource] = {}
        self._root = self._tokens.root  # the token of every request begun before the drain
        self._refusing = False  # the stop cut: requests are refused, the app is not called
        self._ops = _StopOps(self)
        # Called with each task serving a request just before the cut cancels it
        # (while it still waits where it was stuck): a server's integration logs
        # its stack there.
        self._about_to_cut: Callable[[asyncio.Task[Any]], None] | None = None
        # Set by a server that makes the responses of the requests in progress
        # say ``connection: close`` itself when told the drain began (it is
        # called then, in the thread that began it): the requests begun before
        # the drain then get the server's own ``send``, not a wrapper of ours.
        # Invariant: called at every start of the drain, before a response of
        # a request begun earlier can start unannounced on the server's loop
        # (the server's part: see `lifecycle.uvicorn`).
        self._announce_close: Callable[[], None] | None = None
        # Set by a server that runs each request (and websocket) in an asyncio
        # task of its own, with nothing after the application in that task
        # that reads `current_token` (uvicorn): the request's token then is
        # not reset as the request ends, since its context ends with it.
        self._own_task = False
        if app is not None:
            self.lifecycle_bind(app)

    @property
    def asgi_app(self) -> ASGIApp:
        """The wrapped application: every request and websocket is handed to it.

        Set it to wrap another application from the next request on.

        Example::

            mw = lifecycle.ASGIMiddleware(my_asgi_app)
            assert mw.asgi_app is my_asgi_app
        """
        return self._asgi_app

    @asgi_app.setter
    def asgi_app(self, asgi_app: ASGIApp) -> None:
        self._asgi_app = asgi_app
        # What HTTP requests are handed to: ``asgi_app``, unless a server's
        # integration hands them past a layer of its own that only passes
        # HTTP requests on (`lifecycle.uvicorn` without health paths): one
        # call less per request.
        self._http_app = asgi_app

    def __repr__(self) -> str:
        state = (
            "stopped"
            if self._stopped
            else "stopping"
            if self._stopping
            else "draining"
            if self.draining
            else "serving"
        )
        return f"<ASGIMiddleware {self.name!r} {state} in_flight={self.in_flight}>"

    @property
    def in_flight(self) -> int:
        """How many HTTP requests and websockets are in progress now."""
        return len(self._calls)

    def running(self) -> list[str]:
        """``["GET /slow (12.3s)", "WS /feed (40.1s)"]``: what is in progress, oldest first."""
        calls = list(self._calls)
        return describe_work([_Running(call) for call in calls], time.monotonic())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # The hot path: one partial (the request's record, and its send
            # unless the server announces the close itself), no token made, no
            # task lookup, one context variable (the record: the request, and
            # through it the shared token).
            call = partial(_responding, self, scope, send, at := _monotonic())
            self.last_arrival = at  # read by an adaptive drain (lifecycle.Drain)
            calls = self._calls
            calls.add(call)  # Invariant: before _refusing is read (see _StopOps.cut)
            if self.draining:
                if self._refusing:
                    calls.discard(call)
                    await self._refuse(scope, send)
                    return
                token = self._request_token()
                if token is not self._root:  # the record says the drain's token
                    early = call
                    call = partial(_responding_draining, self, scope, send, at, token)
                    calls.add(call)  # before the first leaves: always one in _calls
                    calls.discard(early)
                send = call
            elif self._announce_close is None:
                send = call
            app = self._http_app
        elif scope["type"] == "websocket":
            call = partial(_responding, self, scope, send, at := _monotonic())
            self.last_arrival = at
            calls = self._calls
            calls.add(call)  # Invariant: before _refusing is read (see _StopOps.cut)
            if self.draining and self._refusing:
                calls.discard(call)
                await self._refuse(scope, send)
                return
            self._mark_websocket(call)  # its token: the record's own (_lc_token_of)
            app = self._asgi_app
        else:
            await self._asgi_app(scope, receive, send)
            return
        reset = _set_current(call)  # the request of this context, and its token
        try:
            await app(scope, receive, send)
        finally:
            if not self._own_task:
                _reset_current(reset)
            calls.discard(call)
            if self._long_lived:
                source = self._long_lived.pop(call, None)
                if source is not None:
                    source.close()
            if self._stopping:
                self._waiter.wake()  # the stop may be waiting for this request

    def _begin_drain(self) -> None:
        super()._begin_drain()
        announce = self._announce_close
        if announce is not None:
            announce()

    def _drain(self, deadline: float | None) -> None:
        super()._drain(deadline)
        announce = self._announce_close
        if announce is not None:
            announce()

    async def stop(self, token: CancelToken | None = None) -> None:
        """The application's part of the stop; call it once the listener is closed.

        1. wait for the ordinary HTTP requests in progress (new ones that
           arrive on connections still open are served, with a live token);
        2. cancel the long-lived requests' tokens (websockets, streams end);
           wait again;
        3. `CUT_MARGIN` before ``token``'s deadline, cancel what still runs,
           name it and raise.

        Returns at once when nothing is in flight. A request that arrives
        after it returned, on a connection the server has not closed yet, is
        served as during the stop (``connection: close``, a live token
        carrying the stop's deadline; a websocket's token cancelled at once);
        once it has cut, requests are refused without calling the
        application (HTTP: 503 with ``connection: close``; websocket:
        closed).

        Called again while it runs (by the server component and by the app,
        say), it returns when the first call does, with the same outcome
        (raising the same `DeadlineExceeded`), but by its own token's
        deadline: if its cut time comes first, what runs is cut then. Called
        after it finished, it returns that outcome at once.

        Raises:
            DeadlineExceeded: requests were cut; ``.cut`` names every one.
        """
        if token is None:
            token = current_token()
        await self._stop_once(token, self.name, self._stop_sequence)

    # -- internals -------------------------------------------------------------

    async def _stop_sequence(self, token: CancelToken) -> None:
        await drive_async(self._ops, token, name=self.name, sockets=False)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        """Answer a request that arrived once the stop cut, without the application."""
        _log.debug(
            "request refused: the stop has cut",
            component=self.name,
            path=scope.get("path", ""),
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": _GOING_AWAY})
            return
        body = f"{self.name!r} is stopping; send the request to another instance\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"0"),
        ]
        if scope.get("http_version", "1.1") in _CONNECTION_HEADER_VERSIONS:
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _lc_token_of(self, call: _Call[Awaitable[None]]) -> CancelToken:
        """`current_token` in a context whose current is ``call``, a request's record.

        The request's own token once it is long-lived (marked from any copy
        of its context), for good: a copy of the context that outlives the
        request keeps it, closed when the request ended. Else the token it
        began with.
        """
        own: CancelToken | None = getattr(call, "lc_own_token", None)
        if own is not None:
            return own
        args = call.args
        token: CancelToken = args[4] if len(args) > 4 else self._root
        return token

    def _lc_mark_long_lived(self) -> bool:
        # The request marked is the one whose record is current in this
        # context: its own, or the one a task or thread was copied from, while
        # that is in progress. The record stays current: from now on it
        # answers the request's own token (_lc_token_of), in every copy.
        call = _current.get(None)
        if call.__class__ is not partial or call not in self._calls:
            return False  # no request of this middleware's, or it ended
        if call not in self._long_lived:
            source = self._mark(call)
            if call not in self._calls:  # it ended meanwhile (a mark from a thread)
                self._long_lived.pop(call, None)
                source.close()
                return False
        return True

    def _mark(self, call: _Call[Awaitable[None]]) -> CancelSource:
        """Make ``call`` long-lived: a token of its own, cancelled when streams end."""

        def keep(source: CancelSource) -> None:
            # On the record (its instance dictionary, made only for a long-lived
            # request): what current_token() answers from it, even once ended.
            call.lc_own_token = source.token  # type: ignore[attr-defined]
            self._long_lived[call] = source

        source = self._long_lived_source(keep)
        if self._stopping:
            self._waiter.wake()
        return source

    def _mark_websocket(self, call: _Call[Awaitable[None]]) -> CancelToken:
        """A websocket is long-lived from the start: its own token."""
        return self._mark(call).token

    def _work(self) -> Work:
        calls = list(self._calls)
        long_lived = self._long_lived
        marked = sum(1 for c in calls if c in long_lived)
        return Work(len(calls) - marked, marked)


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
        self.mw._end_long_lived(list(self.mw._long_lived.values()))

    def cut(self) -> list[str]:
        mw = self.mw
        # Invariant: set before the requests are listed; a request adds itself
        # before it reads the flag: so each one is refused, or listed and cut.
        mw._refusing = True
        cut = mw.running()
        mw._tokens.cut(_CUT_REASON)
        about_to_cut = mw._about_to_cut
        for task in _tasks_serving(mw._calls):
            if about_to_cut is not None:
                about_to_cut(task)
            task.cancel()
        return mw._record_cut(cut)

    async def join(self, timeout: float | None) -> bool:
        mw = self.mw
        await mw._waiter.wait(lambda: not mw._calls, timeout)
        return not mw._calls


def _tasks_serving(calls: set[_Call[Awaitable[None]]]) -> list[asyncio.Task[Any]]:
    """The tasks of the running loop that serve one of ``calls``.

    A request does not record its task: ``asyncio.current_task()`` costs
    0.3 us on Python 3.11, a third of what the middleware may add per
    request. At the cut the tasks are found instead (`_call_served`). A
    request served on another event loop is not found here: the cut cancels
    its token only.
    """
    return [task for task in asyncio.all_tasks() if _call_served(task, calls) is not None]


def _call_served(
    task: asyncio.Task[Any], calls: set[_Call[Awaitable[None]]]
) -> _Call[Awaitable[None]] | None:
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


def _call_of(frame: FrameType, calls: set[_Call[Awaitable[None]]]) -> _Call[Awaitable[None]] | None:
    """The request of ``calls`` that ``frame`` serves, if it is one of `ASGIMiddleware.__call__`."""
    if frame.f_code is not ASGIMiddleware.__call__.__code__:
        return None
    call = frame.f_locals.get("call")
    return call if call in calls else None
