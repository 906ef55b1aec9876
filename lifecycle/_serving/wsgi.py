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

A request is tracked until the server closes the response iterable (PEP 3333
requires it to), so streaming bodies count as in flight while they stream.

Added in 0.1.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, ClassVar, Final
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment
from wsgiref.util import is_hop_by_hop

import structlog

from .._core.tokens import CancelSource, CancelToken, _current
from .http import HTTPServer, _scope
from .inflight import InFlight, Ticket

__all__ = ["CLOSE_CONNECTION_KEY", "TRACKED_KEY", "WSGIMiddleware", "WSGIServer"]

_log = structlog.get_logger("lifecycle")

CLOSE_CONNECTION_KEY: Final = "lifecycle.close_connection"
"""Environ key of a callable that makes the response the last on its connection.

`WSGIServer` provides it; other servers may. Calling it after the response
headers were sent still closes the connection after the response."""

TRACKED_KEY: Final = "lifecycle.tracked"
"""Environ key set to True by a server that tracks requests and sets their token
itself (`WSGIServer`): `WSGIMiddleware` then passes requests straight through."""

_DISCARD_LIMIT = 64 * 1024  # unread request body we read and drop to keep the connection
_CHUNK_READ = 64 * 1024

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

    The token of a request begun before the drain is shared by all such
    requests (it is cancelled when only long-lived ones remain at stop, or
    at the stop deadline); a request begun during the drain has its own,
    which carries the shutdown deadline.

    It is also a component: registered with ``app.add``, its ``stop`` waits
    for the requests in flight (ending long-lived ones through their tokens,
    see `mark_long_lived`) and logs those still running at its deadline.
    Make the resources the app uses depend on it, so that they close only
    after the last request::

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
        self, wsgi_app: WSGIApplication, app: Any = None, *, name: str | None = None
    ) -> None:
        if not callable(wsgi_app):
            raise TypeError(
                f"WSGIMiddleware needs a WSGI application (a callable), got {wsgi_app!r}"
            )
        self.wsgi_app = wsgi_app
        self.name = name or "wsgi"
        self.tracker = InFlight(f"{self.name} requests")
        """The `InFlight` of the requests this middleware tracks."""
        self._app: Any = None
        # Invariant: requests begun before the drain (and before stop) share
        # _before's token, so the hot path creates no source. By the time
        # stop ends the long-lived requests, every such request still in
        # flight is long-lived (none can begin any more), so cancelling
        # _before ends exactly them. Requests begun later have their own
        # source, a child of _during, kept in _sources for that purpose.
        self._before = CancelSource()
        self._during = CancelSource()
        self._sources: dict[int, CancelSource] = {}
        self._stopping = False
        self._ending_streams = False
        if app is not None:
            self.lifecycle_bind(app)

    def __repr__(self) -> str:
        return f"<WSGIMiddleware {self.name!r} in_flight={self.tracker.count}>"

    def lifecycle_bind(self, app: Any) -> None:
        """Called by ``App.add``: drain when ``app.shutdown_token`` is cancelled."""
        self._app = app

    @property
    def draining(self) -> bool:
        """True once the app's shutdown was requested (or `stop` began)."""
        app = self._app
        return self._stopping or (app is not None and app.shutdown_token.cancelled)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request (the WSGI protocol)."""
        if environ.get(TRACKED_KEY):
            return self.wsgi_app(environ, start_response)
        ticket = self.tracker.enter(_label(environ))
        if ticket is None:  # someone closed the tracker: refuse rather than start
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"shutting down\n"]
        if self.draining:
            return self._call_draining(environ, start_response, ticket)
        request = _MiddlewareRequest(self, ticket, self._before.token, None)
        return self._serve(request, environ, start_response)

    def _call_draining(
        self, environ: WSGIEnvironment, start_response: StartResponse, ticket: Ticket
    ) -> Iterable[bytes]:
        app = self._app
        deadline = app.shutdown_deadline if app is not None else None
        source = CancelSource(self._during.token, deadline=deadline)
        self._sources[ticket.id] = source
        request = _MiddlewareRequest(self, ticket, source.token, source)

        def closing_start(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            _ask_close(environ, start_response)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self._serve(request, environ, closing_start)

    def _serve(
        self,
        request: _MiddlewareRequest,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Call the app under the request's token; the request ends with its body."""
        reset = request.enter()
        try:
            result = self.wsgi_app(environ, start_response)
        except BaseException:
            request.end()
            raise
        finally:
            request.exit(reset)
        return _body(result, request)

    def stop(self, token: CancelToken) -> None:
        """Wait for the requests in flight; end long-lived ones; log what is cut.

        New requests are still served (the hosting server decides when to
        stop accepting them), each told to close its connection.
        """
        self._stopping = True
        if self.tracker.wait_idle(token, ignore_long_lived=True):
            self._end_streams()
            if self.tracker.wait_idle(token):
                return
        cut = self.tracker.describe()
        self._before.cancel("stop deadline: request abandoned")
        self._during.cancel("stop deadline: request abandoned")
        if cut:
            _log.error(
                "requests still running at the stop deadline",
                component=self.name,
                cut=cut,
                hint="raise stop_timeout, or make these handlers honour lifecycle.current_token()",
            )

    def _end_streams(self) -> None:
        reason = "server stopping: long-lived request asked to end"
        self._ending_streams = True
        self._before.cancel(reason)
        for ticket in self.tracker.running():
            source = self._sources.get(ticket.id)
            if ticket.long_lived and source is not None:
                source.cancel(reason)


