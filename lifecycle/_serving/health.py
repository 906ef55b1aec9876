"""The probe endpoint: ``/livez``, ``/readyz``, ``/startupz`` and ``/status`` over HTTP.

`HealthServer` is a deliberately small HTTP/1.1 server on the standard
library's sockets, with its own daemon threads, so that health stays
answerable while everything else in the process starts, drains and stops.
The runners start one before the first component starts and close it after
the last one stopped when ``App(health=...)`` is set; it can also be run by
hand around any `App`.

What each path answers (GET and HEAD; any other method is ``405``)::

    /livez      200 from the start to the very end of the shutdown; 503 once
                the app has finished (the server closes right after)
    /readyz     200 iff app.ready: running, no shutdown requested, every
                component ready(); 503 from the instant shutdown is requested
    /startupz   200 once the app has reached RUNNING (and from then on,
                through the shutdown); 503 while starting
    /status, /  JSON: app name, state, live, ready, started, and each
                component's state and a ``failed`` flag (never an error text)

Probes accept ``?verbose`` for a line per check, in the Kubernetes style.

The server is hardened for what reaches a port on a pod network: each
connection has one deadline for its whole request (a slow client gets
``408``), the request line and headers together are limited (``431``), a
malformed or non-ASCII request gets ``400``, and an exception inside gets
``500``; no response ever carries a stack trace or an error message. Every
response says ``Connection: close``: probes are one-shot.

Added in 0.1.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import structlog

from .._core.states import AppState, ComponentState

if TYPE_CHECKING:
    from .._core.views import AppView as App

__all__ = ["HealthServer"]

_log = structlog.get_logger("lifecycle")

MAX_HEAD_BYTES = 8192
"""Request line and headers together, in bytes; more is answered ``431``."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its whole request; slower ones get ``408``."""
MAX_CONNECTIONS = 64
"""Connections served at once; more wait in the listen backlog until one ends."""
BACKLOG = 128
"""``listen()`` backlog (socketserver's default of 5 drops probes under load)."""

_JOIN_TIMEOUT = 1.0  # close() waits at most this long for its threads, in total
_LINGER_TIMEOUT = 1.0  # after a response, how long to drain what the client still sends
_LINGER_BYTES = 65536
_RECV_SIZE = 4096

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")
_HEAD_END = re.compile(rb"\r?\n\r?\n")

_FINAL = frozenset({AppState.STOPPED, AppState.FAILED})
_STARTED = frozenset({AppState.RUNNING, AppState.DRAINING})
_ALLOWED = ("GET", "HEAD")
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


class _ServerState(enum.Enum):
    NEW = "new"
    """Created; not listening yet."""
    SERVING = "serving"
    """Listening and answering."""
    CLOSED = "closed"
    """Closed (or closing). Final: a HealthServer does not reopen."""


