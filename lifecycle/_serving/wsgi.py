"""WSGI: `WSGIServer` serves a WSGI app zero-loss; `WSGIMiddleware` helps in other servers.

Two ways to put a Flask, Django or any WSGI app under lifecycle:

* `WSGIServer` hosts it on `HTTPServer` (stdlib only, threaded, HTTP/1.1
  keep-alive with ``Content-Length`` or chunked responses) and so gets the
  whole zero-loss stop sequence: drain with ``Connection: close``, listener
  closed, idle connections closed, in-flight requests finished, long-lived
  ones ended through their tokens, the rest cut and named at the deadline.
* `WSGIMiddleware` wraps the app for a server lifecycle does not own
  (gunicorn, waitress, wsgiref...). It tracks requests, makes
  `current_token()` the request's token, and during the drain asks the
  hosting server to close each connection after its response -- through a
  side channel, because a WSGI app may not send ``Connection`` itself.

Why a side channel and not a header: PEP 3333 forbids hop-by-hop headers in
a WSGI response. ``wsgiref`` and waitress assert on them and gunicorn
silently drops them, so an app that adds ``Connection: close`` either
crashes or changes nothing. The middleware therefore, while draining:

1. calls ``environ["lifecycle.close_connection"]()`` when the server offers
   it (`WSGIServer` does; any server may: it must make the response the
   last on its connection, with ``Connection: close``);
2. else, when ``start_response`` is a method of an object with a
   ``force_close()`` method, calls that: gunicorn's responses have one, and
   it makes gunicorn send ``Connection: close`` and close after the response;
3. else does nothing: the server decides (``wsgiref`` closes every
   connection anyway, it does not keep connections alive).

A request with a streamed body (an iterator: what frameworks return) is
tracked until the server closes it (PEP 3333 requires it to), so it counts as
in flight while it streams, with its token current; one with a built body (a
list or tuple) ends when the app returns, since no app code runs while the
server sends it. Its ``stop`` drives the stop sequence every server kind
drives (`lifecycle._serving.stopseq`), without a listener of its own.

Added in 0.1.
"""

from __future__ import annotations

import contextvars
import functools
import socket
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain
from types import TracebackType
from typing import Any, ClassVar, Final
from urllib.parse import unquote
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.util import is_hop_by_hop

from .._core.log import get_logger
from .._core.tokens import (
    _NEVER,
    CancelSource,
    CancelToken,
    CurrentValue,
    _current,
    _get_current,
    _reset_current,
    _set_current,
    current_token,
)
from .._core.views import ShutdownView
from .h1 import DEFAULT_LIMITS, Head, Limits, check_response_head
from .http import (
    _DEFAULT_ADDRESS,
    DISCARD_LIMIT,
    HEAD_TIMEOUT,
    IDLE_TIMEOUT,
    HTTPServer,
    _Body,
    _StrictHandler,
)
from .inflight import (
    InFlight,
    RequestTokens,
    Slot,
    _on_cancel_inline,
    bind_scope,
    cut_deadline,
)
from .stopseq import Waiting, Work, drive_sync

__all__ = ["CLOSE_CONNECTION_KEY", "TRACKED_KEY", "WSGIMiddleware", "WSGIServer"]

_log = get_logger()

CLOSE_CONNECTION_KEY: Final = "lifecycle.close_connection"
"""Environ key of a callable that makes the response the last on its connection.

`WSGIServer` provides it; other servers may. Calling it after the response
headers were sent still closes the connection after the response."""

TRACKED_KEY: Final = "lifecycle.tracked"
"""Environ key set to True by a server that tracks requests and sets their token
itself (`WSGIServer`): `WSGIMiddleware` then passes requests straight through."""


ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


# -- the middleware ---------------------------------------------------------------------


def _label(environ: WSGIEnvironment) -> str:
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    if len(path) > 200:
        path = path[:200] + "..."
    return f"{environ.get('REQUEST_METHOD', '?')} {path or '/'}"


