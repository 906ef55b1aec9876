"""Thread-per-connection servers that stop without losing a request: `HTTPServer`, `TCPServer`.

Both are components (``start``/``stop``/``ready``) that host a stdlib
``socketserver`` handler class, each connection on its own tracked thread.
What they add to ``ThreadingHTTPServer`` is the shutdown sequence that
ROLLING-FINDINGS measured to lose nothing in a rolling deploy:

* **Drain** (from ``app.shutdown_token`` until ``stop``): keep accepting and
  serving, but every HTTP response says ``Connection: close`` and the
  connection is closed after it (lesson 1), so no client sends a request on a
  connection that is about to go away.
* **stop(token)**:

  1. close the listening socket itself, after serving what the kernel had
     already queued on it (lesson 2): new connections are then *refused*,
     which a load balancer sees, instead of accepted and reset;
  2. close the idle keep-alive connections: those whose handler waits for
     the next request with no byte pending; one with a request already
     arriving is served, with ``Connection: close``;
  3. wait (``InFlight.wait_idle``) until only long-lived requests remain;
  4. cancel the tokens of the long-lived ones (streams, long polls, see
     `mark_long_lived`) and wait for every request to end;
  5. wait for every connection thread (lesson 3). `CUT_MARGIN` before the
     stop token's deadline, what remains is cut: sockets are shut down, the
     requests cut are logged by name (``InFlight.describe``) and the threads
     are joined with a bound, so that the stop returns within its budget.

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
* A request's ticket is entered once its request line is in (never for an
  idle connection) and left when its response is written, in the connection's
  thread; ``InFlight.wait_idle`` therefore waits for requests, never for
  keep-alive connections.

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
from contextvars import ContextVar
from typing import Any, ClassVar, Protocol, cast

import structlog

from .._core.errors import DeadlineExceeded
from .._core.tokens import CancelSource, CancelToken, _current, current_token, use_token
from .inflight import InFlight, Ticket, cut_deadline

__all__ = ["HTTPServer", "TCPServer", "mark_long_lived"]

_log = structlog.get_logger("lifecycle")

FIRST_REQUEST_GRACE = 1.0
"""Seconds a new connection may stay silent at stop before it counts as idle.

A connection accepted just before the listener closed usually has its first
request on the way; it is not closed before this grace has passed since it
was accepted."""

_LINGER = 2.0  # seconds to wait for the peer's FIN after ours (lingering close)
_FORCE_JOIN = 1.0  # seconds to join cut handler threads when the stop has no deadline

CUT_MARGIN = 0.1
"""Seconds before the stop deadline at which what still runs is cut.