class _MiddlewareRequest:
    """One request under `WSGIMiddleware`: its ticket, its token, its end."""

    __slots__ = ("middleware", "source", "ticket", "token")

    def __init__(
        self,
        middleware: WSGIMiddleware,
        ticket: Ticket,
        token: CancelToken,
        source: CancelSource | None,
    ) -> None:
        self.middleware = middleware
        self.ticket = ticket
        self.token = token
        self.source = source

    def enter(self) -> tuple[Any, Any]:
        """Make the request's token current and its scope findable; return the resets."""
        return _current.set(self.token), _scope.set(self)

    @staticmethod
    def exit(reset: tuple[Any, Any]) -> None:
        _scope.reset(reset[1])
        _current.reset(reset[0])

    def _lc_mark_long_lived(self) -> None:
        mw = self.middleware
        self.ticket.long_lived = True
        mw.tracker.notify()
        if mw._ending_streams and self.source is not None:
            self.source.cancel("server stopping: long-lived request asked to end")

    def end(self) -> None:
        mw = self.middleware
        if self.source is not None:
            mw._sources.pop(self.ticket.id, None)
            self.source.close()
        mw.tracker.leave(self.ticket)


def _body(result: Iterable[bytes], request: _MiddlewareRequest) -> Iterable[bytes]:
    # A list or tuple runs no app code while iterated: no token to set then.
    if isinstance(result, list | tuple):
        return _TrackedList(result, request)
    return _TrackedBody(result, request)


class _TrackedList:
    """A fully built body: iterated as is; the request ends when the server closes it."""

    __slots__ = ("_items", "_request")

    def __init__(self, items: list[bytes] | tuple[bytes, ...], request: _MiddlewareRequest) -> None:
        self._items = items
        self._request: _MiddlewareRequest | None = request

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._items)

    def __len__(self) -> int:
        # Lets a server set Content-Length for a one-item body, as without us.
        return len(self._items)

    def close(self) -> None:
        """End the request (PEP 3333: the server calls this once it is done)."""
        request, self._request = self._request, None
        if request is not None:
            request.end()


class _TrackedBody:
    """The app's response iterable; the request is in flight until it is closed."""

    __slots__ = ("_inner", "_iterator", "_request")

    def __init__(self, inner: Iterable[bytes], request: _MiddlewareRequest) -> None:
        self._inner = inner
        self._request: _MiddlewareRequest | None = request
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _TrackedBody:
        return self

    def __next__(self) -> bytes:
        request = self._request
        if request is None:
            raise StopIteration
        if self._iterator is None:
            self._iterator = iter(self._inner)
        reset = request.enter()
        try:
            return next(self._iterator)
        finally:
            request.exit(reset)

    def close(self) -> None:
        """Close the app's iterable (PEP 3333), then end the request."""
        request, self._request = self._request, None
        if request is None:
            return
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                reset = request.enter()
                try:
                    close()
                finally:
                    request.exit(reset)
        finally:
            request.end()


