"""Thread-per-connection servers that stop without losing a request: `HTTPServer`, `TCPServer`.

Both are components (``start``/``stop``/``ready``) that host a stdlib
``socketserver`` handler class, each connection on its own tracked thread.
What they add to ``ThreadingHTTPServer`` is the stop sequence of
`lifecycle._serving.stopseq` (the same for every server kind), carried out
with threads and sockets:

* **Drain** (from ``app.shutdown_token`` until ``stop``): keep accepting and
  serving, but every HTTP response says ``Connection: close`` and the
  connection is closed after it. A keep-alive client sends its next request
  on the connection it has; a connection closed after a response that did
  not say so loses that request.
* **stop(token)**: close the listening socket itself, after accepting what
  the kernel had queued (connections are then refused, which a load balancer
  sees, instead of accepted and reset); close the idle keep-alive
  connections; wait until only long-lived requests remain; cancel their
  tokens (`mark_long_lived`); wait for every request and connection thread
  (a process that exits under a handler cuts its response); `CUT_MARGIN`
  before the stop deadline, shut down what remains, name every request cut
  and raise `DeadlineExceeded`.

Two stdlib defaults are changed because they lose time or connections: the
listen backlog is 128, not ``socketserver``'s 5 (a burst of connections
beyond the backlog is dropped by the kernel), and Nagle's algorithm is off
(``http.server`` writes the headers and the body in separate sends; with
Nagle on, each keep-alive response waits for the client's delayed ACK,
about 40 ms).

Invariants the sequence relies on:

* Only the connection's own thread reads from its socket. The stop thread
  never reads; it only *peeks* (``MSG_PEEK | MSG_DONTWAIT``) and shuts the
  read side down, which on Linux wakes the blocked reader with EOF while any
  byte already received is still delivered first.
* ``_Conn.awaiting`` is True only while the handler waits for the first
  line of the next request; it is set before that read begins and cleared as
  soon as the line is in. ``_Conn.closing`` is set by the stop thread on an
  awaiting connection (on every connection when it cuts); the handler checks
  it after setting ``awaiting``, so a closing connection never starts
  another request.
* A connection has one `Slot` in the tracker for all its requests: a
  request is begun in it once its request line is in (never while the
  connection is idle) and ended when its response is written, in the
  connection's thread; the stop therefore waits for requests, never for idle
  keep-alive connections. Nothing is made per request.
* No token is made per ordinary request: requests share the server's root
  token (cancelled only at the cut) or, once draining, one shared child of
  it carrying the deadline. A long-lived request gets a token of its own
  when it is marked.
* A handler's ``end_headers`` is its own until a close may be due (the
  drain, ``lifecycle_close()``): no call of lifecycle's runs per response
  until then (see ``_LifecycleHandler._lc_end_headers``).

Added in 0.1.
"""

from __future__ import annotations

import errno
import http.server
import select
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from contextvars import Token as ContextToken
from typing import Any, ClassVar, cast

import structlog

from .._core.errors import DeadlineExceeded
from .._core.tokens import CancelSource, CancelToken, _current, current_token
from .._core.views import ShutdownView
from .inflight import (
    InFlight,
    RequestScope,
    RequestTokens,
    Slot,
    Ticket,
    _on_cancel_inline,
    cut_deadline,
    enter_scope,
    exit_scope,
    mark_long_lived,
)
from .stopseq import CUT_MARGIN, FIRST_REQUEST_GRACE, Waiting, Work, drive_sync

__all__ = ["CUT_MARGIN", "FIRST_REQUEST_GRACE", "HTTPServer", "TCPServer", "mark_long_lived"]

_log = structlog.get_logger("lifecycle")

_LINGER = 2.0  # seconds to wait for the peer's FIN after ours (lingering close)
_LABEL_MAX = 200  # characters of a request target kept in a ticket's label
_CUT_REASON = "server stop deadline: connection cut"