class _RequestError(Exception):
    """A request the server answers with an error status, without internals."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class HealthServer:
    """Serves an app's liveness, readiness and startup probes over HTTP.

    ``start()`` binds and listens (``SO_REUSEADDR``, backlog 128) and returns
    once connections are accepted; ``close()`` stops accepting, closes the
    listening socket (new probes are refused at once) and waits a bounded
    time for the probes in flight. ``close()`` is idempotent and safe from
    any thread; a closed server does not restart.

    The answers read the app without taking any lock its runner holds:
    ``/readyz`` evaluates ``app.ready`` exactly once per request (it calls
    the components' ``ready()``, treating an exception as "not ready").

    ``/livez`` stays 200 during the whole shutdown, draining and stopping
    included: a failing liveness probe makes the kubelet kill the container,
    which would cut a graceful shutdown short. Only an app that has finished
    is reported dead. ``/startupz`` stays 200 once the app has been seen
    running (by a probe, or at the shutdown request).

    Args:
        app: the `App` whose health is served.
        host: the address to bind; ``"0.0.0.0"`` (or ``"::"``) to be
            reachable from outside the pod or host, loopback by default.
        port: the port; 0 picks a free one (see `port` after `start`).
        request_timeout: seconds a client has to send its request.

    Example::

        with HealthServer(app, "127.0.0.1", 0) as health:
            url = f"http://127.0.0.1:{health.port}/readyz"
            ...  # 200 while app.ready, else 503

    Usually you only write ``App(..., health=("0.0.0.0", 8081))`` and the
    runner does this. In the Kubernetes container spec::

        ports:
          - {name: health, containerPort: 8081}
        startupProbe:           # until the app first reached RUNNING
          httpGet: {path: /startupz, port: health}
          periodSeconds: 2
          failureThreshold: 30  # allows 60 s to start
        livenessProbe:          # restart a wedged process, not a draining one
          httpGet: {path: /livez, port: health}
          periodSeconds: 10
          failureThreshold: 3
        readinessProbe:         # 503 from the instant SIGTERM arrives
          httpGet: {path: /readyz, port: health}
          periodSeconds: 2
          failureThreshold: 1   # keep periodSeconds * failureThreshold < drain_delay

    and in the pod spec, ``terminationGracePeriodSeconds`` above the app's
    ``shutdown_timeout``.

    Added in 0.1.
    """

    def __init__(
        self,
        app: App,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(
                f"port must be an int from 0 to 65535 (0: any free port), got {port!r}"
            )
        if (
            isinstance(request_timeout, bool)
            or not isinstance(request_timeout, int | float)
            or not math.isfinite(request_timeout)
            or request_timeout <= 0
        ):
            raise ValueError(
                f"request_timeout must be a positive number of seconds, got {request_timeout!r}"
            )
        self.app = app
        self.request_timeout = float(request_timeout)
        self._address: tuple[str, int] = (host, port)
        self._state = _ServerState.NEW
        # Guards _state and _conns. Held only for bookkeeping, never across I/O
        # that can block or across a call into the app.
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._detach: Callable[[], bool] | None = None
        # Invariant: once True, stays True (the app reached RUNNING at some point).
        self._reached_running = False
        # True while MAX_CONNECTIONS are being served and accepting is paused.
        self._paused = False
        self._routes: dict[str, Callable[[bool], tuple[HTTPStatus, str, bytes]]] = {
            "/livez": self._livez,
            "/readyz": self._readyz,
            "/startupz": self._startupz,
            "/status": self._status,
            "/": self._status,
        }

    def __repr__(self) -> str:
        host, port = self._address
        return f"<HealthServer app={self.app.name!r} {host}:{port} {self._state.value}>"

    # -- public ------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` bound once started (the requested ones before)."""
        return self._address

    @property
    def port(self) -> int:
        """The port; once started, the one the system picked for port 0."""
        return self._address[1]

    def start(self) -> None:
        """Bind, listen, and begin answering in a daemon thread.

        Raises:
            OSError: the address cannot be bound (in use, not local, no such host).
            RuntimeError: the server was already started or closed.
        """
        with self._lock:
            if self._state is _ServerState.SERVING:
                raise RuntimeError(f"{self!r} is already serving; start() it only once")
            if self._state is _ServerState.CLOSED:
                raise RuntimeError(
                    f"{self!r} was closed; a HealthServer cannot be restarted, create a new one"
                )
            listener = self._bind()
            try:
                self._wake_r, self._wake_w = socket.socketpair()
            except BaseException:
                listener.close()
                raise
            self._listener = listener
            bound = listener.getsockname()
            self._address = (str(bound[0]), int(bound[1]))
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._acceptor = threading.Thread(
                target=self._serve, name=f"lifecycle-health:{self.port}", daemon=True
            )
            self._state = _ServerState.SERVING
        self._detach = self.app.shutdown_token.on_cancel(self._note_shutdown_request)
        self._acceptor.start()
        _log.info("health endpoint listening", app=self.app.name, address=list(self._address))

    def close(self) -> None:
        """Stop accepting, close the listener, wait (bounded) for probes in flight.

        Idempotent; safe from any thread. Takes at most about a second.
        """
        with self._lock:
            if self._state is not _ServerState.SERVING:
                self._state = _ServerState.CLOSED
                return
            self._state = _ServerState.CLOSED
        until = time.monotonic() + _JOIN_TIMEOUT
        if self._detach is not None:
            self._detach()
        self._wake()
        if self._acceptor is not None:
            self._acceptor.join(max(0.0, until - time.monotonic()))
        if self._listener is not None:
            # Closing the socket itself (not just no longer accepting) makes the
            # kernel refuse new probes instead of queueing them unanswered.
            self._listener.close()
        with self._lock:
            threads = list(self._conns.values())
            for conn in self._conns:
                # Wakes a handler still waiting for its request (it sees EOF);
                # one already answering can still send.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)
        for thread in threads:
            thread.join(max(0.0, until - time.monotonic()))
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        _log.info("health endpoint closed", app=self.app.name, address=list(self._address))

    def __enter__(self) -> HealthServer:
        if self._state is _ServerState.NEW:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the probes ----------------------------------------------------------

    def _started(self) -> bool:
        if self.app.state in _STARTED:
            self._reached_running = True
        return self._reached_running

    def _note_shutdown_request(self) -> None:
        # Runs in the thread that requested the shutdown (maybe a signal
        # handler), before the runner moves the app on: the state read here
        # is the one the request interrupted.
        if self.app.state in _STARTED:
            self._reached_running = True

    def _livez(self, verbose: bool) -> tuple[HTTPStatus, str, bytes]:
        state = self.app.state
        alive = state not in _FINAL
        checks = [(alive, f"runner {'alive' if alive else 'finished'} (app {state.value})")]
        return _probe("livez", alive, checks, verbose, failure="finished")

    def _readyz(self, verbose: bool) -> tuple[HTTPStatus, str, bytes]:
        app = self.app
        ready = app.ready  # calls user ready() methods: exactly once per request
        if not verbose:
            return _probe("readyz", ready, [], verbose, failure="not ready")
        state = app.state
        requested = app.shutdown_reason is not None
        checks = [
            (state is AppState.RUNNING, f"app {state.value}"),
            (not requested, "shutdown requested" if requested else "shutdown not requested"),
        ]
        for name, info in list(app.components.items()):
            ok = info.state is ComponentState.RUNNING
            note = "" if ok or info.critical else ", not critical"
            checks.append((ok, f"component {name} {info.state.value}{note}"))
        return _probe("readyz", ready, checks, verbose, failure="not ready")

    def _startupz(self, verbose: bool) -> tuple[HTTPStatus, str, bytes]:
        started = self._started()
        state = self.app.state
        checks = [(started, f"app {'has reached running' if started else state.value}")]
        return _probe("startupz", started, checks, verbose, failure="not started")

    def _status(self, verbose: bool) -> tuple[HTTPStatus, str, bytes]:
        app = self.app
        ready = app.ready
        state = app.state
        started = self._started()
        components = {
            name: {
                "state": info.state.value,
                "failed": info.state is ComponentState.FAILED
                or info.error is not None
                or info.run_error is not None,
            }
            for name, info in list(app.components.items())
        }
        document = {
            "app": app.name,
            "state": state.value,
            "live": state not in _FINAL,
            "ready": ready,
            "started": started,
            "components": components,
        }
        body = json.dumps(document, indent=2 if verbose else None) + "\n"
        return HTTPStatus.OK, _JSON, body.encode("utf-8")

    # -- serving -------------------------------------------------------------

    def _bind(self) -> socket.socket:
        host, port = self._address
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _serve(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None
        assert wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(wake, selectors.EVENT_READ)
            selector.register(listener, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is wake:
                        with contextlib.suppress(OSError):
                            wake.recv(_RECV_SIZE)
                    elif not self._paused:
                        self._accept(listener)
                with self._lock:
                    if self._state is not _ServerState.SERVING:
                        return
                    full = len(self._conns) >= MAX_CONNECTIONS
                    changed, self._paused = full != self._paused, full
                # At capacity, new connections wait in the kernel's backlog
                # until a handler ends (it wakes us), then the kernel refuses.
                if changed and full:
                    selector.unregister(listener)
                elif changed:
                    selector.register(listener, selectors.EVENT_READ)

    def _wake(self) -> None:
        if self._wake_w is not None:
            # BlockingIOError: the wake-up is already pending; OSError: closed.
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:
            # Out of file descriptors or similar: wait a little rather than spin.
            _log.warning("health endpoint cannot accept", app=self.app.name, error=str(error))
            time.sleep(0.1)
            return
        thread = threading.Thread(
            target=self._handle, args=(conn,), name="lifecycle-health:conn", daemon=True
        )
        with self._lock:
            admitted = self._state is _ServerState.SERVING
            if admitted:
                self._conns[conn] = thread
        if not admitted:
            conn.close()
            return
        thread.start()

    def _handle(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.request_timeout
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            response = self._respond(conn, deadline)
            if response is None:
                return  # the client closed without asking anything
            conn.settimeout(self.request_timeout)
            conn.sendall(response)
            _linger(conn)
        except OSError:
            pass  # the client went away or stalled; nobody is left to answer
        finally:
            with self._lock:
                self._conns.pop(conn, None)
                conn.close()
                wake = self._paused
            if wake:
                self._wake()

    def _respond(self, conn: socket.socket, deadline: float) -> bytes | None:
        """The response to the request on ``conn``; None if none came.

        Raises:
            OSError: the connection failed while reading.
        """
        try:
            head = _read_head(conn, deadline)
            if head is None:
                return None
            return self._answer(head)
        except _RequestError as error:
            if self._state is not _ServerState.SERVING:
                return None  # close() cut the request short: nobody to answer
            return _error_response(error.status)
        except OSError:
            raise
        except Exception:  # noqa: BLE001 - a probe must never take the server down
            _log.error("health endpoint failed on a request", app=self.app.name, exc_info=True)
            return _error_response(HTTPStatus.INTERNAL_SERVER_ERROR)

    def _answer(self, head: bytes) -> bytes:
        method, path, query = _parse(head)
        head_only = method == "HEAD"
        route = self._routes.get(path)
        if route is None:
            return _error_response(HTTPStatus.NOT_FOUND, head_only=head_only)
        if method not in _ALLOWED:
            return _error_response(HTTPStatus.METHOD_NOT_ALLOWED)
        verbose = "verbose" in parse_qs(query, keep_blank_values=True)
        status, content_type, body = route(verbose)
        return _response(status, content_type, body, head_only=head_only)


def _probe(
    name: str,
    ok: bool,
    checks: list[tuple[bool, str]],
    verbose: bool,
    *,
    failure: str,
) -> tuple[HTTPStatus, str, bytes]:
    status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
    if verbose:
        lines = [f"[{'+' if passed else '-'}]{what}" for passed, what in checks]
        lines.append(f"{name} check {'passed' if ok else 'failed'}")
        text = "\n".join(lines)
    else:
        text = "ok" if ok else failure
    return status, _TEXT, (text + "\n").encode("utf-8")


def _read_head(conn: socket.socket, deadline: float) -> bytes | None:
    """The request line and headers, without the blank line; None on a silent EOF.

    Raises:
        _RequestError: too slow (408), too large (431), or cut short (400).
    """
    buffer = bytearray()
    while True:
        # RFC 9112 2.2: ignore empty lines before the request line.
        while buffer and buffer[0] in b"\r\n":
            del buffer[0]
        end = _HEAD_END.search(buffer)
        if end is not None:
            if end.start() > MAX_HEAD_BYTES:
                raise _RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return bytes(buffer[: end.start()])
        if len(buffer) > MAX_HEAD_BYTES:
            raise _RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _RequestError(HTTPStatus.REQUEST_TIMEOUT)
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(_RECV_SIZE)
        except TimeoutError:
            raise _RequestError(HTTPStatus.REQUEST_TIMEOUT) from None
        if not chunk:
            if buffer:
                raise _RequestError(HTTPStatus.BAD_REQUEST)
            return None
        buffer += chunk


def _parse(head: bytes) -> tuple[str, str, str]:
    """``(method, path, query)`` of a request head.

    Raises:
        _RequestError: malformed (400) or an HTTP version other than 1.x (505).
    """
    lines = head.split(b"\n")
    request_line = lines[0].removesuffix(b"\r")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise _RequestError(HTTPStatus.BAD_REQUEST)
    for line in lines[1:]:
        if _HEADER_LINE.fullmatch(line.removesuffix(b"\r")) is None:
            raise _RequestError(HTTPStatus.BAD_REQUEST)
    if match.group(3) != b"1":
        raise _RequestError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    method = match.group(1).decode("ascii")
    target = match.group(2).decode("ascii")
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target.startswith(("http://", "https://")):
        try:
            parts = urlsplit(target)
        except ValueError:
            raise _RequestError(HTTPStatus.BAD_REQUEST) from None
        path, query = parts.path or "/", parts.query
    else:
        raise _RequestError(HTTPStatus.BAD_REQUEST)
    return method, path, query


def _linger(conn: socket.socket) -> None:
    """Half-close, then drain what the client still sends (bounded).

    Closing a socket with unread input makes the kernel send a reset, which
    can destroy the response before the client reads it (e.g. after a 431).
    """
    conn.shutdown(socket.SHUT_WR)
    until = time.monotonic() + _LINGER_TIMEOUT
    drained = 0
    while drained < _LINGER_BYTES:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return
        conn.settimeout(remaining)
        try:
            data = conn.recv(_RECV_SIZE)
        except TimeoutError:
            return
        if not data:
            return
        drained += len(data)


def _error_response(status: HTTPStatus, *, head_only: bool = False) -> bytes:
    extra = [("Allow", ", ".join(_ALLOWED))] if status is HTTPStatus.METHOD_NOT_ALLOWED else []
    body = f"{status.value} {status.phrase.lower()}\n".encode("ascii")
    return _response(status, _TEXT, body, head_only=head_only, extra=extra)


def _response(
    status: HTTPStatus,
    content_type: str,
    body: bytes,
    *,
    head_only: bool = False,
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    """One complete response, to be written in one send (no Nagle delay between parts)."""
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in extra or ())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body