def _ask_close(environ: WSGIEnvironment, start_response: Callable[..., Any]) -> None:
    """Ask the hosting server to close the connection after this response."""
    close = environ.get(CLOSE_CONNECTION_KEY)
    if callable(close):
        close()
        return
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):  # gunicorn's Response
        force_close()


class WSGIMiddleware:
    """Track a WSGI app's requests and honour shutdown, in any WSGI server.

    For each request it enters the request in `tracker`, runs the app (and
    the iteration of its body) with `current_token()` set to the request's
    token, and while the app drains asks the server to close the connection
    after the response (see this module's docstring for how, per server).
    Hosted by `WSGIServer`, which does all that itself, it passes requests
    straight through.

    No token is made per request: requests begun before the drain share
    one, cancelled only if the stop has to cut; requests begun during the
    drain share one whose deadline is a margin before their cut (from the
    shutdown deadline, or the stop's once it began: `cut_deadline`), so that
    an app working until its deadline still answers. A request marked
    long-lived (`mark_long_lived`) gets its own, which the stop cancels to
    end it.

    It is also a component: registered with ``app.add``, its ``stop`` drives
    the same stop sequence as the servers, without a listener of its own:
    wait for the ordinary requests, end the long-lived ones through their
    tokens, wait again, and `CUT_MARGIN` before its deadline cancel the
    tokens of what remains and raise `DeadlineExceeded` naming every request
    cut (the exit code is then TIMEOUT). Make the resources the app uses
    depend on it, so that they close only after the last request::

        db = app.add(Pool(dsn))
        app.add(middleware, depends_on=[db])

    Args:
        wsgi_app: the WSGI application.
        app: the `App` whose shutdown starts the drain; may be omitted when
            the middleware is registered with ``app.add`` (which binds it).
        name: for logs; default ``"wsgi"``.

    Example (gunicorn, ``wsgi.py``)::

        app = lifecycle.App("shop", drain_delay=5)
        application = lifecycle.WSGIMiddleware(flask_app, app)
        app.add(application, depends_on=[db])

    Added in 0.1.
    """

    def __init__(
        self, wsgi_app: WSGIApplication, app: ShutdownView | None = None, *, name: str | None = None
    ) -> None:
        if not callable(wsgi_app):
            raise TypeError(
                f"WSGIMiddleware needs a WSGI application (a callable), got {wsgi_app!r}"
            )
        self.wsgi_app = wsgi_app
        self.name = name or "wsgi"
        self.tracker = InFlight(f"{self.name} requests")
        """The `InFlight` of the requests this middleware tracks."""
        self._app: ShutdownView | None = None
        self._tokens = RequestTokens()
        self._root = self._tokens.root
        self._lock = threading.Lock()
        # Invariant: a lane is in _free, or serves exactly one request (from
        # the app call until the server closes the body). Every lane ever
        # made is in _lanes, for the stop to end long-lived requests. A deque:
        # its pop and append are atomic, as a list's are, and, unlike a list
        # emptied and refilled each request, it reallocates nothing (350 CPU
        # instructions a request).
        self._free: deque[_Lane] = deque()
        self._lanes: list[_Lane] = []
        self._draining = False  # plain reads on the request path
        self._stopping = False
        self._ending_streams = False
        self._stop_deadline: float | None = None
        self._detach_drain: Callable[[], bool] | None = None
        if app is not None:
            self.lifecycle_bind(app)

    def __repr__(self) -> str:
        return f"<WSGIMiddleware {self.name!r} in_flight={self.tracker.count}>"

    def lifecycle_bind(self, app: ShutdownView) -> None:
        """Called by ``App.add``: drain when ``app.shutdown_token`` is cancelled."""
        if self._detach_drain is not None:
            self._detach_drain()
        self._app = app
        self._detach_drain = _on_cancel_inline(app.shutdown_token, self._begin_drain)
        watch = getattr(app, "watch_arrivals", None)
        if callable(watch):
            watch(self.tracker)  # an adaptive drain reads its last arrival

    def _begin_drain(self) -> None:
        # Runs as the shutdown token fires: a flag, no logging, no locks.
        self._draining = True

    @property
    def draining(self) -> bool:
        """True once the app's shutdown was requested (or `stop` began)."""
        return self._draining

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request (the WSGI protocol)."""
        if TRACKED_KEY in environ and environ[TRACKED_KEY]:  # noqa: RUF019 - no call when absent
            return self.wsgi_app(environ, start_response)
        try:
            lane = self._free.pop()
        except IndexError:
            lane = self._new_lane()
        lane.environ = environ
        tracker = self.tracker
        if tracker._closed:  # someone closed the tracker: refuse (begin() counts it)
            tracker.begin(lane)
            lane.end()
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"shutting down\n"]
        # InFlight.begin, inlined (a call less on the hot path).
        clock = tracker.clock  # read, then called (see InFlight.clock)
        tracker.last_arrival = lane.began = clock()
        lane.long_lived = False
        uses = lane.uses + 1
        lane.uses = uses
        lane.active = True
        if self._draining:
            shared = self._tokens.draining(self._cut_deadline)
            start_response = _closing_start(environ, start_response)
        else:
            shared = self._root
        if lane.parent is not shared:
            lane.renew(shared)
        # One context variable: the request's record, its lane, number and token
        # (what a copy of this context may mark, and its current_token()).
        lane.record = record = (lane.ref, uses, lane.token)
        reset = _set_current(record)
        wsgi_app = self.wsgi_app  # read, then called: an instance attribute
        try:
            result = wsgi_app(environ, start_response)
        except BaseException:
            _reset_current(reset)
            lane.end()
            raise
        if type(result) in _BUILT:
            # Built before the app returned: no app code runs while the server
            # sends it, so the request is over (and the body is the app's own).
            _reset_current(reset)
            lane.environ = None  # _Lane.end, inlined
            lane.active = False
            if tracker._waiters or tracker._idle_callbacks:
                tracker._wake_all()
            self._free.append(lane)
            return result
        # Invariant: the request's token stays current in this context until
        # the server closes the body, so that the body's code, which the
        # server runs as it iterates (in the thread that called the app, as
        # every WSGI server does), has it with nothing done per item.
        lane.reset = reset
        body = _StreamedBody(result)
        body._inner = result
        body._lane = lane
        return body

    def _new_lane(self) -> _Lane:
        lane = _Lane(self)
        with self._lock:
            self._lanes.append(lane)
        return lane

    def _cut_deadline(self) -> float | None:
        shutdown = self._app.shutdown_deadline if self._app is not None else None
        return cut_deadline(shutdown, self._stop_deadline)

    def stop(self, token: CancelToken | None = None) -> None:
        """Wait for the requests in flight; end long-lived ones; cut the rest before the deadline.

        New requests are still served (the hosting server decides when to
        stop accepting them), each told to close its connection, with a live
        token. Returns when no request is left. Calling it again does nothing.

        Raises:
            DeadlineExceeded: requests were still running `CUT_MARGIN` before
                the deadline: their tokens were cancelled, ``.cut`` names
                every one.
        """
        if token is None:
            token = current_token()
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        drive_sync(_MiddlewareOps(self), token, name=self.name, sockets=False)


class _MiddlewareOps:
    """The stop sequence's operations (`SyncStopOps`) on a `WSGIMiddleware`: no sockets."""

    __slots__ = ("mw",)

    def __init__(self, mw: WSGIMiddleware) -> None:
        self.mw = mw

    def work(self) -> Work:
        ordinary, long_lived = self.mw.tracker.counts()
        return Work(ordinary, long_lived)

    def drain(self, deadline: float | None) -> None:
        mw = self.mw
        mw._stop_deadline = deadline
        mw._draining = True
        mw._tokens.renew(mw._cut_deadline())

    def close_listener(self, timeout: float | None) -> None:
        """Not asked for: the hosting server owns the listener."""

    def close_idle(self, now: float) -> float | None:
        """Not asked for: the hosting server owns the connections."""
        return None

    def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        self.mw.tracker.wait_idle(token, timeout=timeout, ignore_long_lived=what == "ordinary")

    def end_long_lived(self) -> None:
        mw = self.mw
        mw._ending_streams = True
        with mw._lock:
            lanes = list(mw._lanes)
        for lane in lanes:
            source = lane.source
            if lane.active and lane.long_lived and source is not None:
                lane.parent = None  # its token is spent: the lane's next request makes one
                source.cancel(_END_REASON)

    def cut(self) -> list[str]:
        mw = self.mw
        cut = mw.tracker.describe(limit=None)
        mw._tokens.cut("stop deadline: request cut")
        return cut

    def join(self, timeout: float | None) -> bool:
        # The hosting server owns the threads: give the cut requests the
        # time left to honour their cancelled tokens and leave.
        return self.mw.tracker.wait_idle(timeout=timeout)