The runner abandons a stop at its deadline; cutting slightly earlier lets the
stop shut the remaining connections, log what it cut by name and join the
handler threads within its bound. With less than ``10 * CUT_MARGIN`` left, a
tenth of what is left is kept instead (as `AsyncStreamServer` does)."""
_LABEL_MAX = 200  # characters of a request target kept in a ticket's label

# Errors of accept() after which the next accept may well succeed.
_ACCEPT_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
# Errors of accept() that mean resources are exhausted: back off a little.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class _Scope(Protocol):
    """Whatever serves the current request: it knows how to make it long-lived."""

    def _lc_mark_long_lived(self) -> None: ...


_scope: ContextVar[_Scope | None] = ContextVar("lifecycle_request_scope", default=None)


def mark_long_lived() -> bool:
    r"""Mark the request being served in this thread as long-lived.

    A long-lived request -- a stream, a long poll, a websocket -- would hold a
    graceful stop until its deadline. Once marked, the server's stop does not
    wait for it with the others: when only long-lived requests remain it
    cancels their tokens (`current_token()` in the handler), and the handler
    is expected to end the stream promptly and return. A request marked after
    that point has its token cancelled at once.

    Works in handlers served by `HTTPServer`, `TCPServer`, `WSGIServer` and
    under `WSGIMiddleware`.

    Returns:
        True if there was a request to mark; False outside any request.

    Example::

        class Events(BaseHTTPRequestHandler):
            def do_GET(self):
                lifecycle.mark_long_lived()
                token = lifecycle.current_token()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                while not token.wait(1.0):      # until the server stops
                    self.wfile.write(b"data: tick\\n\\n")

    Added in 0.1.
    """
    scope = _scope.get()
    if scope is None:
        return False
    scope._lc_mark_long_lived()
    return True


class _Conn:
    """One accepted connection and what the stop sequence needs to know of it."""

    __slots__ = (
        "accepted",
        "addr",
        "awaiting",
        "closing",
        "requests",
        "sock",
        "source",
        "ticket",
    )

    def __init__(self, sock: socket.socket, addr: Any, parent: CancelToken) -> None:
        self.sock = sock
        self.addr = addr
        # Cancelled when this connection's long-lived request must end, or at
        # the stop deadline (through the server's root source).
        self.source = CancelSource(parent)
        self.accepted = time.monotonic()
        self.awaiting = False  # the handler waits for the next request line
        self.closing = False  # the stop sequence closed it (set on awaiting only)
        self.requests = 0  # request lines received so far
        self.ticket: Ticket | None = None  # the request in progress, if any


def _cut_source(token: CancelToken) -> CancelSource:
    """A child of ``token`` that fires `CUT_MARGIN` before its deadline."""
    remaining = token.remaining()
    if remaining is None:
        return CancelSource(token)
    margin = min(CUT_MARGIN, remaining / 10)
    return CancelSource(token, timeout=max(0.0, remaining - margin))


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
    """What `HTTPServer` and `TCPServer` share: listener, threads, the stop sequence."""

    _kind: ClassVar[str] = "tcp"
    _listener_class: ClassVar[type[_TCPListener]] = _TCPListener

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
        self._app: Any = None
        self._listener: _TCPListener | None = None
        self._cond = threading.Condition()
        self._conns: dict[int, _Conn] = {}
        # Every connection thread not yet known to have ended; pruned as it grows.
        self._threads: list[threading.Thread] = []
        # Parent of every connection's source; cancelled at the stop deadline.
        self._root = CancelSource()
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

    def lifecycle_bind(self, app: Any) -> None:
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
            self._detach_drain = self._app.shutdown_token.on_cancel(self._begin_drain)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"lifecycle:{self.name} accept", daemon=True
        )
        self._accept_thread.start()
        host, port = self.address
        _log.info("server listening", component=self.name, host=host, port=port)

    def stop(self, token: CancelToken | None = None) -> None:
        """Stop without losing a request: the sequence in this module's docstring.

        Returns when every connection has ended. `CUT_MARGIN` before the
        token's deadline, what remains is cut and logged by name, so that the
        stop still returns within its bound. Returns at once when nothing was
        in flight. Calling it again does nothing.
        """
        if token is None:
            token = current_token()
        if self._listener is None or self._stopping:
            return
        began = time.monotonic()
        with self._cond:
            self._stopping = True
            self._draining = True
            self._stop_deadline = token.deadline
        _log.info(
            "server stopping",
            component=self.name,
            in_flight=self.tracker.count,
            connections=len(self._conns),
        )
        finished = False
        cut_work: list[str] = []
        try:
            with _cut_source(token) as cut:
                wake = cut.token.on_cancel(self._notify)
                try:
                    self._close_listener(cut.token)
                    finished = self._drain(cut.token) and self._join_connections(cut.token)
                finally:
                    wake()
        finally:
            if not finished:
                # Join the cut threads in half of what is left: the other
                # half is for returning before the runner abandons us.
                remaining = token.remaining()
                cut_work = self._force(
                    _FORCE_JOIN if remaining is None else max(remaining / 2, 0.01)
                )
            self._root.close()
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
            cut=not finished,
            duration=round(time.monotonic() - began, 6),
        )
        if cut_work:
            raise DeadlineExceeded(self.name, cut_work)

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
        conn = _Conn(sock, addr, self._root.token)
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
            conn.source.close()
            sock.close()

    def _close_listener(self, token: CancelToken) -> None:
        self._stop_accepting.set()
        if self._wake is not None:
            with suppress(OSError):
                self._wake[1].send(b"x")
        if not self._listener_closed.wait(token.remaining()):
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
        ticket = self.tracker.enter(f"connection {_peer(conn.addr)}")
        if ticket is None:
            return
        conn.ticket = ticket
        source = self._request_source(conn.source.token)
        scope = _ConnScope(self, conn, ticket)
        reset = _scope.set(scope)
        try:
            with use_token(source.token if source is not None else conn.source.token):
                self.handler_class(conn.sock, conn.addr, self._listener)
        finally:
            _scope.reset(reset)
            conn.ticket = None
            if source is not None:
                source.close()
            self.tracker.leave(ticket)

    def _request_source(self, parent: CancelToken) -> CancelSource | None:
        """A child of ``parent`` that expires when work begun now will be cut.

        None on the hot path (no shutdown requested): the connection's token
        serves the request. Once draining, the deadline is the shutdown
        deadline, or the stop's when that comes first.
        """
        if not self._draining:
            return None
        shutdown = self._app.shutdown_deadline if self._app is not None else None
        deadline = cut_deadline(shutdown, self._stop_deadline)
        if deadline is None:
            return None
        return CancelSource(parent, deadline=deadline)

    def _connection_main(self, conn: _Conn) -> None:
        try:
            self._serve(conn)
        except Exception as error:  # noqa: BLE001 - one connection's failure is logged, not fatal
            if not (self._forced or conn.closing or isinstance(error, ConnectionError)):
                _log.exception(
                    "connection handler raised", component=self.name, peer=_peer(conn.addr)
                )
        finally:
            conn.source.close()  # before the socket: a cancel callback may still use it
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

    # -- stopping ------------------------------------------------------------------

    def _begin_drain(self) -> None:
        # May run inside a signal handler (request_shutdown): flags only, no
        # logging, no locks.
        self._draining = True

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _drain(self, token: CancelToken) -> bool:
        """Steps 2-4 of the stop sequence; True if every request ended in time."""
        self._end_streams("server stopping")
        return self.tracker.wait_idle(token)

    def _end_streams(self, reason: str) -> None:
        """Cancel the tokens of long-lived requests (all connections, for TCP)."""
        self._ending_streams = True
        self._root.cancel(reason)

    def _close_idle(self, now: float) -> float | None:
        """Close connections that wait for a request; return seconds until the next check."""
        return None

    def _join_connections(self, token: CancelToken) -> bool:
        """Step 5: wait until every connection thread ended; False at the deadline."""
        with self._cond:
            while self._conns:
                recheck = self._close_idle(time.monotonic())
                if token.cancelled:
                    return False
                waits = [w for w in (token.remaining(), recheck) if w is not None]
                self._cond.wait(min([0.5, *waits]))
        return self._join_threads(token.remaining())

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
        return not alive

    def _force(self, join: float) -> list[str]:
        """At the deadline: cut what remains, say what was cut, join with a bound."""
        self._forced = True
        cut = self.tracker.describe()
        self.tracker.close()
        self._root.cancel("server stop deadline: connection cut")
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            conn.closing = True
            with suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        if cut:
            _log.error(
                "work cut at the stop deadline",
                component=self.name,
                running=cut,
                connections=len(conns),
                hint="raise stop_timeout, or make these handlers honour lifecycle.current_token()",
            )
        elif conns:
            _log.warning(
                "connections closed at the stop deadline",
                component=self.name,
                connections=len(conns),
            )
        if not self._join_threads(join):
            with self._cond:
                stuck = sorted(t.name for t in self._threads if t.is_alive())
            _log.error(
                "handler threads still running after the stop deadline; abandoned",
                component=self.name,
                threads=stuck,
            )
        return cut


class _ConnScope:
    """The `_Scope` of a `TCPServer` connection."""

    __slots__ = ("conn", "server", "ticket")

    def __init__(self, server: _StreamServer, conn: _Conn, ticket: Ticket) -> None:
        self.server = server
        self.conn = conn
        self.ticket = ticket

    def _lc_mark_long_lived(self) -> None:
        _mark(self.server, self.conn, self.ticket)


def _mark(server: _StreamServer, conn: _Conn, ticket: Ticket) -> None:
    # Invariant (with _end_streams, which sets its flag before it looks at
    # the tickets): a request marked while streams are being ended has its
    # token cancelled by one side or the other.
    ticket.long_lived = True
    server.tracker.notify()
    if server._ending_streams:
        conn.source.cancel("server stopping: long-lived request asked to end")


class TCPServer(_StreamServer):
    """A component hosting a plain ``socketserver`` handler, one thread per connection.

    Each connection is one unit in `tracker` and runs its handler inside
    ``use_token(...)``: `current_token()` in ``handle()`` is the connection's
    token, cancelled when the server stops. Nothing is protocol-aware, so the
    stop sequence is: close the listening socket (after accepting what the
    kernel had queued), cancel every connection's token, wait for the
    handlers to return, and at the stop deadline shut the remaining sockets
    down and log which connections were cut.

    A handler must therefore watch its token (or its socket) and return when
    it is cancelled.

    Args:
        handler_class: a ``socketserver.BaseRequestHandler`` subclass;
            ``self.server`` in it is a ``socketserver.TCPServer`` whose
            ``component`` attribute is this object.
        address: ``(host, port)``; port 0 picks a free port (see `port`).
        backlog: the listen backlog (lesson 6: the stdlib's 5 is too small).
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
    path (no drain) costs one `InFlight` enter/leave and a few attribute
    writes per request: the connection's token and scope are made current
    once per connection, and the headers are inspected once, in
    ``end_headers``.
    """

    disable_nagle_algorithm = True  # lesson 5: headers and body go in separate sends
    _lc_core: ClassVar[HTTPServer]

    _lc_close = False  # lifecycle_close() was called for this request
    # True when lifecycle chose HTTP/1.1 for the class (it said nothing):
    # unframed responses then close their connection.
    _lc_guard_framing: ClassVar[bool] = False
    _lc_source: CancelSource | None = None  # a request begun while draining has its own
    _lc_token_reset: Any = None
    # The user's class's methods that ours wrap, bound per generated class
    # (a direct call is cheaper than super() on the per-request path).
    _lc_next_handle_one_request: Callable[[], None]
    _lc_next_parse_request: Callable[[], bool]
    _lc_next_end_headers: Callable[[], None]

    def setup(self) -> None:
        """Take the connection handed over by the server; make its token current."""
        conn: _Conn = _tls.conn
        self._lc_conn = conn
        # For the whole connection (its own thread): current_token() is the
        # connection's token and mark_long_lived() finds this handler.
        self._lc_conn_token = _current.set(conn.source.token)
        self._lc_conn_scope = _scope.set(self)
        super().setup()

    def finish(self) -> None:
        """Flush and close the streams; forget the connection's context."""
        try:
            super().finish()
        finally:
            _scope.reset(self._lc_conn_scope)
            _current.reset(self._lc_conn_token)

    def handle_one_request(self) -> None:
        """Wait for one request and serve it, as a closable idle connection while waiting."""
        conn = self._lc_conn
        conn.awaiting = True
        if conn.closing:
            conn.awaiting = False
            self.close_connection = True
            return
        core = self._lc_core
        if core._stopping:
            core._notify()  # it may be closed as idle now
        try:
            self._lc_next_handle_one_request()
        finally:
            conn.awaiting = False
            ticket = conn.ticket
            if ticket is not None:
                conn.ticket = None
                if self._lc_source is not None:
                    _current.reset(self._lc_token_reset)
                    self._lc_source.close()
                    self._lc_source = None
                core.tracker.leave(ticket)

    def parse_request(self) -> bool:
        """Parse the request; then track it (and give it its deadline once draining)."""
        conn = self._lc_conn
        conn.awaiting = False
        conn.requests += 1
        if self._lc_close:
            self._lc_close = False
        if not self._lc_next_parse_request():
            return False
        core = self._lc_core
        ticket = core.tracker.enter(f"{self.command} {self.path.partition('?')[0][:_LABEL_MAX]}")
        if ticket is None:  # past the stop deadline: nothing new starts
            self.send_error(503, "Server shutting down")
            return False
        conn.ticket = ticket
        if core._draining:
            source = core._request_source(conn.source.token)
            if source is not None:
                self._lc_source = source
                self._lc_token_reset = _current.set(source.token)
        return True

    @property
    def lifecycle_ticket(self) -> Ticket | None:
        """The `Ticket` of the request being served (None between requests)."""
        return self._lc_conn.ticket

    def _lc_mark_long_lived(self) -> None:
        ticket = self._lc_conn.ticket
        if ticket is not None:
            _mark(self._lc_core, self._lc_conn, ticket)

    def lifecycle_close(self) -> None:
        """Make the current response the last on this connection (``Connection: close``)."""
        self._lc_close = True
        self.close_connection = True

    def end_headers(self) -> None:
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
    ends long-lived ones through their tokens, and cuts (and names) what is
    left at the deadline.

    Each request is one unit of `tracker` (labelled ``"GET /path"``) and runs
    inside ``use_token(...)``: `current_token()` in a ``do_GET`` is the
    request's token, cancelled if the request is long-lived when the server
    stops (`mark_long_lived`) or at the stop deadline, and carrying the
    shutdown deadline for requests begun after shutdown was requested.

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
        if _uses_default_protocol(user):
            namespace["protocol_version"] = "HTTP/1.1"
            namespace["_lc_guard_framing"] = True
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

    def _drain(self, token: CancelToken) -> bool:
        self._close_idle(time.monotonic())  # 2
        if not self.tracker.wait_idle(token, ignore_long_lived=True):  # 3
            return False
        self._end_streams("server stopping: long-lived request asked to end")  # 4
        return self.tracker.wait_idle(token)

    def _end_streams(self, reason: str) -> None:
        self._ending_streams = True
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            ticket = conn.ticket
            if ticket is not None and ticket.long_lived:
                conn.source.cancel(reason)

    def _close_idle(self, now: float) -> float | None:
        recheck: float | None = None
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            if not conn.awaiting or conn.closing:
                continue
            if conn.requests == 0:
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