# -- the server -------------------------------------------------------------------------


class _Body:
    """``wsgi.input`` of a request with a ``Content-Length``: never reads past the body."""

    __slots__ = ("_left", "_rfile")

    def __init__(self, rfile: Any, length: int) -> None:
        self._rfile = rfile
        self._left = length

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left by default)."""
        return self._read_with(self._rfile.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, at most ``size`` bytes."""
        return self._read_with(self._rfile.readline, size)

    def _read_with(self, method: Callable[[int], bytes], size: int | None) -> bytes:
        """Call ``method`` for at most what is left of the body; count what it read."""
        left = self._left
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = method(size)
        self._left = left - len(data) if data else 0
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        """Read lines until ``hint`` bytes (all by default)."""
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def complete_within(self, limit: int) -> bool:
        """Whether what is left unread is known to be at most ``limit`` bytes."""
        return self._left <= limit

    def discard(self, limit: int) -> bool:
        """Read and drop what the app left unread, up to ``limit``; True if none remains."""
        if self._left > limit:
            return False
        while self._left and self.read(_CHUNK_READ):
            pass
        return self._left == 0


class _ChunkedBody(_Body):
    """``wsgi.input`` of a request with ``Transfer-Encoding: chunked``."""

    __slots__ = ("_buffer", "_chunk_left", "_done")

    def __init__(self, rfile: Any) -> None:
        super().__init__(rfile, 0)
        self._buffer = bytearray()
        self._chunk_left = 0
        self._done = False

    def _fill(self) -> bool:
        """Read more of the body into the buffer; False at its end."""
        if self._done:
            return False
        rfile = self._rfile
        if self._chunk_left == 0:
            line = rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ValueError(f"malformed chunk size line {line[:40]!r}") from None
            if size == 0:
                while rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are dropped
                self._done = True
                return False
            self._chunk_left = size
        data = rfile.read(min(self._chunk_left, _CHUNK_READ))
        if not data:
            raise ValueError("the chunked request body ended early")
        self._buffer += data
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and rfile.readline(3).strip():
            raise ValueError("a chunk did not end with CRLF")
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all by default)."""
        want = -1 if size is None or size < 0 else size
        while (want < 0 or len(self._buffer) < want) and self._fill():
            pass
        return self._take(len(self._buffer) if want < 0 else want)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, at most ``size`` bytes."""
        want = -1 if size is None or size < 0 else size
        while b"\n" not in self._buffer and (want < 0 or len(self._buffer) < want) and self._fill():
            pass
        end = self._buffer.find(b"\n") + 1 or len(self._buffer)
        return self._take(end if want < 0 else min(end, want))

    def complete_within(self, limit: int) -> bool:
        """Whether the body was read to its end (its unread size is unknown)."""
        return self._done

    def discard(self, limit: int) -> bool:
        """Read and drop the rest, up to ``limit`` bytes; True if the body ended."""
        dropped = len(self._buffer)
        self._buffer.clear()
        while dropped <= limit and self._fill():
            dropped += len(self._buffer)
            self._buffer.clear()
        return self._done


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
        if not isinstance(status, str) or not status[:3].isdigit():
            raise TypeError(f"the status must be a str like '200 OK', got {status!r}")
        if not isinstance(headers, list):
            raise TypeError(f"headers must be a list of (name, value), got {headers!r}")
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
        if not self.body.complete_within(_DISCARD_LIMIT):
            handler.lifecycle_close()  # too much unread to skip: say so before closing
        handler._lc_pending = self._frame(first)
        self.headers_sent = True
        handler.end_headers()