_END_REASON = "server stopping: long-lived request asked to end"
_BUILT = frozenset({list, tuple})  # bodies whose sending runs no app code


def _closing_start(environ: WSGIEnvironment, start_response: StartResponse) -> StartResponse:
    """A ``start_response`` that first asks the server to close after this response."""

    def closing_start(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        _ask_close(environ, start_response)
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    return closing_start


class _Lane(Slot):
    """What a request under `WSGIMiddleware` needs, reused request after request.

    Lanes are pooled so that the hot path makes nothing (a body object for a
    streamed response only) and takes no lock. A lane is the `Slot` its
    requests are begun and ended in, one after the other; its token -- a
    child of the requests' shared token, made again only when that one
    changes (the drain, the stop) or after the stop ended it -- is bound to
    the lane as its request scope, so that one context variable is written
    per request.
    """

    __slots__ = (
        "__weakref__",
        "environ",
        "free",
        "mw",
        "parent",
        "record",
        "ref",
        "reset",
        "source",
        "token",
        "tracker",
    )
    # What was current before its streamed body's token, while the server
    # iterates it: set before the body is made.
    reset: contextvars.Token[CurrentValue]

    def __init__(self, mw: WSGIMiddleware) -> None:
        super().__init__(self._request_label)
        self.mw = mw
        self.environ: WSGIEnvironment | None = None  # of the request served, if any
        self.parent: CancelToken | None = None  # the shared token the own one descends from
        self.source: CancelSource | None = None
        self.token = mw._tokens.root
        # What is current in the context of its request in progress (or its
        # last): (ref, uses, token), made per request. A weak reference to
        # the lane: a record kept (by a context, or a body closed out of
        # order) keeps neither the lane nor the middleware alive.
        self.ref = weakref.ref(self)
        self.record: tuple[weakref.ref[_Lane], int, CancelToken] | None = None
        self.tracker = mw.tracker  # these two for the body's close, a lookup less each
        self.free = mw._free
        mw.tracker.open_slot(slot=self)  # closed: begin() refuses its requests

    def renew(self, parent: CancelToken) -> None:
        """A token of the lane's own, a child of ``parent``, for its next requests."""
        old = self.source
        source = CancelSource(parent)
        self.parent = parent
        self.source = source
        self.token = source.token
        bind_scope(source.token, self)
        if old is not None:
            old.close()

    def _request_label(self) -> str:
        environ = self.environ
        return "" if environ is None else _label(environ)

    def _lc_mark_long_lived(self) -> bool:
        record = _get_current(None)
        if not self.active or record is not self.record:
            return False  # no request, or not this context's: it ended
        if self.long_lived:
            return True
        mw = self.mw
        # Invariant (with end_long_lived, which sets its flag before it reads
        # the lanes): a request marked while streams are ended is cancelled
        # by one side or the other.
        mw.tracker.mark_long_lived(self)
        if mw._ending_streams and self.source is not None:
            self.parent = None  # its token is spent: the lane's next request makes one
            self.source.cancel(_END_REASON)
        return True

    def end(self) -> None:
        """The request is over: end its unit; back to the pool."""
        self.environ = None
        mw = self.mw
        mw.tracker.end(self)
        mw._free.append(self)


class _StreamedBody(chain[bytes]):
    """The app's streamed response: in flight, its token current, until the server closes it.

    A `chain` of the app's iterable alone: the server's ``iter()`` and each
    item are served in C, so that nothing of ours runs per item, and it is
    made without a Python ``__init__`` (made as ``_StreamedBody(inner)``,
    then ``_inner`` and ``_lane`` set).
    """

    __slots__ = ("_inner", "_lane")
    _inner: Iterable[bytes]
    _lane: _Lane | None

    def close(self) -> None:
        """Close the app's iterable (PEP 3333), then end the request."""
        lane = self._lane
        if lane is None:
            return
        self._lane = None
        inner = self._inner
        try:
            if type(inner) not in _NO_CLOSE:
                close = getattr(inner, "close", None)
                if close is not None:
                    close()
        finally:
            # Invariant: no request's token stays current after its body closed.
            # Every WSGI server closes the bodies of a context in the order it
            # made them; a caller that closes out of order (two open at once,
            # the first closed first) leaves an orphan that the later close
            # unwinds past.
            reset = lane.reset
            record = lane.record
            if _get_current(None) is record:
                _reset_current(reset)
                if _orphans:
                    _unwind(reset.old_value)
            else:  # out of order, or closed from another context
                _orphans[record] = reset.old_value
                lane.parent = None  # the lane's next request makes a new token
            # _Lane.end and InFlight.end, inlined: the request is over, the lane free.
            lane.environ = None
            lane.active = False
            tracker = lane.tracker
            if tracker._waiters or tracker._idle_callbacks:
                tracker._wake_all()
            lane.free.append(lane)


# Iterator types whose instances have no ``close`` (no instance attributes either):
# their bodies are closed without a getattr.
_NO_CLOSE: Final[frozenset[type]] = frozenset(
    type(it) for it in (iter([]), iter(()), iter(""), iter(b""), iter(range(0)), map(str, ()))
)

# The record of a body closed out of order -> what was current before it. A
# record is made per request, never current again: a key is one request.
_orphans: dict[object, object] = {}


def _unwind(restored: object) -> None:
    """A close made ``restored`` current again: go past the orphans it uncovers."""
    while restored in _orphans:
        restored = _orphans.pop(restored)
        valid = isinstance(restored, (CancelToken, functools.partial, tuple))
        _current.set(restored if valid else _NEVER)  # type: ignore[arg-type]


# -- the server -------------------------------------------------------------------------


def _check_start(status: object, headers: object) -> None:
    """Refuse, before anything is buffered, a status or headers the response cannot carry.

    The types PEP 3333 requires (a ``"NNN reason"`` str, a list of str
    pairs) and a ``Content-Length`` of digits are checked here; splitting
    bytes (CR, LF, NUL), names that are no token and text that is not
    latin-1 by `check_response_head`.
    """
    if not (isinstance(status, str) and status[3:4] == " "):
        raise TypeError(f"the status must be a str like '200 OK', got {status!r}")
    if not isinstance(headers, list):
        raise TypeError(f"headers must be a list of (name, value) str pairs, got {headers!r}")
    for header in headers:
        if not (
            isinstance(header, tuple)
            and len(header) == 2
            and isinstance(header[0], str)
            and isinstance(header[1], str)
        ):
            raise TypeError(f"a header must be a (name, value) pair of str, got {header!r}")
    check_response_head(status, headers)
    for name, value in headers:
        if name.lower() == "content-length" and not (value.isascii() and value.isdigit()):
            raise ValueError(f"Content-Length must be a number of bytes, got {value!r}")


class _Response:
    """``start_response``, ``write`` and the framing of one WSGI response."""

    __slots__ = (
        "body",
        "chunked",
        "handler",
        "headers",
        "headers_sent",
        "length",
        "no_body",
        "sent",
        "status",
        "whole",
    )

    def __init__(self, handler: _WSGIRequestHandler, body: _Body) -> None:
        self.handler = handler
        self.body = body
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.length: int | None = None  # Content-Length sent
        self.sent = 0
        self.chunked = False
        self.no_body = False
        self.whole = False  # the first body item is the whole body

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent and exc_info[1] is not None:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        # Invariant: what is stored here is sent as is, so every check is made
        # now, before anything is buffered: a bad header is one 500, never a
        # second status line after a first one.
        _check_start(status, headers)
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("the WSGI app wrote before calling start_response()")
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"a WSGI app must produce bytes, not {type(data).__name__}")
        if not self.headers_sent:
            if data:  # headers wait for the first non-empty body item (PEP 3333)
                self._send_headers(data, len(data) if self.whole else None)
            return
        payload = self._frame(data)
        if payload:
            self.handler.wfile.write(payload)

    def finish(self) -> None:
        if self.status is None:
            raise AssertionError("the WSGI app returned without calling start_response()")
        handler = self.handler
        if not self.headers_sent:
            self._send_headers(b"", 0)
        elif self.chunked:
            handler.wfile.write(b"0\r\n\r\n")
        if self.length is not None and self.sent < self.length and not self.no_body:
            handler.close_connection = True  # the client would wait for the missing bytes

    def _frame(self, data: bytes) -> bytes:
        if self.no_body or not data:
            return b""
        if self.length is not None:
            room = self.length - self.sent
            if room <= 0:
                return b""
            data = data[:room]
        self.sent += len(data)
        if self.chunked:
            return b"%X\r\n%s\r\n" % (len(data), data)
        return bytes(data)

    def _send_headers(self, first: bytes, known_length: int | None) -> None:
        handler = self.handler
        status = self.status
        assert status is not None
        code = int(status[:3])
        handler.send_response_only(code, status[4:] or None)
        dated = False
        for name, value in self.headers:
            lname = name.lower()
            if lname == "content-length":
                self.length = int(value)
            elif lname == "connection":
                if "close" in value.lower():
                    handler.lifecycle_close()
                continue
            elif lname == "date":
                dated = True
            elif is_hop_by_hop(lname):
                continue  # hop-by-hop headers are the server's to send (PEP 3333)
            handler.send_header(name, value)
        if not dated:
            handler.send_header("Date", handler.date_time_string())
        self.no_body = handler.command == "HEAD" or code < 200 or code in (204, 304)
        if self.length is None and not self.no_body:
            if known_length is not None:
                self.length = known_length
                handler.send_header("Content-Length", str(known_length))
            elif handler.request_version == "HTTP/1.1":
                self.chunked = True
                handler.send_header("Transfer-Encoding", "chunked")
            else:
                handler.lifecycle_close()  # an HTTP/1.0 body is delimited by the close
        if not self.body.complete_within(DISCARD_LIMIT):
            handler.lifecycle_close()  # too much unread to skip: say so before closing
        handler._lc_pending = self._frame(first)
        self.headers_sent = True
        handler.end_headers()