# Errors of accept() after which the next accept may well succeed.
_ACCEPT_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
# Errors of accept() that mean resources are exhausted: back off a little.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Conn:
    """One accepted connection and what the stop sequence needs to know of it."""

    __slots__ = (
        "accepted",
        "addr",
        "awaiting",
        "closing",
        "handler",
        "long_source",
        "slot",
        "sock",
        "ticket",
    )

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.accepted = time.monotonic()
        self.awaiting = False  # the handler waits for the next request line
        self.closing = False  # the stop sequence closed it (set on awaiting only)
        self.ticket: Ticket | None = None  # the TCP connection's ticket
        self.handler: _LifecycleHandler | None = None  # an HTTP connection's, once set up
        # An HTTP connection's requests, one after the other (in progress
        # while ``slot.active``): nothing is made per request.
        self.slot: Slot | None = None
        # The own token of the long-lived request in progress (made when it
        # is marked; for TCP, at the accept): cancelled to end it.
        self.long_source: CancelSource | None = None


def _peer(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


def _has_pending_bytes(sock: socket.socket) -> bool:
    """Whether the peer sent something not yet read, without reading or blocking."""
    try:
        # poll first: on a socket with a timeout, recv() would wait for data.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (OSError, ValueError):  # closed meanwhile, or EAGAIN: nothing to serve
        return False


class _TCPListener(socketserver.TCPServer):
    """The listening socket, shaped as the stdlib server object handlers expect.

    Handlers receive it as ``self.server``; ``self.server.component`` is the
    lifecycle server. Its ``serve_forever`` is never used.
    """

    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler_class: Callable[..., socketserver.BaseRequestHandler],
        backlog: int,
        component: _StreamServer,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.request_queue_size = backlog
        self.component = component
        super().__init__(address, handler_class)


class _HTTPListener(_TCPListener, http.server.HTTPServer):
    """As `_TCPListener`, with the ``server_name``/``server_port`` of ``http.server``."""

    def server_bind(self) -> None:
        """Bind without ``http.server``'s reverse DNS lookup (``getfqdn`` may hang)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _StreamServer:
    """What `HTTPServer` and `TCPServer` share: listener, threads, the stop operations."""

    _kind: ClassVar[str] = "tcp"
    _listener_class: ClassVar[type[_TCPListener]] = _TCPListener
    _end_reason: ClassVar[str] = "server stopping: long-lived request asked to end"

    def __init__(
        self,
        handler_class: type[socketserver.BaseRequestHandler],
        address: tuple[str, int],
        *,
        backlog: int,
        name: str | None,
    ) -> None:
        if not (
            isinstance(handler_class, type)
            and issubclass(handler_class, socketserver.BaseRequestHandler)
        ):
            raise TypeError(
                f"{type(self).__name__} needs a socketserver.BaseRequestHandler subclass "
                f"(the class, not an instance), got {handler_class!r}"
            )
        if (
            not isinstance(address, tuple)
            or len(address) != 2
            or not isinstance(address[0], str)
            or not isinstance(address[1], int)
        ):
            raise TypeError(f"address must be a (host, port) tuple, got {address!r}")
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be an int >= 1, got {backlog!r}")
        self.handler_class = handler_class
        self.backlog = backlog
        self._requested = address
        self._name = name
        self.tracker = InFlight(f"{name or self._kind} requests")
        """The `InFlight` of this server's requests (connections, for `TCPServer`)."""
        self._app: ShutdownView | None = None
        self._listener: _TCPListener | None = None
        self._cond = threading.Condition()
        self._conns: dict[int, _Conn] = {}
        # Every connection thread not yet known to have ended; pruned as it grows.
        self._threads: list[threading.Thread] = []
        # Invariant: every request token descends from _tokens.root, cancelled
        # only at the cut; none is made per ordinary request.
        self._tokens = RequestTokens()
        self._draining = False  # plain reads on the request path
        self._stopping = False
        self._ending_streams = False
        self._forced = False
        self._listening = False
        self._stop_deadline: float | None = None
        self._accept_thread: threading.Thread | None = None
        self._stop_accepting = threading.Event()
        self._listener_closed = threading.Event()
        self._stopped = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._detach_drain: Callable[[], bool] | None = None

    def __repr__(self) -> str:
        if self._stopped.is_set():
            state = "stopped"
        elif self._stopping:
            state = "stopping"
        elif self._draining:
            state = "draining"
        elif self._listening:
            state = "serving"
        else:
            state = "new"
        return (
            f"<{type(self).__name__} {self.name!r} {state} connections={len(self._conns)} "
            f"in_flight={self.tracker.count}>"
        )

    # -- introspection ---------------------------------------------------------

    @property
    def name(self) -> str:
        """For logs: the ``name`` given, else ``"http:PORT"`` (``"tcp:PORT"``...) once bound."""
        if self._name is not None:
            return self._name
        if self._listener is not None:
            return f"{self._kind}:{self.port}"
        return self._kind

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; the requested one before `start`."""
        if self._listener is None:
            return self._requested
        host, port = self._listener.server_address[:2]
        return (str(host), int(port))

    @property
    def port(self) -> int:
        """The bound port (the one chosen, for port 0); the requested one before `start`."""
        return self.address[1]

    @property
    def draining(self) -> bool:
        """True once shutdown was requested or `stop` began: responses say ``Connection: close``."""
        return self._draining

    def ready(self) -> bool:
        """True while the listening socket is open."""
        return self._listening

    # -- the component -----------------------------------------------------------

    def lifecycle_bind(self, app: ShutdownView) -> None:
        """Called by ``App.add``: drain when ``app.shutdown_token`` is cancelled."""
        self._app = app

    def start(self, token: CancelToken | None = None) -> None:
        """Bind, listen and serve in background threads; return once accepting.

        Raises:
            OSError: the address cannot be bound (the message names it).
            RuntimeError: the server was already started (a server starts once).
        """
        if self._listener is not None:
            raise RuntimeError(f"{self.name!r} was already started; a server starts once")
        try:
            self._listener = self._listener_class(
                self._requested, self._wrap_handler(), self.backlog, self
            )
        except OSError as error:
            host, port = self._requested
            raise OSError(
                error.errno,
                f"{type(self).__name__} cannot listen on {host}:{port} "
                f"({error.strerror or error}); choose another address or port",
            ) from None
        self.tracker.name = f"{self.name} {'requests' if self._kind != 'tcp' else 'connections'}"
        self._wake = socket.socketpair()
        self._listening = True
        if self._app is not None:
            self._detach_drain = _on_cancel_inline(self._app.shutdown_token, self._begin_drain)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"lifecycle:{self.name} accept", daemon=True
        )
        self._accept_thread.start()
        host, port = self.address
        _log.info("server listening", component=self.name, host=host, port=port)

    def stop(self, token: CancelToken | None = None) -> None:
        """Stop without losing a request: the sequence in this module's docstring.

        Returns when every connection has ended. `CUT_MARGIN` before the
        token's deadline, what remains is cut, logged by name and reported by
        raising `DeadlineExceeded`, so that the stop still returns within its
        bound. Returns at once when nothing was in flight. Calling it again
        does nothing.

        Raises:
            DeadlineExceeded: requests were cut at the deadline; ``.cut`` names
                every one.
        """
        if token is None:
            token = current_token()
        with self._cond:
            if self._listener is None or self._stopping:
                return
            self._stopping = True
        began = time.monotonic()
        _log.info(
            "server stopping",
            component=self.name,
            in_flight=self.tracker.count,
            connections=len(self._conns),
        )
        cut = False
        try:
            drive_sync(_StopOps(self), token, name=self.name)
        except DeadlineExceeded:
            cut = True
            raise
        finally:
            self._tokens.close()
            if self._detach_drain is not None:
                self._detach_drain()
            if self._wake is not None:
                for end in self._wake:
                    end.close()
            self._stopped.set()
            _log.info(
                "server stopped",
                component=self.name,
                requests=self.tracker.total,
                cut=cut,
                duration=round(time.monotonic() - began, 6),
            )

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until `stop` has finished (its handler threads joined); True if it has.

        For tests and embedding code: a runner that abandoned an overrunning
        ``stop`` returns before it does.
        """
        return self._stopped.wait(timeout)

    # -- accepting ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        assert self._wake is not None
        sock = listener.socket
        sock.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                selector.register(self._wake[0], selectors.EVENT_READ)
                while not self._stop_accepting.is_set():
                    selector.select()
                    self._accept_pending(sock)
            # Invariant: nothing the kernel accepted on our behalf is dropped.
            # Take what is queued, then close the socket itself at once: from
            # then on the kernel refuses, which the load balancer can see.
            self._accept_pending(sock)
        except Exception:  # noqa: BLE001 - the loop must end with the listener closed
            _log.exception("accept loop crashed", component=self.name)
        finally:
            self._listening = False
            listener.server_close()
            self._listener_closed.set()

    def _accept_pending(self, sock: socket.socket) -> None:
        while True:
            try:
                conn_sock, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _ACCEPT_RETRY:
                    continue
                if error.errno in _ACCEPT_BACKOFF:
                    _log.warning(
                        "accept failed; backing off", component=self.name, error=str(error)
                    )
                    self._stop_accepting.wait(0.1)
                    return
                raise
            self._spawn(conn_sock, addr)

    def _spawn(self, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(True)
        conn = _Conn(sock, addr)
        thread = threading.Thread(
            target=self._connection_main,
            args=(conn,),
            name=f"lifecycle:{self.name} {_peer(addr)}",
            daemon=True,
        )
        with self._cond:
            self._conns[id(conn)] = conn
            if len(self._threads) >= 2 * len(self._conns) + 64:
                self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: refuse this one connection
            _log.exception("cannot start a connection thread", component=self.name)
            with self._cond:
                self._conns.pop(id(conn), None)
            sock.close()

    def _close_listener(self, timeout: float | None) -> None:
        self._stop_accepting.set()
        if self._wake is not None:
            with suppress(OSError):
                self._wake[1].send(b"x")
        if not self._listener_closed.wait(timeout):
            # The accept thread is stuck: close the socket under it anyway.
            self._listening = False
            if self._listener is not None:
                self._listener.server_close()

    # -- serving -------------------------------------------------------------------

    def _wrap_handler(self) -> Callable[..., socketserver.BaseRequestHandler]:
        return self.handler_class

    def _serve(self, conn: _Conn) -> None:
        """Run the handler on one connection (in its thread). Overridden by `HTTPServer`."""
        assert self._listener is not None
        # A TCP connection is one long-lived unit: the stop cancels its token.
        ticket = self.tracker.enter(f"connection {_peer(conn.addr)}", long_lived=True)
        if ticket is None:
            return
        conn.ticket = ticket
        source = CancelSource(self._request_token())
        conn.long_source = source
        if self._ending_streams:
            source.cancel(self._end_reason)
        scope = enter_scope(_ConnScope())
        reset = _current.set(source.token)
        try:
            self.handler_class(conn.sock, conn.addr, self._listener)
        finally:
            _current.reset(reset)
            exit_scope(scope)
            conn.ticket = None
            conn.long_source = None
            source.close()
            self.tracker.leave(ticket)

    def _request_token(self) -> CancelToken:
        """The token of a request that begins now: shared, never made per request.

        Before the drain, the root's (cancelled only at the cut). Once
        draining, a shared child of it that expires when work begun now will
        be cut: at the shutdown deadline, or the stop's when that comes first.
        """
        if not self._draining:
            return self._tokens.root
        return self._tokens.draining(self._cut_deadline)

    def _cut_deadline(self) -> float | None:
        shutdown = self._app.shutdown_deadline if self._app is not None else None
        return cut_deadline(shutdown, self._stop_deadline)

    def _mark(self, conn: _Conn, ticket: Ticket) -> CancelToken | None:
        """Make ``ticket``, in progress on ``conn``, long-lived; its new token, or None.

        The request gets a token of its own, a child of the one it had, which
        the stop cancels to end it.
        """
        # Invariant (with _end_long_lived, which sets its flag before it looks
        # at the connections): a request marked while streams are being ended
        # has its token cancelled by one side or the other.
        if conn.long_source is not None:
            return None
        source = CancelSource(current_token())
        conn.long_source = source
        self.tracker.mark_long_lived(ticket)
        if self._ending_streams:
            source.cancel(self._end_reason)
        return source.token

    def _connection_main(self, conn: _Conn) -> None:
        try:
            self._serve(conn)
        except Exception as error:  # noqa: BLE001 - one connection's failure is logged, not fatal
            if not (self._forced or conn.closing or isinstance(error, ConnectionError)):
                _log.exception(
                    "connection handler raised", component=self.name, peer=_peer(conn.addr)
                )
        finally:
            self._close_socket(conn)
            with self._cond:
                self._conns.pop(id(conn), None)
                self._cond.notify_all()

    def _close_socket(self, conn: _Conn) -> None:
        """Send our FIN, then read until the peer's (bounded) before closing.

        Closing with unread input makes the kernel send a reset, which can
        destroy the last response before the client read it; lingering until
        the client closes its side (it does at once after ``Connection:
        close``) avoids that.
        """
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + _LINGER
            while not self._forced:
                left = end - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                if not sock.recv(65536):
                    break
        except OSError:  # reset, timeout, or already closed: nothing to wait for
            pass
        finally:
            sock.close()

    # -- stopping: what the stop sequence's steps do here --------------------------

    def _begin_drain(self) -> None:
        # Runs as the shutdown token fires: flags, no logging, no locks.
        # Invariant (with parse_request, which checks _draining after its
        # handler is findable in conn.handler): every response whose headers
        # end after this says Connection: close -- the handlers found here are
        # armed now, the others arm themselves when they parse.
        self._draining = True
        for conn in list(self._conns.values()):
            handler = conn.handler
            if handler is not None:
                handler._lc_arm()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _close_idle(self, now: float) -> float | None:
        """Close connections that wait for a request; return seconds until the next check."""
        return None

    def _end_long_lived(self) -> None:
        self._ending_streams = True
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            source = conn.long_source
            if source is not None:
                source.cancel(self._end_reason)

    def _wait_connections(self, timeout: float | None, token: CancelToken) -> None:
        detach = _on_cancel_inline(token, self._notify)
        try:
            with self._cond:
                if self._conns and not token.cancelled:
                    self._cond.wait(timeout)
        finally:
            detach()

    def _join_threads(self, timeout: float | None) -> bool:
        """Join every connection thread (bounded); True if none is left running."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        alive = [t for t in threads if t.is_alive()]
        with self._cond:
            self._threads = alive
        if alive and self._forced:
            _log.error(
                "handler threads still running after the stop deadline; abandoned",
                component=self.name,
                threads=sorted(t.name for t in alive),
            )
        return not alive

    def _cut(self) -> list[str]:
        """At the deadline: cut what remains; return the requests cut, oldest first."""
        self._forced = True
        cut = self.tracker.describe(limit=None)
        self.tracker.close()
        self._tokens.cut(_CUT_REASON)
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            conn.closing = True
            with suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        if conns and not cut:
            _log.warning(
                "connections closed at the stop deadline",
                component=self.name,
                connections=len(conns),
            )
        return cut


class _StopOps:
    """The stop sequence's operations (`SyncStopOps`) on a `_StreamServer`."""

    __slots__ = ("server",)

    def __init__(self, server: _StreamServer) -> None:
        self.server = server

    def work(self) -> Work:
        server = self.server
        ordinary, long_lived = server.tracker.counts()
        return Work(ordinary, long_lived, len(server._conns))

    def drain(self, deadline: float | None) -> None:
        server = self.server
        server._stop_deadline = deadline
        server._begin_drain()
        # Requests begun from now on learn the stop's deadline.
        server._tokens.renew(server._cut_deadline())

    def close_listener(self, timeout: float | None) -> None:
        self.server._close_listener(timeout)

    def close_idle(self, now: float) -> float | None:
        due = self.server._close_idle(now)
        return None if due is None else now + due

    def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        server = self.server
        if what == "connections":
            server._wait_connections(timeout, token)
        else:
            server.tracker.wait_idle(token, timeout=timeout, ignore_long_lived=what == "ordinary")

    def end_long_lived(self) -> None:
        self.server._end_long_lived()

    def cut(self) -> list[str]:
        return self.server._cut()

    def join(self, timeout: float | None) -> bool:
        return self.server._join_threads(timeout)


class _ConnScope:
    """The `RequestScope` of a `TCPServer` connection: already long-lived, nothing to mark."""

    __slots__ = ()

    def _lc_mark_long_lived(self) -> None:
        pass


class TCPServer(_StreamServer):
    """A component hosting a plain ``socketserver`` handler, one thread per connection.

    Each connection is one long-lived unit in `tracker` and runs its handler
    with `current_token()` set to the connection's token, cancelled when the
    server stops. Nothing is protocol-aware, so the stop sequence is: close
    the listening socket (after accepting what the kernel had queued), cancel
    every connection's token, wait for the handlers to return, and at the
    stop deadline shut the remaining sockets down and raise
    `DeadlineExceeded` naming the connections cut.

    A handler must therefore watch its token (or its socket) and return when
    it is cancelled.

    Args:
        handler_class: a ``socketserver.BaseRequestHandler`` subclass;
            ``self.server`` in it is a ``socketserver.TCPServer`` whose
            ``component`` attribute is this object.
        address: ``(host, port)``; port 0 picks a free port (see `port`).
        backlog: the listen backlog; 128 by default, not ``socketserver``'s 5,
            beyond which a burst of connections is dropped by the kernel.
        name: for logs; default ``"tcp:PORT"``.

    Example::

        class Echo(socketserver.StreamRequestHandler):
            def handle(self):
                token = lifecycle.current_token()
                self.request.settimeout(0.5)
                while not token.cancelled:
                    try:
                        line = self.rfile.readline()
                    except TimeoutError:
                        continue
                    if not line:
                        return
                    self.wfile.write(line)

        app.add(lifecycle.TCPServer(Echo, ("0.0.0.0", 7000)))

    Added in 0.1.
    """

    _end_reason = "server stopping"

    def __init__(
        self,
        handler_class: type[socketserver.BaseRequestHandler],
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        backlog: int = 128,
        name: str | None = None,
    ) -> None:
        super().__init__(handler_class, address, backlog=backlog, name=name)


# -- HTTP ------------------------------------------------------------------------------

_tls = threading.local()  # hands the _Conn to the handler constructed in its thread


class _LifecycleHandler(http.server.BaseHTTPRequestHandler):
    """Put in front of the user's handler class: tracking, tokens, ``Connection: close``.

    Its overrides run first and call through to the user's class. The hot
    path (no drain) costs a `Slot` begun and ended and a few attribute reads
    and writes per request, about 0.5 µs: the shared token and the scope are
    made current once per connection, no token or ticket is made per
    request, and the headers are inspected only when a close may be due.
    """

    # http.server writes the headers and the body in separate sends: with
    # Nagle on, every keep-alive response waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    _lc_core: ClassVar[HTTPServer]

    _lc_close = False  # lifecycle_close() was called for this request
    # True when lifecycle chose HTTP/1.1 for the class (it said nothing):
    # unframed responses then close their connection.
    _lc_guard_framing: ClassVar[bool] = False
    # Undoes the token made current for this request only (draining, marked).
    _lc_token_reset: ContextToken[CancelToken] | None = None
    # The user's class's methods that ours wrap, bound per generated class
    # (a direct call is cheaper than super() on the per-request path).
    _lc_next_handle_one_request: Callable[[], None]
    _lc_next_parse_request: Callable[[], bool]
    _lc_next_end_headers: Callable[[], None]

    def setup(self) -> None:
        """Take the connection handed over by the server; make the shared token current."""
        conn: _Conn = _tls.conn
        self._lc_conn = conn
        core = self._lc_core
        super().setup()
        # One slot for all the connection's requests; they are named only
        # when someone asks (a log, a cut), from the request line.
        slot = core.tracker.open_slot(self._lc_label)
        if slot is None:  # past the stop deadline: nothing new starts
            conn.closing = True
            slot = Slot()
        conn.slot = self._lc_slot = slot
        conn.handler = self
        # For the whole connection (its own thread): current_token() is the
        # server's shared token and mark_long_lived() finds this handler.
        self._lc_conn_token = _current.set(core._tokens.root)
        self._lc_conn_scope = enter_scope(cast("RequestScope", self))

    def finish(self) -> None:
        """Flush and close the streams; forget the connection's context."""
        try:
            super().finish()
        finally:
            exit_scope(self._lc_conn_scope)
            _current.reset(self._lc_conn_token)
            self._lc_conn.handler = None
            self.__dict__.pop("end_headers", None)  # _lc_arm's: it refers to self
            self._lc_core.tracker.close_slot(self._lc_slot)

    def _lc_label(self) -> str:
        return f"{self.command} {self.path.partition('?')[0][:_LABEL_MAX]}"

    def _lc_serve(self, once: bool) -> None:
        """Serve requests, as a closable idle connection while waiting for each.

        One loop for both ways in: `handle` (the usual one: no call of ours
        per request) and `handle_one_request` (for a class with its own
        ``handle``), so that the per-request bookkeeping exists once.
        """
        conn = self._lc_conn
        slot = self._lc_slot
        core = self._lc_core
        serve_one = self._lc_next_handle_one_request
        while True:
            conn.awaiting = True
            if conn.closing:
                conn.awaiting = False
                self.close_connection = True
                return
            if core._stopping:
                core._notify()  # it may be closed as idle now
            try:
                serve_one()
            finally:
                conn.awaiting = False
                if slot.active:
                    if self._lc_token_reset is not None:
                        _current.reset(self._lc_token_reset)
                        self._lc_token_reset = None
                    source = conn.long_source
                    if source is not None:
                        conn.long_source = None
                        source.close()
                    core.tracker.end(slot)
            if once or self.close_connection:
                return

    def _lc_handle(self) -> None:
        """``handle`` for a class that keeps the stdlib's: its loop, with ours inside."""
        self.close_connection = True
        self._lc_serve(False)

    def _lc_handle_one_request(self) -> None:
        """``handle_one_request`` for a class with its own ``handle``."""
        self._lc_serve(True)

    def parse_request(self) -> bool:
        """Parse the request; then track it (and give it the drain's token once draining)."""
        self._lc_conn.awaiting = False
        if self._lc_close:
            self._lc_close = False
        if not self._lc_next_parse_request():
            return False
        core = self._lc_core
        if not core.tracker.begin(self._lc_slot):  # past the stop deadline
            self.send_error(503, "Server shutting down")
            return False
        if core._draining:
            self._lc_token_reset = _current.set(core._request_token())
            self._lc_arm()
        return True

    @property
    def lifecycle_ticket(self) -> Ticket | None:
        """The `Ticket` of the request being served (None between requests)."""
        slot = self._lc_slot
        return slot if slot.active else None

    def _lc_mark_long_lived(self) -> None:
        slot = self._lc_slot
        if not slot.active:
            return
        token = self._lc_core._mark(self._lc_conn, slot)
        if token is not None:
            reset = _current.set(token)
            if self._lc_token_reset is None:
                self._lc_token_reset = reset

    def lifecycle_close(self) -> None:
        """Make the current response the last on this connection (``Connection: close``)."""
        self._lc_close = True
        self.close_connection = True
        self._lc_arm()

    def _lc_arm(self) -> None:
        """From now on this connection's responses go through `_lc_end_headers`."""
        if "end_headers" not in self.__dict__:
            self.end_headers = self._lc_end_headers  # type: ignore[method-assign]

    # Invariant: end_headers is the user's own (no call of ours per response)
    # until a close may be due: `_lc_arm` makes it this one for the instance
    # once draining or after lifecycle_close(); for a class that left its
    # protocol to us (the framing guard), the class's own is this one.
    def _lc_end_headers(self) -> None:
        """End the headers; a final response says ``Connection: close`` when it must.

        It must while draining and after `lifecycle_close`; a ``Connection:
        keep-alive`` the handler set is then turned into ``close``. For a
        handler class that did not choose HTTP/1.1 itself, it must also when
        the response has neither ``Content-Length`` nor ``Transfer-Encoding``:
        such a body is delimited by the close of the connection.
        """
        if self._lc_core._draining or self._lc_close or self._lc_guard_framing:
            buffer: list[bytes] | None = self.__dict__.get("_headers_buffer")
            # Only final responses: not the interim "HTTP/1.1 100 Continue".
            if buffer and buffer[0][9:10] != b"1" and buffer[0][:5] == b"HTTP/":
                closing = self._lc_core._draining or self._lc_close
                self._lc_close_if_needed(buffer, b"".join(buffer).lower(), closing=closing)
        self._lc_next_end_headers()

    def _lc_close_if_needed(self, buffer: list[bytes], head: bytes, *, closing: bool) -> None:
        if b"\nconnection:" in head:
            if closing and b"\nconnection: close" not in head:
                buffer[:] = [
                    b"Connection: close\r\n" if line[:11].lower() == b"connection:" else line
                    for line in buffer
                ]
                self.close_connection = True
        elif closing or not (
            b"\ncontent-length:" in head
            or b"\ntransfer-encoding:" in head
            or self.command == "HEAD"
            or head[9:12] in (b"204", b"304")
        ):
            buffer.append(b"Connection: close\r\n")
            self.close_connection = True


def _uses_default_protocol(handler_class: type) -> bool:
    for klass in handler_class.__mro__:
        if "protocol_version" in vars(klass):
            return klass is http.server.BaseHTTPRequestHandler
    return True


class HTTPServer(_StreamServer):
    r"""A component hosting any ``http.server.BaseHTTPRequestHandler`` subclass, zero-loss.

    Threaded like ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1
    keep-alive, Nagle off, backlog 128), with the whole graceful sequence of
    this module: during the drain every response says ``Connection: close``
    and the connection closes after it; ``stop`` closes the listening socket,
    closes idle keep-alive connections, waits for the requests in flight,
    ends long-lived ones through their tokens, and cuts what is left at the
    deadline, raising `DeadlineExceeded` that names every request cut.

    Each request is one unit of `tracker` (labelled ``"GET /path"``).
    `current_token()` in a ``do_GET`` is the request's token: cancelled at
    the stop deadline, carrying the shutdown deadline for requests begun after
    shutdown was requested, and, for a request marked long-lived
    (`mark_long_lived`), its own token, cancelled when the stop ends streams.

    The handler class is used through a subclass made for this server (the
    lifecycle hooks go in front of yours). If the class leaves
    ``protocol_version`` at the stdlib default, ``"HTTP/1.1"`` is used; a
    response without ``Content-Length`` is then closed after it, so handlers
    written for HTTP/1.0 still work.

    Args:
        handler_class: the request handler class.
        address: ``(host, port)``; port 0 picks a free port (see `port`).
        backlog: the listen backlog.
        name: for logs; default ``"http:PORT"``.

    Example::

        class Hello(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"hello\\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        app = lifecycle.App("web", drain_delay=5)
        app.add(lifecycle.HTTPServer(Hello, ("0.0.0.0", 8080)))
        sys.exit(lifecycle.run(app))

    Added in 0.1.
    """

    _kind = "http"
    _listener_class = _HTTPListener

    def __init__(
        self,
        handler_class: type[http.server.BaseHTTPRequestHandler],
        address: tuple[str, int] = ("127.0.0.1", 0),
        *,
        backlog: int = 128,
        name: str | None = None,
    ) -> None:
        if not (
            isinstance(handler_class, type)
            and issubclass(handler_class, http.server.BaseHTTPRequestHandler)
        ):
            raise TypeError(
                f"HTTPServer needs an http.server.BaseHTTPRequestHandler subclass, got "
                f"{handler_class!r}; for a plain socketserver handler use TCPServer"
            )
        super().__init__(handler_class, address, backlog=backlog, name=name)

    def _wrap_handler(self) -> Callable[..., socketserver.BaseRequestHandler]:
        user = self.handler_class
        namespace: dict[str, Any] = {
            "_lc_core": self,
            "__module__": user.__module__,
            "__qualname__": user.__qualname__,
            "__doc__": user.__doc__,
        }
        for method in ("handle_one_request", "parse_request", "end_headers"):
            namespace[f"_lc_next_{method}"] = getattr(user, method)
        # Per request, ours runs inside the stdlib's loop when the class keeps
        # it (saving a call per request), else around each of its requests.
        if user.handle is http.server.BaseHTTPRequestHandler.handle:
            namespace["handle"] = _LifecycleHandler._lc_handle
        else:
            namespace["handle_one_request"] = _LifecycleHandler._lc_handle_one_request
        if _uses_default_protocol(user):
            namespace["protocol_version"] = "HTTP/1.1"
            namespace["_lc_guard_framing"] = True
            namespace["end_headers"] = _LifecycleHandler._lc_end_headers
        return cast(
            "type[_LifecycleHandler]", type(user.__name__, (_LifecycleHandler, user), namespace)
        )

    def _serve(self, conn: _Conn) -> None:
        listener = self._listener
        assert listener is not None
        _tls.conn = conn
        try:
            listener.RequestHandlerClass(conn.sock, conn.addr, listener)
        finally:
            _tls.conn = None

    def _close_idle(self, now: float) -> float | None:
        recheck: float | None = None
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            if not conn.awaiting or conn.closing:
                continue
            if conn.slot is None or conn.slot.uses == 0:
                due = conn.accepted + FIRST_REQUEST_GRACE - now
                if due > 0:
                    recheck = due if recheck is None else min(recheck, due)
                    continue
            if _has_pending_bytes(conn.sock):
                continue  # a request is arriving: it is served, with Connection: close
            conn.closing = True
            with suppress(OSError):
                # Wakes the handler's read with EOF (bytes already received
                # are still delivered first); it then closes the connection.
                conn.sock.shutdown(socket.SHUT_RD)
        return recheck