class _WSGIRequestHandler(BaseHTTPRequestHandler):
    """Runs a WSGI app for every request method; built per server with its app."""

    protocol_version = "HTTP/1.1"
    server_version = "lifecycle"
    wsgi_app: ClassVar[Callable[..., Iterable[bytes]]]
    _lc_pending = b""  # body bytes to send with the headers, in one write

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._lc_run_app
        raise AttributeError(name)

    def version_string(self) -> str:
        """The ``Server`` header of error responses."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a line per request would dominate the log; errors are logged as events."""

    def flush_headers(self) -> None:
        """Send the headers together with the first body bytes."""
        pending, self._lc_pending = self._lc_pending, b""
        if pending and hasattr(self, "_headers_buffer"):
            self._headers_buffer.append(pending)
        super().flush_headers()

    def lifecycle_close(self) -> None:
        """Make the current response the last on this connection."""
        self.close_connection = True

    def _lc_environ(self, body: _Body) -> dict[str, Any]:
        path, _, query = self.path.partition("?")
        if "://" in path:  # absolute-form target (a proxy request): keep the path
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        server = self.server
        host, port = self.client_address[:2]
        environ: WSGIEnvironment = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(path, "iso-8859-1"),
            "QUERY_STRING": query,
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
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            CLOSE_CONNECTION_KEY: self.lifecycle_close,
            TRACKED_KEY: True,
        }
        for name, value in self.headers.items():
            if "_" in name:
                continue  # X_Forwarded_For would pose as X-Forwarded-For
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
                continue
            key = "HTTP_" + key
            if key in environ:
                environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                environ[key] = value
        if isinstance(body, _ChunkedBody):
            environ.pop("CONTENT_LENGTH", None)
        return environ

    def _lc_body(self) -> _Body | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _ChunkedBody(self.rfile)
        length = self.headers.get("Content-Length")
        if length is None:
            return _Body(self.rfile, 0)
        length = length.strip()
        if not length.isdigit():
            return None
        return _Body(self.rfile, int(length))

    def _lc_run_app(self) -> None:
        body = self._lc_body()
        if body is None:
            self.send_error(400, "Bad Content-Length")
            return
        environ = self._lc_environ(body)
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
            self._lc_app_failed(response)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - reported; the response is already out
                    _log.exception("WSGI response close() raised", request=self.requestline)
        try:
            if not body.discard(_DISCARD_LIMIT):
                self.close_connection = True
        except (OSError, ValueError):
            self.close_connection = True

    def _lc_app_failed(self, response: _Response) -> None:
        _log.exception("WSGI app raised", request=self.requestline)
        if response.headers_sent:
            self.close_connection = True  # the response is broken: end it with the connection
            return
        self._lc_pending = b""
        try:
            self.send_error(500, "Internal Server Error")
        except OSError:
            self.close_connection = True


class WSGIServer(HTTPServer):
    """A component serving a WSGI app on `HTTPServer`: threaded, keep-alive, zero-loss.

    Everything `HTTPServer` guarantees holds for the app's requests: tracked
    (``"GET /path"``), `current_token()` is the request's token, ``Connection:
    close`` during the drain, the full stop sequence, requests cut at the
    deadline named in the log. Responses are framed with the app's
    ``Content-Length``, a computed one for a one-item body, or chunked
    encoding; request bodies may have a ``Content-Length`` or be chunked.
    An app that raises gets a 500 (logged with its stack).

    The environ carries ``lifecycle.close_connection`` (a callable: make this
    response the last on its connection) and ``lifecycle.tracked``.

    Args:
        wsgi_app: the WSGI application (Flask's ``app``, Django's
            ``get_wsgi_application()``...).
        address: ``(host, port)``; port 0 picks a free port (see `port`).
        backlog: the listen backlog.
        name: for logs; default ``"wsgi:PORT"``.

    Example::

        from myproject.wsgi import application      # Django, or a Flask app

        app = lifecycle.App("web", drain_delay=5, shutdown_timeout=30)
        db = app.add(Pool(dsn))
        app.add(lifecycle.WSGIServer(application, ("0.0.0.0", 8000)), depends_on=[db])
        sys.exit(lifecycle.run(app))

    Added in 0.1.
    """

    _kind = "wsgi"

    def __init__(
        self,
        wsgi_app: WSGIApplication,
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        backlog: int = 128,
        name: str | None = None,
    ) -> None:
        if not callable(wsgi_app):
            raise TypeError(f"WSGIServer needs a WSGI application (a callable), got {wsgi_app!r}")
        self.wsgi_app = wsgi_app
        handler = type(
            "WSGIRequestHandler",
            (_WSGIRequestHandler,),
            {"wsgi_app": staticmethod(wsgi_app), "__module__": __name__},
        )
        super().__init__(handler, address, backlog=backlog, name=name)