class _WSGIRequestHandler(_StrictHandler):
    """Runs a WSGI app for every request method; built per server with its app.

    The head is read and checked by `_StrictHandler` (the strict parser):
    the environ is made from the parsed head, ``wsgi.input`` is the body
    bounded by its framing (``Content-Length`` or chunked), and a ``100
    Continue`` is sent when the app first reads it.
    """

    protocol_version = "HTTP/1.1"
    server_version = "lifecycle"
    wsgi_app: ClassVar[Callable[..., Iterable[bytes]]]
    _lc_multiprocess: ClassVar[bool] = False  # the environ's wsgi.multiprocess
    _lc_chunked = True
    _lc_lazy_continue = True
    _lc_pending = b""  # body bytes to send with the headers, in one write

    def _lc_method(self) -> Callable[[], object]:
        """Every method is the app's to answer.

        A method, not ``__getattr__``: a class with ``__getattr__`` makes
        every attribute lookup of its instances slow (2.6 µs per request here).
        """
        return self._lc_run_app

    def version_string(self) -> str:
        """The ``Server`` header of error responses."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a line per request would dominate the log; errors are logged as events."""

    def handle_expect_100(self) -> bool:
        """Defer the ``100 Continue`` to the app's first read of ``wsgi.input``.

        An app that answers without reading the body (a 401, a 413) then sends
        none, and the client need not send the body at all.
        """
        return True

    def flush_headers(self) -> None:
        """Send the headers together with the first body bytes."""
        pending, self._lc_pending = self._lc_pending, b""
        if pending and hasattr(self, "_headers_buffer"):
            self._headers_buffer.append(pending)
        super().flush_headers()

    def lifecycle_close(self) -> None:
        """Make the current response the last on this connection."""
        self.close_connection = True

    def _lc_environ(self, head: Head, body: _Body) -> dict[str, Any]:
        server = self.server
        host, port = self.client_address[:2]
        path = head.path.decode("latin-1")
        environ: WSGIEnvironment = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1") if "%" in path else path,
            "QUERY_STRING": head.query.decode("latin-1"),
            "SERVER_NAME": getattr(server, "server_name", "localhost"),
            "SERVER_PORT": str(getattr(server, "server_port", "")),
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_SOFTWARE": self.server_version,
            "REMOTE_ADDR": str(host),
            "REMOTE_PORT": str(port),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": self._lc_multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            CLOSE_CONNECTION_KEY: self.lifecycle_close,
            TRACKED_KEY: True,
        }
        length = head.framing.length
        if length is not None:  # from the framing: absent for a chunked body or none
            environ["CONTENT_LENGTH"] = str(length)
        for name, value in head.headers:
            key = _environ_key(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in environ and key != "CONTENT_TYPE":
                environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + text
            else:
                environ[key] = text
        return environ

    def _lc_run_app(self) -> None:
        head = self._lc_head
        assert head is not None
        body = self._lc_body
        environ = self._lc_environ(head, body)
        response = _Response(self, body)
        result: Iterable[bytes] | None = None
        try:
            result = self.wsgi_app(environ, response.start_response)
            response.whole = isinstance(result, list | tuple) and len(result) == 1
            for data in result:
                response.write(data)
            response.finish()
        except ConnectionError:
            self.close_connection = True  # the client went away: nobody to answer
        except Exception:  # noqa: BLE001 - the app's error becomes a 500, the server goes on
            if body.error is not None:
                # The app failed on a malformed body: the client's fault, answered
                # with the body's status (400, 413) and no stack.
                self._lc_pending = b""
                raise body.error from None
            self._lc_app_failed(response)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - reported; the response is already out
                    _log.exception("WSGI response close() raised", request=self.requestline)
        if body.error is not None:  # the app swallowed it: the framing is lost all the same
            self.close_connection = True

    def _lc_app_failed(self, response: _Response) -> None:
        _log.exception("WSGI app raised", request=self.requestline)
        if response.headers_sent:
            self.close_connection = True  # the response is broken: end it with the connection
            return
        # Nothing was sent: drop anything buffered, so that the 500 is the only head.
        self._lc_pending = b""
        self._headers_buffer: list[bytes] = []
        try:
            self.send_error(500, "Internal Server Error")
        except OSError:
            self.close_connection = True


# Header name (lowercase bytes) -> its environ key; None for a name left out. Bounded:
# names come from clients.
_ENVIRON_KEYS: dict[bytes, str | None] = {b"content-length": None, b"content-type": "CONTENT_TYPE"}
_ENVIRON_KEYS_MAX = 512


def _environ_key(name: bytes) -> str | None:
    """The environ key of a header name: ``HTTP_X_THING`` for ``x-thing``, or None.

    None for a name with ``_`` (``X_Forwarded_For`` would pose as
    ``X-Forwarded-For``) and for Content-Length (set from the framing).
    """
    key = _ENVIRON_KEYS.get(name, "")
    if key == "":
        key = None if b"_" in name else "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_ENVIRON_KEYS) < _ENVIRON_KEYS_MAX:
            _ENVIRON_KEYS[name] = key
    return key


class WSGIServer(HTTPServer):
    """A component serving a WSGI app on `HTTPServer`: threaded, keep-alive, zero-loss.

    Everything `HTTPServer` guarantees holds for the app's requests: tracked
    (``"GET /path"``), `current_token()` is the request's token, ``Connection:
    close`` during the drain, the full stop sequence, requests cut at the
    deadline named in the log. Responses are framed with the app's
    ``Content-Length``, a computed one for a one-item body, or chunked
    encoding; request bodies may have a ``Content-Length`` or be chunked.
    An app that raises gets a 500 (logged with its stack).

    Requests are read as `HTTPServer` reads them (strictly; refused with
    their status and the close, logged without a stack), and the environ is
    made from the parsed head: ``PATH_INFO`` is the target's path
    percent-decoded as latin-1 (the path of an absolute-form target, any
    other path as it is), ``CONTENT_LENGTH`` comes from the framing (absent
    for a chunked body), a header whose name holds ``_`` is dropped.
    ``wsgi.input`` is the body only, read in pieces of at most 64 KiB; an
    app whose read of it fails (a malformed or short body, 413 past
    ``limits.max_body``) makes the answer that status, without a stack. A
    ``100 Continue`` is sent when the app first reads ``wsgi.input``.

    The environ carries ``lifecycle.close_connection`` (a callable: make this
    response the last on its connection) and ``lifecycle.tracked``;
    ``wsgi.multithread`` is True, ``wsgi.multiprocess`` is ``multiprocess``.

    Args:
        wsgi_app: the WSGI application (Flask's ``app``, Django's
            ``get_wsgi_application()``...).
        address: ``(host, port)``; port 0 picks a free port (see `port`).
        backlog: the listen backlog.
        name: for logs; default ``"wsgi:PORT"``.
        limits: as for `HTTPServer`.
        head_timeout: as for `HTTPServer`.
        idle_timeout: as for `HTTPServer`.
        max_connections: as for `HTTPServer`.
        sock: as for `HTTPServer`: serve a listening socket given, not
            ``address``.
        multiprocess: the environ's ``wsgi.multiprocess``: say True when
            other processes serve the same app at the same time (several
            workers on one socket, as `lifecycle.gunicorn.ThreadWorker` with
            more than one worker), so that an app that keeps state in
            process memory (a cache, a session store) knows it is not seen
            by every request.

    Example::

        from myproject.wsgi import application      # Django, or a Flask app

        app = lifecycle.App("web", drain_delay=5, shutdown_timeout=30)
        db = app.add(Pool(dsn))
        app.add(lifecycle.WSGIServer(application, ("0.0.0.0", 8000)), depends_on=[db])
        sys.exit(lifecycle.run(app))

        # a worker process of several, on the socket their parent made:
        lifecycle.WSGIServer(application, sock=inherited, multiprocess=True)

    Added in 0.1; ``limits``, ``head_timeout``, ``idle_timeout``,
    ``max_connections``, ``sock`` and ``multiprocess`` in 0.2.
    """

    _kind = "wsgi"

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        address: tuple[str, int] = _DEFAULT_ADDRESS,
        *,
        backlog: int = 128,
        name: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        head_timeout: float | None = HEAD_TIMEOUT,
        idle_timeout: float | None = IDLE_TIMEOUT,
        max_connections: int | None = None,
        sock: socket.socket | None = None,
        multiprocess: bool = False,
    ) -> None:
        if not callable(wsgi_app):
            raise TypeError(f"WSGIServer needs a WSGI application (a callable), got {wsgi_app!r}")
        if not isinstance(multiprocess, bool):
            raise TypeError(
                f"multiprocess must be True or False (the environ's wsgi.multiprocess), "
                f"got {multiprocess!r}"
            )
        self.wsgi_app = wsgi_app
        self.multiprocess = multiprocess
        """The environ's ``wsgi.multiprocess``: other processes serve the app too."""
        handler = type(
            "WSGIRequestHandler",
            (_WSGIRequestHandler,),
            {
                "wsgi_app": staticmethod(wsgi_app),
                "_lc_multiprocess": multiprocess,
                "__module__": __name__,
            },
        )
        super().__init__(
            handler,
            address,
            backlog=backlog,
            name=name,
            limits=limits,
            head_timeout=head_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            sock=sock,
        )
