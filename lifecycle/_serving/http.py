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
  connections (and those whose head is still arriving); wait until only
  long-lived requests remain; cancel their tokens (`mark_long_lived`); wait
  for every request and connection thread (a process that exits under a
  handler cuts its response); `CUT_MARGIN` before the stop deadline, shut
  down what remains, name every request cut and raise `DeadlineExceeded`.

Two stdlib defaults are changed because they lose time or connections: the
listen backlog is 128, not ``socketserver``'s 5 (a burst of connections
beyond the backlog is dropped by the kernel), and Nagle's algorithm is off
(``http.server`` writes the headers and the body in separate sends; with
Nagle on, each keep-alive response waits for the client's delayed ACK,
about 40 ms). And `HTTPServer` does not read requests as ``http.server``
does: heads are parsed by the strict parser of `lifecycle._serving.h1`
(RFC 9112: what a proxy in front could frame differently is refused, with
an ``HTTP/1.1`` status line, and the connection closed), bounded by
`lifecycle.HTTPLimits`, `HEAD_TIMEOUT` and `IDLE_TIMEOUT`, and a handler's
``rfile`` holds its request's body only.

Invariants the sequence relies on:

* Only the connection's own thread reads from its socket. The stop thread
  never reads; it only *peeks* (``MSG_PEEK | MSG_DONTWAIT``) and shuts the
  read side down, which on Linux wakes the blocked reader with EOF while any
  byte already received is still delivered first.
* ``_Conn.awaiting`` is True only while the handler waits for the next
  request or reads its head; it is set before that read begins and cleared
  as soon as the whole head is in. A connection whose head is still arriving
  holds no request: the stop closes it as idle (after `FIRST_REQUEST_GRACE`
  from the head's first byte). ``_Conn.closing`` is set on an awaiting
  connection by the stop, the idle timeout or the cap (on every connection
  when the stop cuts); the handler checks it after setting ``awaiting``, so a
  closing connection never starts another request.
* Timeouts are enforced by one thread per server that looks at the awaiting
  connections, not by socket timeouts: nothing is done per request but a
  clock read, and a head's deadline runs from its first byte however its
  bytes trickle in. A connection past its timeout has its reading side shut
  (its handler reads EOF): quietly for an idle one, ``408`` for a head.
* A connection has one `Slot` in the tracker for all its requests: a
  request is begun in it once its head is in and accepted (never while the
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
import functools
import http.client
import http.server
import math
import select
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from contextvars import Token as ContextToken
from email.message import Message
from typing import Any, ClassVar, Final, NoReturn, cast

from .._core.errors import DeadlineExceeded
from .._core.log import get_logger
from .._core.threads import helper_thread, user_code_thread
from .._core.tokens import CancelSource, CancelToken, CurrentValue, _current, current_token
from .._core.views import ShutdownView
from .h1 import (
    DEFAULT_LIMITS,
    MAX_CHUNK_LINE,
    ChunkedDecoder,
    Head,
    HTTPError,
    LengthDecoder,
    Limits,
    check_response_head,
    find_head_end,
    parse_head,
)
from .health import _LOG_EVERY, _Throttle
from .inflight import (
    InFlight,
    RequestScope,
    RequestTokens,
    Slot,
    Ticket,
    _on_cancel_inline,
    cut_deadline,
    describe_work,
    enter_scope,
    exit_scope,
    mark_long_lived,
    note_request,
    noted_request,
)
from .listening import refuse_new_connections
from .stopseq import CUT_MARGIN, FIRST_REQUEST_GRACE, LOG_CUT_LIMIT, Waiting, Work, drive_sync

__all__ = [
    "CUT_MARGIN",
    "FIRST_REQUEST_GRACE",
    "HEAD_TIMEOUT",
    "IDLE_TIMEOUT",
    "HTTPServer",
    "TCPServer",
    "mark_long_lived",
]

_log = get_logger()

_LINGER = 2.0  # seconds to wait for the peer's FIN after ours (lingering close)
_LABEL_MAX = 200  # characters of a request target kept in a ticket's label
_CUT_REASON = "server stop deadline: connection cut"

# Errors of accept() after which the next accept may well succeed.
_ACCEPT_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
# Errors of accept() that mean resources are exhausted: back off a little.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_monotonic = time.monotonic  # read per request: one lookup less

HEAD_TIMEOUT: Final = 5.0
"""Seconds from the first byte of a request to the end of its head; then ``408`` and close.

A client sends a head in one go (a proxy always does): a 64 KiB head takes
2.6 s at 200 kbit/s, a usual 1 KiB one a few ms on any link. A head still
arriving after this is a client that holds a thread for nothing (slowloris).
The deadline runs from the first byte: bytes that keep trickling in do not
extend it."""

IDLE_TIMEOUT: Final = 75.0
"""Seconds a connection may wait for its next request (or its first); then it is closed.

Longer than the idle timeout of the proxies that usually sit in front (60 s
for an AWS ALB and nginx's ``keepalive_timeout`` upstream default), so that
the proxy, not the server, closes an idle connection: a server that closes
first races the proxy's next request on that connection (a 502)."""

DISCARD_LIMIT: Final = 64 * 1024
"""Bytes of a body left unread that are read and dropped to keep the connection;
with more left, the connection is closed after the response instead."""

_PIECE: Final = 64 * 1024  # the most a request body is read in one call
_CAP_RECHECK: Final = 0.1  # seconds between two looks for room while at max_connections
_CUT_JOIN_MIN: Final = 0.02  # seconds: a shorter join after a cut is not worth a turn
_REAPER_SLACK: Final = 0.001  # past a due time, so that a wake-up never comes just before it
_CHUNKED_REFUSED: Final = "chunked request bodies are not supported (send Content-Length)"


class _Conn:
    """One accepted connection and what the stop sequence needs to know of it."""

    __slots__ = (
        "accepted",
        "addr",
        "awaiting",
        "closing",
        "done",
        "handler",
        "head_began",
        "idle_since",
        "late",
        "long_source",
        "slot",
        "sock",
        "ticket",
    )

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.accepted = time.monotonic()
        self.awaiting = False  # the handler waits for the next request or reads its head
        self.closing = False  # closed as idle: by the stop, the idle timeout or for room
        self.done = False  # its handler returned: only the socket's close is left
        # When the head being read began, once it did not arrive in one piece
        # (None while none is, or it came whole): the head timeout runs from it.
        self.head_began: float | None = None
        self.idle_since = self.accepted  # when it began waiting for its current request
        self.late = False  # its head overran the head timeout: answer 408
        self.ticket: Ticket | None = None  # the TCP connection's ticket
        self.handler: _LifecycleHandler | None = None  # an HTTP connection's, once set up
        # An HTTP connection's requests, one after the other (in progress
        # while ``slot.active``): nothing is made per request.
        self.slot: Slot | None = None
        # The own token of the long-lived request in progress (made when it
        # is marked; for TCP, at the accept): cancelled to end it.
        self.long_source: CancelSource | None = None


@functools.cache
def _kernel_max_backlog() -> int:
    """The largest listen backlog the kernel grants (Linux: net.core.somaxconn), read once."""
    try:
        with open("/proc/sys/net/core/somaxconn", encoding="ascii") as file:
            return max(1, int(file.read().strip()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


def _peer(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has something to read (data, a FIN, a queued connection), at once."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _has_pending_bytes(sock: socket.socket) -> bool:
    """Whether the peer sent something not yet read, without reading or blocking."""
    try:
        # poll first: on a socket with a timeout, recv() would wait for data.
        if not _readable(sock):
            return False
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (OSError, ValueError):  # closed meanwhile, or EAGAIN: nothing to serve
        return False


def _shut_reading(conn: _Conn) -> None:
    """Wake the connection's reader with EOF (what it already received is still delivered)."""
    with suppress(OSError):
        conn.sock.shutdown(socket.SHUT_RD)


def _close_idle_conn(conn: _Conn) -> None:
    """Close a connection that holds no request: its handler reads EOF and ends quietly."""
    conn.closing = True
    _shut_reading(conn)


def _seconds(name: str, value: object) -> float | None:
    """A timeout argument: seconds > 0, or None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be seconds > 0, or None for no timeout; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, or None; got {value!r}")
    return float(value)


class _TCPListener(socketserver.TCPServer):
    """The listening socket, shaped as the stdlib server object handlers expect.

    Handlers receive it as ``self.server``; ``self.server.component`` is the
    lifecycle server. Its ``serve_forever`` is never used. Given ``sock``, it
    holds that socket (already bound and listening) instead of making one.
    """

    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler_class: Callable[..., socketserver.BaseRequestHandler],
        backlog: int,
        component: _StreamServer,
        sock: socket.socket | None = None,
    ) -> None:
        self.request_queue_size = backlog
        self.component = component
        if sock is None:
            self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
            super().__init__(address, handler_class)
            return
        # Neither bound nor listened on again: the socket's owner did both.
        socketserver.BaseServer.__init__(self, address, handler_class)
        self.address_family = sock.family
        self.socket = sock
        self.server_address = sock.getsockname()
        self._lc_bound()

    def server_bind(self) -> None:
        """Bind the socket made for the address."""
        socketserver.TCPServer.server_bind(self)
        self._lc_bound()

    def _lc_bound(self) -> None:
        """Once ``server_address`` is known (bound here, or given bound)."""


class _HTTPListener(_TCPListener, http.server.HTTPServer):
    """As `_TCPListener`, with the ``server_name``/``server_port`` of ``http.server``."""

    # server_bind is _TCPListener's: without http.server's reverse DNS lookup
    # (``getfqdn`` may hang).

    def _lc_bound(self) -> None:
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


_DEFAULT_ADDRESS: Final = ("127.0.0.1", 0)
# SO_ACCEPTCONN: 1 on a listening socket (Linux, the BSDs); absent elsewhere.
_SO_ACCEPTCONN: Final[int | None] = getattr(socket, "SO_ACCEPTCONN", None)


def _check_listening(owner: str, sock: object) -> socket.socket:
    """``sock`` if it is an open, bound, listening TCP socket; else say what is wrong."""
    if not isinstance(sock, socket.socket):
        raise TypeError(
            f"{owner} sock must be a socket.socket (bound and listening), got {sock!r}; "
            f"for a file descriptor pass socket.socket(fileno=fd)"
        )
    if sock.fileno() == -1:
        raise ValueError(
            f"{owner} sock {sock!r} is closed; pass an open listening socket "
            f"(the server closes it when it stops)"
        )
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(
            f"{owner} serves TCP: sock must be AF_INET or AF_INET6, got "
            f"{socket.AddressFamily(sock.family).name}; bind a TCP socket to (host, port)"
        )
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(
            f"{owner} sock must be SOCK_STREAM, got {socket.SocketKind(sock.type).name}; "
            f"make it with socket.socket(socket.AF_INET, socket.SOCK_STREAM)"
        )
    if _SO_ACCEPTCONN is not None and not sock.getsockopt(socket.SOL_SOCKET, _SO_ACCEPTCONN):
        host, port = sock.getsockname()[:2]
        where = f"bound to {host}:{port}" if port else "not bound"
        raise ValueError(
            f"{owner} sock is not listening ({where}); call sock.bind((host, port)) "
            f"and sock.listen(128) before passing it"
        )
    return sock


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
        max_connections: int | None = None,
        sock: socket.socket | None = None,
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
        if sock is not None:
            owner = type(self).__name__
            _check_listening(owner, sock)
            host, port = sock.getsockname()[:2]
            if address != _DEFAULT_ADDRESS:
                raise ValueError(
                    f"{owner} takes address or sock, not both: sock is already bound to "
                    f"{host}:{port}, address asks for {address[0]}:{address[1]}; drop "
                    f"address=... (the socket says where to serve), or drop sock=..."
                )
            address = (str(host), int(port))
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be an int >= 1, got {backlog!r}")
        if max_connections is not None and (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(
                f"max_connections must be an int >= 1, or None for no cap; got {max_connections!r}"
            )
        self.handler_class = handler_class
        self.backlog = backlog
        self.max_connections = max_connections
        """Connections served at once (None: no cap); newcomers past it wait in the backlog."""
        self._requested = address
        # Invariant: a given socket is the server's from `start` on: the stop
        # closes it, as a socket the server made.
        self._sock = sock
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
        self._take_until: float | None = None  # the bound on taking in the queue at stop
        # Invariant (under _cond): the connections the stop took in and not yet
        # started; after the cut (_forced) nothing is added, and the cut names
        # and closes what is left.
        self._taken: list[_Conn] = []
        self._listener_closed = threading.Event()
        self._emptied = threading.Event()  # set once no connection is left, after a cut
        self._cut_go = threading.Event()  # the cut's wake-ups may begin
        self._stopped = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._detach_drain: Callable[[], bool] | None = None
        self._capped = False  # at max_connections: a connection that ends wakes the accept loop
        self._cap_warnings = _Throttle(_LOG_EVERY)  # the accept thread's
        # The thread that enforces the timeouts (HTTPServer); _reaped ends it.
        self._reaper: threading.Thread | None = None
        self._reaped = threading.Event()

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
    def _lc_name(self) -> str | None:
        """The ``name`` argument, or None: `App.add` registers the server under it."""
        return self._name

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

        With ``sock``, serve that socket as it is (no bind, no listen); from
        here on the server owns it and its stop closes it.

        Raises:
            OSError: the address cannot be bound (the message names it).
            ValueError: the given ``sock`` is no longer a listening socket
                (closed since it was given; the message says what is wrong).
            RuntimeError: the server was already started (a server starts once).
        """
        if self._listener is not None:
            raise RuntimeError(f"{self.name!r} was already started; a server starts once")
        if self._sock is not None:  # it may have been closed since it was given
            _check_listening(type(self).__name__, self._sock)
        try:
            self._listener = self._listener_class(
                self._requested, self._wrap_handler(), self.backlog, self, self._sock
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
        # A wake-up never blocks its sender: once the accept loop has ended
        # nobody reads, and a full buffer already wakes it (300 taken-in
        # connections ending at the cap filled it and hung their handlers).
        self._wake[1].setblocking(False)
        self._listening = True
        if self._app is not None:
            self._detach_drain = _on_cancel_inline(self._app.shutdown_token, self._begin_drain)
        self._accept_thread = threading.Thread(
            target=helper_thread(self._accept_loop),
            name=f"lifecycle:{self.name} accept",
            daemon=True,
        )
        self._accept_thread.start()
        if self._timeout_bound() is not None:
            self._reaper = threading.Thread(
                target=helper_thread(self._reaper_loop),
                name=f"lifecycle:{self.name} timeouts",
                daemon=True,
            )
            self._reaper.start()
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
        _log.debug(
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
            if self._detach_drain is not None:
                self._detach_drain()
            self._reaped.set()
            if self._forced:
                # After a cut the stop waits for nothing more (see _cut): the
                # cut's thread cancels and releases the tokens and closes the
                # rest; the timeout thread ends by itself.
                self._cut_go.set()
            else:
                self._tokens.close()
                if self._reaper is not None:
                    self._reaper.join(_LINGER)
                if self._wake is not None:
                    for end in self._wake:
                        end.close()
            self._stopped.set()
            _log.debug(
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
        wake = self._wake[0]
        wake.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(wake, selectors.EVENT_READ)
                watching = False
                while not self._stop_accepting.is_set():
                    # At the cap the listener is not watched: newcomers wait in
                    # the backlog, and a connection that ends wakes this loop.
                    capped = self._at_cap()
                    if capped == watching:
                        if capped:
                            selector.unregister(sock)
                        else:
                            selector.register(sock, selectors.EVENT_READ)
                        watching = not capped
                    for key, _ in selector.select(_CAP_RECHECK if capped else None):
                        if key.fileobj is wake:
                            with suppress(OSError):
                                wake.recv(4096)
                    if capped:
                        self._make_room(sock)
                    else:
                        self._accept_pending(sock)
            # Invariant: nothing the kernel accepted on our behalf is dropped.
            # Take what is queued, once (past the cap too), then close the
            # socket itself at once: from then on the kernel refuses, which
            # the load balancer can see. Under steady load the queue never
            # empties, so the taking is bounded by what the queue can hold
            # and by time, and nothing is served until the socket is closed:
            # a client served meanwhile would connect again and refill it.
            # New handshakes are refused first, so that only those already
            # under way can complete between the last accept and the close
            # (which would reset them). Not on a socket the server was given:
            # others hold it too, and it stays open (nothing is reset) while
            # they do; a filter there would refuse for them as well.
            if self._sock is None:
                refuse_new_connections(sock, self.name)
            self._take_queued(sock)
        except Exception:  # noqa: BLE001 - the loop must end with the listener closed
            _log.exception("accept loop crashed", component=self.name)
        finally:
            self._listening = False
            listener.server_close()
            self._spawn_taken()
            self._listener_closed.set()

    def _accept_pending(self, sock: socket.socket) -> None:
        """Accept what is queued, until the queue is empty, the cap or the stop."""
        stopping = self._stop_accepting.is_set
        while not self._at_cap():
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
            if stopping():
                return  # the stop takes in the rest at once

    def _take_queued(self, sock: socket.socket) -> None:
        """Accept into ``_taken``, without serving, what the kernel queued: a full backlog at most.

        Linux queues up to ``backlog + 1`` completed connections (for a given
        socket: up to somaxconn + 1); the time bound is the `CloseListener`
        one (a stuck accept is not waited for). Nothing is accepted after the
        cut: what the kernel still holds is refused with the listener.
        """
        end = self._take_until
        # A given socket's listen backlog cannot be read back; the kernel
        # clamps it to somaxconn, which so bounds what it can queue.
        given = self._sock is not None
        limit = (max(self.backlog, _kernel_max_backlog()) if given else self.backlog) + 1
        taken = self._taken
        while len(taken) < limit and (end is None or _monotonic() < end):
            with self._cond:
                if self._forced:
                    return
                try:
                    taken.append(_Conn(*sock.accept()))
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as error:
                    if error.errno in _ACCEPT_RETRY:
                        continue
                    return  # out of descriptors or memory: serve what was taken

    def _spawn_taken(self) -> None:
        """Start the connections the stop took in, oldest first, until the cut takes the rest."""
        while True:
            with self._cond:
                if self._forced or not self._taken:
                    return
                conn = self._taken.pop(0)
                thread = self._register(conn)
            self._start(conn, thread)

    def _spawn(self, sock: socket.socket, addr: Any) -> None:
        conn = _Conn(sock, addr)
        with self._cond:
            thread = self._register(conn)
        self._start(conn, thread)

    def _register(self, conn: _Conn) -> threading.Thread:
        """Count ``conn`` in (under ``_cond``): its handler thread, made, not started."""
        conn.sock.setblocking(True)
        thread = threading.Thread(
            target=user_code_thread(lambda: self._connection_main(conn)),  # the handler
            name=f"lifecycle:{self.name} {_peer(conn.addr)}",
            daemon=True,
        )
        self._conns[id(conn)] = conn
        if len(self._threads) >= 2 * len(self._conns) + 64:
            self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        return thread

    def _start(self, conn: _Conn, thread: threading.Thread) -> None:
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: refuse this one connection
            _log.exception("cannot start a connection thread", component=self.name)
            with self._cond:
                self._conns.pop(id(conn), None)
            conn.sock.close()

    def _at_cap(self) -> bool:
        cap = self.max_connections
        self._capped = full = cap is not None and len(self._conns) >= cap
        return full

    def _make_room(self, sock: socket.socket) -> None:
        """At the cap with a newcomer waiting: say so (rate-limited), close an idle connection."""
        try:
            if not _readable(sock):
                return
        except (OSError, ValueError):  # the listener was closed under us: the stop is on
            return
        held = self._cap_warnings()
        if held is not None:
            _log.warning(
                "connection limit reached",
                component=self.name,
                max_connections=self.max_connections,
                not_logged_since=held,
                hint="newcomers wait in the listen backlog until a connection ends or idles; "
                "raise max_connections or add replicas",
            )
        self._evict(time.monotonic())

    def _evict(self, now: float) -> None:
        """Close one connection that holds no request, to make room. Overridden by `HTTPServer`."""

    def _close_listener(self, timeout: float | None) -> None:
        self._take_until = None if timeout is None else _monotonic() + timeout
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
        scope = enter_scope(_ConnScope(conn))
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
            conn.done = True
        except Exception as error:  # noqa: BLE001 - one connection's failure is logged, not fatal
            conn.done = True
            if not (self._forced or conn.closing or isinstance(error, ConnectionError)):
                _log.exception(
                    "connection handler raised", component=self.name, peer=_peer(conn.addr)
                )
        finally:
            self._close_socket(conn)
            with self._cond:
                self._conns.pop(id(conn), None)
                self._cond.notify_all()
                if self._forced and not self._conns:
                    self._emptied.set()
            if self._capped and self._wake is not None:
                with suppress(OSError):
                    self._wake[1].send(b"x")

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

    # -- timeouts ------------------------------------------------------------------

    def _timeout_bound(self) -> float | None:
        """The longest the timeout thread sleeps; None: no timeouts, no thread."""
        return None

    def _reap(self, now: float) -> float | None:
        """Close what overran a timeout at ``now``; return when the next is due, or None."""
        return None

    def _reaper_loop(self) -> None:
        bound = self._timeout_bound()
        assert bound is not None
        try:
            while True:
                now = time.monotonic()
                due = self._reap(now)
                wait = bound if due is None else min(due - now + _REAPER_SLACK, bound)
                if self._reaped.wait(wait):
                    return
        except Exception:  # noqa: BLE001 - logged; the stop still closes what is left
            _log.exception("timeout thread crashed; timeouts no longer apply", component=self.name)

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
        """Join every connection thread (bounded); True if none is left running.

        After a cut, one bounded wait for the last connection to end instead
        of a join per thread: with hundreds of cut handlers waking at once,
        every wait of the stop thread's is a turn it may lose to them.
        """
        if self._forced:
            self._cut_go.set()  # the wake-ups begin: see _cut
            if timeout is not None and timeout < _CUT_JOIN_MIN:
                return not self._conns  # no time to wait for the woken handlers
            return self._wait_emptied(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            threads = [t for t in self._threads if t is not threading.current_thread()]
        for thread in threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        alive = [t for t in threads if t.is_alive()]
        with self._cond:
            self._threads = alive
        return not alive

    def _wait_emptied(self, timeout: float | None) -> bool:
        ended = self._emptied.wait(timeout)
        with self._cond:
            alive = [t for t in self._threads if t.is_alive()]
            self._threads = alive
            ended = ended and not self._conns
        if not ended:
            names = sorted(t.name for t in alive)
            shown = names[:LOG_CUT_LIMIT]
            if len(names) > LOG_CUT_LIMIT:
                shown.append(f"... and {len(names) - LOG_CUT_LIMIT} more")
            # After a cut these are the cut requests' threads, named in that
            # entry already: one entry per cut, the threads at DEBUG.
            (_log.debug if self._forced else _log.error)(
                "handler threads still running after the stop deadline; abandoned",
                component=self.name,
                threads=shown,
                count=len(names),
            )
        return ended

    def _cut(self) -> list[str]:
        """At the deadline: cut what remains; return the requests cut, oldest first.

        Every connection accepted and closed here without its response is
        named: a request in progress, and one received but not begun yet (its
        thread not yet at it, its head still arriving).

        Nothing is woken here: the wake-ups -- every request token cancelled,
        every socket shut -- are done by a thread of their own, from when the
        stop joins (`_join_threads`) or returns. Hundreds of handlers woken at
        once queue for the interpreter, and every wait of the stop thread's
        after that is a turn behind all of them (200 cut requests: 20-50 ms
        past a 0.05 s budget when the stop thread woke them itself, measured);
        so the stop names and logs what it cut first, then wakes, then waits
        only when there is time for it.
        """
        self.tracker.close()
        now = time.monotonic()
        with self._cond:
            self._forced = True
            conns = list(self._conns.values())
            # Taken in by the stop, never started: the accept thread starts no
            # more once _forced is set; they are named and closed here.
            taken, self._taken = self._taken, []
            if not conns:
                self._emptied.set()
        work: list[Any] = self.tracker.running()
        work.extend(self._unbegun(conns + taken, now))
        cut = describe_work(work, now)
        if (conns or taken) and not cut:
            _log.warning(
                "connections closed at the stop deadline",
                component=self.name,
                connections=len(conns) + len(taken),
            )
        waker = threading.Thread(
            target=helper_thread(lambda: self._wake_cut(conns, taken)),
            name=f"lifecycle:{self.name} cut",
            daemon=True,
        )
        try:
            waker.start()  # before anything is woken: starting it takes a turn
        except RuntimeError:  # no thread to be had: wake them from here
            self._cut_go.set()
            self._wake_cut(conns, taken)
        return cut

    def _wake_cut(self, conns: list[_Conn], taken: list[_Conn]) -> None:
        """End what the cut found, once told: cancel every request token, shut every socket.

        ``taken``: connections taken in and never started, closed here.
        """
        self._cut_go.wait()
        for conn in taken:
            with suppress(OSError):
                conn.sock.close()
        self._tokens.cut(_CUT_REASON)
        for conn in conns:
            conn.closing = True
            with suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        if self._wake is not None:
            for end in self._wake:
                end.close()
        self._tokens.close()

    def _unbegun(self, conns: list[_Conn], now: float) -> list[_Unbegun]:
        """The connections holding work that the tracker does not know of yet, to be named.

        For `TCPServer`: every connection whose handler did not begin.
        """
        return [
            _Unbegun(f"connection {_peer(conn.addr)}", conn.accepted)
            for conn in conns
            if conn.ticket is None and not conn.done
        ]


class _Unbegun:
    """Work cut before it began: a label and when its connection was accepted."""

    __slots__ = ("began", "label")

    def __init__(self, label: str, began: float) -> None:
        self.label = label
        self.began = began


def _peek_request(sock: socket.socket) -> str | None:
    """``"GET /path"`` of the request waiting unread on ``sock``; None if nothing waits."""
    try:
        if not _readable(sock):
            return None
        data = sock.recv(_LABEL_MAX + 32, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (OSError, ValueError):  # closed meanwhile, or EAGAIN: nothing to serve
        return None
    if not data:
        return None
    return _request_label(data)


def _request_label(head: bytes) -> str:
    """``"GET /path"`` from the start of a request head, or ``"a request"`` when it is no HTTP."""
    line = head.partition(b"\r\n")[0].partition(b"\n")[0]
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[0].isalpha():
        target = parts[1].partition(b"?")[0][:_LABEL_MAX]
        return f"{parts[0].decode('latin-1')} {target.decode('latin-1')}"
    return "a request"


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

    __slots__ = ("conn",)

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def _lc_mark_long_lived(self) -> bool:
        return self.conn.ticket is not None  # False once the connection ended


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
        max_connections: connections served at once; None (the default): no
            cap. Past it, newcomers wait in the listen backlog until a
            connection ends; a warning says so, at most once per 10 s.
        sock: serve this socket instead of binding ``address``: as for
            `HTTPServer`.

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

    Added in 0.1; ``max_connections`` and ``sock`` in 0.2.
    """

    _end_reason = "server stopping"

    def __init__(
        self,
        handler_class: type[socketserver.BaseRequestHandler],
        address: tuple[str, int] = _DEFAULT_ADDRESS,
        *,
        backlog: int = 128,
        name: str | None = None,
        max_connections: int | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(
            handler_class,
            address,
            backlog=backlog,
            name=name,
            max_connections=max_connections,
            sock=sock,
        )


# -- HTTP: strict requests ----------------------------------------------------------------


class _Refusals:
    """Logs the requests a server refuses: one per 10 s at INFO, the others at DEBUG.

    The INFO line says how many were held back since the last. What a client
    sends never logs a stack: a flood of bad requests must not flood the log.
    """

    def __init__(self, component: Callable[[], str]) -> None:
        self._component = component
        self._lock = threading.Lock()  # the throttle is shared by the connection threads
        self._throttle = _Throttle(_LOG_EVERY)

    @property
    def component(self) -> str:
        return self._component()

    def log(self, exc: HTTPError, peer: Any) -> None:
        with self._lock:
            held = self._throttle()
        fields = {
            "component": self._component(),
            "status": exc.status,
            "reason": exc.reason,
            "detail": exc.detail,
            "peer": _peer(peer),
        }
        if held is None:
            _log.debug("request refused", **fields)
        else:
            _log.info("request refused", not_logged_since=held, **fields)


class _Body:
    """A request's body as a file (``rfile``, ``wsgi.input``): its bytes only, decoded.

    It reads from the connection in pieces of at most 64 KiB, only as the
    reader asks, and never past the body's end, whatever the framing
    (``Content-Length`` or chunked): a declared length reserves nothing, a
    ``read()`` without a size returns at the body's end instead of waiting
    for the connection's, and what follows stays for the next request. A
    malformed or short body raises `HTTPError` (400; 413 past
    ``Limits.max_body``), kept in ``error``: the request's framing is lost
    and its connection must close. A ``100 Continue`` owed to the client is
    sent when the body is first read.
    """

    __slots__ = ("_buffer", "_continue", "_searched", "decoder", "error", "rfile")

    def __init__(
        self,
        rfile: Any,
        decoder: LengthDecoder | ChunkedDecoder,
        send_continue: Callable[[], None] | None = None,
    ) -> None:
        self.rfile = rfile
        self.decoder = decoder
        self.error: HTTPError | None = None
        self._continue = send_continue
        self._buffer = bytearray()  # decoded bytes not returned yet
        self._searched = 0  # bytes of _buffer known to hold no newline

    def _piece(self, limit: int = _PIECE) -> bytes:
        """The next decoded bytes, at most ``limit``: one read's worth; b"" at the body's end."""
        decoder = self.decoder
        while not decoder.done:
            if self.error is not None:
                raise self.error
            if self._continue is not None:
                send, self._continue = self._continue, None
                send()
            rfile = self.rfile
            expected = decoder.expected
            if expected:
                read = getattr(rfile, "read1", None) or rfile.read
                data = read(min(expected, limit, _PIECE))
            else:  # a chunk-size or trailer line
                data = rfile.readline(MAX_CHUNK_LINE)
            try:
                out = decoder.feed(data) if data else _ended_early()
            except HTTPError as exc:
                self.error = exc
                raise
            if out:
                return out
        return b""

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes of the body (fewer only at its end); the rest, by default."""
        buffer = self._buffer
        if size is None or size < 0:
            parts = [bytes(buffer)]
            buffer.clear()
            while piece := self._piece():
                parts.append(piece)
            self._searched = 0
            return b"".join(parts)
        while len(buffer) < size:
            piece = self._piece(size - len(buffer))
            if not piece:
                break
            if not buffer and len(piece) == size:
                return piece
            buffer += piece
        data = bytes(buffer[:size])
        del buffer[:size]
        self._searched = 0
        return data

    def read1(self, size: int = -1) -> bytes:
        """What one read gives, at most ``size`` bytes if given; b"" at the body's end."""
        if size == 0:
            return b""
        held = len(self._buffer)
        if held:
            return self.read(held if size < 0 else min(size, held))
        return self._piece(_PIECE if size < 0 else size)

    def readline(self, size: int | None = -1) -> bytes:
        """One line of the body, newline included, at most ``size`` bytes."""
        limit = None if size is None or size < 0 else size
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._searched) + 1
            if end or (limit is not None and len(buffer) >= limit):
                break
            self._searched = len(buffer)
            piece = self._piece()
            if not piece:
                break
            buffer += piece
        if not end:
            end = len(buffer)
        if limit is not None:
            end = min(end, limit)
        line = bytes(buffer[:end])
        del buffer[:end]
        self._searched = 0
        return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        """The lines of the body, until ``hint`` bytes were read (all by default)."""
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

    def readable(self) -> bool:
        return True

    def complete_within(self, limit: int) -> bool:
        """Whether dropping what is unread keeps the connection: known to be at most ``limit``."""
        decoder = self.decoder
        if decoder.done:
            return self.error is None
        if self.error is not None or self._continue is not None:
            return False  # framing lost, or the client may never send the body
        return isinstance(decoder, LengthDecoder) and decoder.expected <= limit

    def discard(self, limit: int) -> bool:
        """Read and drop the rest, up to ``limit`` bytes; True if the body ended.

        True: the connection may carry the next request; False: it must close.
        Never waits for a body owed a ``100 Continue`` (the client may never send it).
        """
        decoder = self.decoder
        if self.error is not None or (self._continue is not None and not decoder.done):
            return False
        if isinstance(decoder, LengthDecoder) and decoder.expected > limit:
            return False
        self._buffer.clear()
        dropped = 0
        try:
            while dropped <= limit:
                piece = self._piece()
                if not piece:
                    return True
                dropped += len(piece)
        except HTTPError:
            return False
        return decoder.done


def _ended_early() -> NoReturn:
    raise HTTPError(400, "request body ended before its declared end")


_NO_BODY: Final = _Body(None, LengthDecoder(0))
"""The body of a request without one: reads return b"" (stateless, shared)."""


class _OneByOne:
    """``peek`` and ``read`` over an unbuffered ``rfile`` (``rbufsize = 0``), a byte at a time.

    So that nothing past the head is taken from the socket.
    """

    __slots__ = ("_byte", "_raw")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._byte = b""

    def peek(self, size: int = 1) -> bytes:
        if not self._byte:
            self._byte = self._raw.read(1) or b""
        return self._byte

    def read(self, size: int = -1) -> bytes:
        byte, self._byte = self._byte, b""
        return byte


def _message(raw: bytes, head: Head | None) -> http.client.HTTPMessage:
    """``self.headers`` of http.server: the head's fields, names as sent, in order.

    ``Content-Length`` appears once, as the one length the framing found
    (``5, 5`` on one line or two reads ``5``), so that ``int()`` of it works.
    """
    message = http.client.HTTPMessage()
    length = None if head is None else head.framing.length
    for line in raw.split(b"\r\n")[1:-2]:  # the head passed parse_head: each is name:value
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            if length is None:
                continue  # a repeat of the one given already
            message[name.decode("latin-1")], length = str(length), None
        else:
            message[name.decode("latin-1")] = value.strip(b" \t").decode("latin-1")
    return message


class _StrictHandler(http.server.BaseHTTPRequestHandler):
    """http.server's request reading, replaced by the strict parser of `h1`.

    The generated handler class of `HTTPServer` puts it after the user's
    class, so that a handler's own ``super().handle_one_request()`` or
    ``super().parse_request()`` reaches it. Per request it reads the head
    without taking a byte past it (at most ``Limits.max_head``), parses it,
    refuses what `h1` refuses (answered with an ``HTTP/1.1`` status line, then
    the close), makes ``rfile`` the body bounded by its framing for the
    request's handler, drops a small unread rest afterwards (the next request
    starts after it), and checks the status and every header the handler
    sends (CR, LF, NUL: a 500 instead). ``self.headers`` is built only when read.
    """

    # Per server (set by HTTPServer._wrap_handler); these serve a bare handler.
    _lc_limits: ClassVar[Limits] = DEFAULT_LIMITS
    _lc_refusals: ClassVar[_Refusals] = _Refusals(lambda: "http")
    # A chunked request body is decoded (WSGI) or refused with 411: http.server
    # handlers read Content-Length bodies and would take a chunked one for none.
    _lc_chunked: ClassVar[bool] = False
    # The 100 Continue is sent at the body's first read (WSGI), not by
    # handle_expect_100 before the handler runs (http.server's way).
    _lc_lazy_continue: ClassVar[bool] = False

    _lc_raw_head = b""
    _lc_head: Head | None = None
    _lc_message: Message | None = None
    _lc_body: _Body = _NO_BODY
    _lc_responded = False  # a final status line of this request was sent or buffered
    _lc_refusing = False

    def _lc_partial_head(self, began: bool) -> None:
        """A head did not arrive in one piece (``began``: its timeout runs), or ended at last.

        `_LifecycleHandler`'s records it for the timeout thread and the stop.
        """

    def _lc_timed_out(self) -> bool:
        """Whether the head being read overran its timeout."""
        return False

    @property
    def headers(self) -> Message:
        """The request's header fields (an ``http.client.HTTPMessage``), made when first read."""
        message = self._lc_message
        if message is None:
            message = self._lc_message = _message(self._lc_raw_head, self._lc_head)
        return message

    @headers.setter
    def headers(self, value: Message) -> None:
        self._lc_message = value

    def handle_one_request(self) -> None:
        """Read one request's head, run ``do_<METHOD>``, drop what it left of the body."""
        self._lc_responded = False
        self._lc_raw_head = b""
        try:
            raw = self._lc_read_head()
        except HTTPError as exc:
            self._lc_refuse(exc)
            return
        except TimeoutError:  # the socket timeout of the handler class's own ``timeout``
            self.close_connection = True
            return
        if raw is None:
            self.close_connection = True
            return
        self._lc_raw_head = raw
        if not self.parse_request():
            return
        head = self._lc_head
        assert head is not None
        rfile = self.rfile
        body = _NO_BODY
        if head.framing.body_length != 0:
            send_continue = (
                self._lc_send_continue if head.expect_continue and self._lc_lazy_continue else None
            )
            body = _Body(rfile, head.framing.decoder(self._lc_limits), send_continue)
            self.rfile = cast("Any", body)
        self._lc_body = body
        try:
            method = self._lc_method()
            if method is None:
                self.send_error(501, f"Unsupported method ({self.command!r})")
            else:
                method()
                self.wfile.flush()
        except HTTPError as exc:
            self._lc_failed(exc)
        finally:
            if body is not _NO_BODY:
                self.rfile = rfile
                self._lc_body = _NO_BODY
        if body is not _NO_BODY and not self.close_connection:
            try:
                kept = body.discard(DISCARD_LIMIT)
            except OSError:
                kept = False
            if not kept:
                self.close_connection = True

    def _lc_method(self) -> Callable[[], object] | None:
        """What serves the request: ``do_<METHOD>``, or None (501)."""
        return getattr(self, "do_" + self.command, None)

    def _lc_read_head(self) -> bytes | None:
        """The next request's head as `h1` delimits it; None at EOF (or a close) before its end.

        Looks at what the connection has (``peek``) and takes exactly the
        head, so that the body and a pipelined request stay in ``rfile``.
        """
        rfile: Any = self.rfile
        if not hasattr(rfile, "peek"):
            rfile = _OneByOne(rfile)
        limits = self._lc_limits
        chunk = rfile.peek(1)
        if chunk:
            end = find_head_end(chunk, limits=limits)
            if end >= 0:  # the usual case: the whole head in one piece
                return bytes(rfile.read(end))
        buffer = bytearray()
        while chunk:
            start = len(buffer)
            buffer += chunk
            end = find_head_end(buffer, start, limits=limits)
            if end >= 0:
                rfile.read(end - start)
                if start:
                    self._lc_partial_head(began=False)
                return bytes(buffer[:end])
            rfile.read(len(chunk))
            if not start:
                self._lc_partial_head(began=True)
            chunk = rfile.peek(1)
        if buffer and self._lc_timed_out():
            raise HTTPError(408, "request head not received in time")
        return None

    def parse_request(self) -> bool:
        """Check the head with `h1`; set what http.server's ``parse_request`` sets.

        ``command``, ``path`` (the target as sent, ``//`` at its start made
        ``/`` as http.server does), ``request_version``, ``headers``,
        ``close_connection``; and ``handle_expect_100()`` for a request that
        expects ``100 Continue``. A refused request is answered here.
        """
        raw = self._lc_raw_head
        try:
            head = parse_head(raw, limits=self._lc_limits)
        except HTTPError as exc:
            self._lc_refuse(exc)
            return False
        if head.framing.chunked and not self._lc_chunked:
            self._lc_refuse(HTTPError(411, _CHUNKED_REFUSED))
            return False
        self._lc_head = head
        self._lc_message = None
        line = raw[: raw.find(b"\r\n")]
        self.raw_requestline = line + b"\r\n"
        self.requestline = line.decode("latin-1")
        self.command = head.method.decode("ascii")
        path = head.target.decode("ascii")
        if path[:2] == "//":  # http.server's guard against open redirects
            path = "/" + path.lstrip("/")
        self.path = path
        self.request_version = "HTTP/1.1" if head.version == (1, 1) else "HTTP/1.0"
        self.close_connection = head.close_after or self.protocol_version < "HTTP/1.1"
        if head.expect_continue and self.protocol_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def _lc_send_continue(self) -> None:
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _lc_refuse(self, exc: HTTPError) -> None:
        """Answer a refused request with its status, on an ``HTTP/1.1`` status line; then close."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # the error page needs a status line
        self.command = ""  # ... and a body
        self.requestline = self._lc_raw_head.partition(b"\r\n")[0][:200].decode("latin-1")
        self._lc_head = None
        self._lc_refusals.log(exc, self.client_address)
        self._headers_buffer: list[bytes] = []
        with suppress(OSError):
            self.send_error(exc.status, exc.reason)

    def _lc_failed(self, exc: HTTPError) -> None:
        """An `HTTPError` out of the handler: answer it if still possible; close.

        A 500 is a response head refused (answered already); a 4xx is the
        malformed body the handler read, answered now if nothing was sent.
        """
        self.close_connection = True
        if exc.status >= 500:
            return
        if self._lc_responded:
            self._lc_refusals.log(exc, self.client_address)
        else:
            self._lc_refuse(exc)

    def send_response_only(self, code: int, message: str | None = None) -> None:
        """Write the status line, once checked: no CR, LF or NUL, a code from 100 to 599."""
        if not (
            isinstance(code, int)
            and 100 <= code <= 599
            and (message is None or (message.isascii() and message.isprintable()))
        ):
            status: int | str = code if message is None else f"{int(code)} {message}"
            try:
                check_response_head(status, ())
            except HTTPError as exc:
                self._lc_refuse_response(exc)
        if code >= 200:
            self._lc_responded = True
        super().send_response_only(code, message)

    def send_header(self, keyword: str, value: object) -> None:
        """Buffer a header line, once checked: a token name, a value without CR, LF or NUL."""
        text = value if type(value) is str else str(value)  # as http.server formats it
        if not (
            keyword.isascii()
            and keyword.replace("-", "").isalnum()
            and text.isascii()
            and text.isprintable()
        ):
            try:
                check_response_head(200, [(keyword, text)])
            except HTTPError as exc:
                self._lc_refuse_response(exc)
        super().send_header(keyword, text)

    def _lc_refuse_response(self, exc: HTTPError) -> NoReturn:
        """Answer 500 instead of a status or header that would split the response; raise ``exc``.

        Logged with the handler's stack; the socket's sending side is shut, so
        that whatever the handler writes next fails and one response is sent.
        """
        if self._lc_refusing:
            raise exc
        _log.error(
            "response head refused",
            component=self._lc_refusals.component,
            request=getattr(self, "requestline", ""),
            detail=exc.detail,
            exc_info=True,
        )
        self._headers_buffer = []
        self.close_connection = True
        self._lc_refusing = True
        try:
            with suppress(OSError):
                self.send_error(500)
        finally:
            self._lc_refusing = False
            with suppress(OSError):
                # Whatever the handler writes next fails: one response on the wire.
                self.connection.shutdown(socket.SHUT_WR)
        raise exc


# -- HTTP ------------------------------------------------------------------------------

_tls = threading.local()  # hands the _Conn to the handler constructed in its thread


class _LifecycleHandler(http.server.BaseHTTPRequestHandler):
    """Put in front of the user's handler class: tracking, tokens, ``Connection: close``.

    Its overrides run first and call through to the user's class. The hot
    path (no drain) costs a `Slot` begun and ended, a clock read (for the
    idle timeout) and a few attribute reads and writes per request, about
    0.7 µs: the shared token and the scope are made current once per
    connection, no token or ticket is made per request, and the headers are
    inspected only when a close may be due.
    """

    # http.server writes the headers and the body in separate sends: with
    # Nagle on, every keep-alive response waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    _lc_core: ClassVar[HTTPServer]
    # _lc_core, on the instance from setup() on. Another name: an instance
    # attribute that shadows a class attribute holding an object (the server)
    # is looked up CPython 3.11's unspecialised way too.
    _lc_server: HTTPServer

    _lc_close = False  # lifecycle_close() was called for this request
    # Of the strict reading (`_StrictHandler`, always behind this class): the
    # head of the request being served, and whether its response began.
    _lc_raw_head: bytes
    _lc_responded: bool
    # True when lifecycle chose HTTP/1.1 for the class (it said nothing):
    # unframed responses then close their connection.
    _lc_guard_framing: ClassVar[bool] = False
    # Undoes the token made current for this request only (draining, marked).
    _lc_token_reset: ContextToken[CurrentValue] | None = None
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
        # The per-request path reads these from the instance: CPython 3.11
        # looks up an attribute found only on the class (`_lc_core`, the
        # default of `_lc_close`) its unspecialised way each time.
        self._lc_server = core
        self._lc_close = False
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
        tracker = core.tracker
        serve_one = self._lc_next_handle_one_request
        while True:
            conn.idle_since = _monotonic()
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
                        # ValueError: it was set in a copy of this context (a
                        # mark from another thread): nothing to undo here.
                        with suppress(ValueError):
                            _current.reset(self._lc_token_reset)
                        self._lc_token_reset = None
                    source = conn.long_source
                    if source is not None:
                        conn.long_source = None
                        source.close()
                    # InFlight.end, inlined (a call less per request).
                    slot.active = False
                    if tracker._waiters or tracker._idle_callbacks:
                        tracker._wake_all()
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
        core = self._lc_server
        slot = self._lc_slot
        tracker = core.tracker
        if tracker._closed:  # past the stop deadline (begin() counts the refusal)
            tracker.begin(slot)
            self.send_error(503, "Server shutting down")
            return False
        # InFlight.begin, inlined (a call less per request).
        clock = tracker.clock  # read, then called (see InFlight.clock)
        tracker.last_arrival = slot.began = clock()
        slot.long_lived = False
        uses = slot.uses + 1
        slot.uses = uses
        slot.active = True
        note_request(uses)  # what a copy of this context may mark
        if core._draining:
            self._lc_token_reset = _current.set(core._request_token())
            self._lc_arm()
        return True

    def _lc_partial_head(self, began: bool) -> None:
        """A head did not come in one piece: its timeout runs from now; or it is in at last."""
        self._lc_conn.head_began = _monotonic() if began else None

    def _lc_timed_out(self) -> bool:
        return self._lc_conn.late

    @property
    def lifecycle_ticket(self) -> Ticket | None:
        """The `Ticket` of the request being served (None between requests)."""
        slot = self._lc_slot
        return slot if slot.active else None

    def _lc_mark_long_lived(self) -> bool:
        slot = self._lc_slot
        if not slot.active or noted_request() != slot.uses:
            return False  # no request, or not this context's: it ended
        token = self._lc_core._mark(self._lc_conn, slot)
        if token is not None:
            # Made current in the calling context: the handler's, or a copy
            # of it (a thread the handler started) whose reset _lc_serve skips.
            reset = _current.set(token)
            if self._lc_token_reset is None:
                self._lc_token_reset = reset
        return True

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
    closes idle keep-alive connections (and those whose head is still
    arriving), waits for the requests in flight, ends long-lived ones through
    their tokens, and cuts what is left at the deadline, raising
    `DeadlineExceeded` that names every request cut.

    Each request is one unit of `tracker` (labelled ``"GET /path"``).
    `current_token()` in a ``do_GET`` is the request's token: cancelled at
    the stop's cut; for requests begun after shutdown was requested, carrying
    a deadline a margin before that cut (0.2 s before the shutdown deadline,
    the stop's cut less 0.1 s, or a tenth of a short budget at each step), so
    that a handler working until its deadline still answers; and, for a
    request marked long-lived
    (`mark_long_lived`), its own token, cancelled when the stop ends streams.

    The handler class is used through a subclass made for this server (the
    lifecycle hooks go in front of yours). If the class leaves
    ``protocol_version`` at the stdlib default, ``"HTTP/1.1"`` is used; a
    response without ``Content-Length`` is then closed after it, so handlers
    written for HTTP/1.0 still work.

    Requests are read strictly (RFC 9112, `lifecycle._serving.h1`), not by
    http.server: a request that two parsers could frame differently is
    refused with its status (400, 411, 413, 414, 431, 501, 505) on an
    ``HTTP/1.1`` status line and the connection closed, logged at INFO at
    most once per 10 s (DEBUG otherwise), without a stack. For the handler
    ``rfile`` is the request's body only: ``rfile.read()`` ends with it, and
    what the handler left unread is dropped (up to 64 KiB, else the
    connection closes) so that it is never taken for the next request. A
    chunked request body is refused with ``411 Length Required``: handlers
    of http.server read ``Content-Length`` bodies (`WSGIServer` reads chunked
    ones). Each status and header the handler sends is checked: CR, LF or NUL
    in it (a response splitter) answers 500 instead, logged with the
    handler's stack. ``self.headers`` is built only when the handler reads it.

    Args:
        handler_class: the request handler class.
        address: ``(host, port)``; port 0 picks a free port (see `port`).
        backlog: the listen backlog.
        name: for logs; default ``"http:PORT"``.
        limits: the bounds of a request (``lifecycle.HTTPLimits``): head
            size (431), header count (431), request line (414), body (413).
        head_timeout: seconds from a request's first byte to the end of its
            head, else ``408`` and close; None: no limit. `HEAD_TIMEOUT`.
        idle_timeout: seconds a connection may wait for its next (or first)
            request, else it is closed; None: no limit. `IDLE_TIMEOUT`.
        max_connections: connections served at once; None (the default):
            no cap. A newcomer past the cap is not refused: it waits in the
            listen backlog, and the longest idle connection (else the oldest
            one whose head is still arriving, answered 408) is closed to make
            room for it; a warning says so, at most once per 10 s.
        sock: a TCP socket already bound and listening (made by the program,
            inherited from a supervisor, systemd or gunicorn), served instead
            of binding ``address``; give one or the other. Checked here and
            at `start`: an open ``SOCK_STREAM`` socket of ``AF_INET`` or
            ``AF_INET6`` on which ``listen`` was called, else ``ValueError``
            saying what is wrong. The server neither binds nor listens again
            (the socket's listen backlog cannot be read back: the stop takes
            in up to the larger of ``backlog`` and the kernel's
            ``net.core.somaxconn``, plus one, by its time bound), makes it
            non-blocking, and from `start` on owns it: the stop takes in what the kernel
            queued, once, then closes it, as its own. A copy held elsewhere
            (a duplicate descriptor, another process) keeps the port open.

    Example::

        class Hello(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"hello\\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        app = lifecycle.App("web", drain_delay=5)
        app.add(lifecycle.HTTPServer(Hello, ("0.0.0.0", 8080), max_connections=1000))
        sys.exit(lifecycle.run(app))

        # or on a socket the program (or its supervisor) made:
        sock = socket.create_server(("0.0.0.0", 8080), backlog=128)
        app.add(lifecycle.HTTPServer(Hello, sock=sock))

    Added in 0.1; ``limits``, ``head_timeout``, ``idle_timeout``,
    ``max_connections`` and ``sock`` in 0.2.
    """

    _kind = "http"
    _listener_class = _HTTPListener

    def __init__(
        self,
        handler_class: type[http.server.BaseHTTPRequestHandler],
        address: tuple[str, int] = _DEFAULT_ADDRESS,
        *,
        backlog: int = 128,
        name: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        head_timeout: float | None = HEAD_TIMEOUT,
        idle_timeout: float | None = IDLE_TIMEOUT,
        max_connections: int | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        if not (
            isinstance(handler_class, type)
            and issubclass(handler_class, http.server.BaseHTTPRequestHandler)
        ):
            raise TypeError(
                f"HTTPServer needs an http.server.BaseHTTPRequestHandler subclass, got "
                f"{handler_class!r}; for a plain socketserver handler use TCPServer"
            )
        if not isinstance(limits, Limits):
            raise TypeError(
                f"limits must be a lifecycle.HTTPLimits, got {limits!r}; "
                "e.g. HTTPLimits(max_body=10 * 1024 * 1024)"
            )
        super().__init__(
            handler_class,
            address,
            backlog=backlog,
            name=name,
            max_connections=max_connections,
            sock=sock,
        )
        self.limits = limits
        """The bounds each request is held to (`lifecycle.HTTPLimits`)."""
        self.head_timeout = _seconds("head_timeout", head_timeout)
        """Seconds from a request's first byte to the end of its head (None: no limit)."""
        self.idle_timeout = _seconds("idle_timeout", idle_timeout)
        """Seconds a connection may wait for a request (None: no limit)."""
        self._refusals = _Refusals(lambda: self.name)

    def _wrap_handler(self) -> Callable[..., socketserver.BaseRequestHandler]:
        user = self.handler_class
        namespace: dict[str, Any] = {
            "_lc_core": self,
            "_lc_limits": self.limits,
            "_lc_refusals": self._refusals,
            "__module__": user.__module__,
            "__qualname__": user.__qualname__,
            "__doc__": user.__doc__,
        }
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
        # The strict reading goes after the user's class: its super() calls reach it.
        bases: tuple[type, ...] = (_LifecycleHandler, user)
        if user is http.server.BaseHTTPRequestHandler:
            bases = (_LifecycleHandler, _StrictHandler)
        elif not issubclass(user, _StrictHandler):
            bases += (_StrictHandler,)
        cls = type(user.__name__, bases, namespace)
        for method in ("handle_one_request", "parse_request", "end_headers"):
            # What comes after ours in the generated class: the user's, else the strict one.
            setattr(cls, f"_lc_next_{method}", getattr(super(_LifecycleHandler, cls), method))
        return cast("type[_LifecycleHandler]", cls)

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
            due = _closable_from(conn) - now
            if due > 0:
                recheck = due if recheck is None else min(recheck, due)
                continue
            if conn.head_began is None and _has_pending_bytes(conn.sock):
                continue  # a request is arriving: it is served, with Connection: close
            # Its handler reads EOF and ends the connection; a head still
            # arriving holds no request: it is closed as idle.
            _close_idle_conn(conn)
        return recheck

    def _unbegun(self, conns: list[_Conn], now: float) -> list[_Unbegun]:
        """Requests received and not begun: their head read but not parsed, or unread yet.

        An idle keep-alive connection, or a new one that sent nothing, holds
        no request: closing it loses nothing, and it is not named.
        """
        found = []
        for conn in conns:
            slot = conn.slot
            if conn.done or (slot is not None and slot.active):
                continue  # ended, or named by the tracker
            handler = conn.handler
            if (
                handler is not None
                and not conn.awaiting
                and handler._lc_raw_head
                and not handler._lc_responded
            ):
                label: str | None = _request_label(handler._lc_raw_head)
            elif conn.head_began is not None:
                label = f"connection {_peer(conn.addr)} (head incomplete)"
            else:
                label = _peek_request(conn.sock)
            if label is not None:
                found.append(_Unbegun(label, conn.accepted))
        return found

    # -- timeouts and the cap ------------------------------------------------------

    def _timeout_bound(self) -> float | None:
        timeouts = [t for t in (self.head_timeout, self.idle_timeout) if t is not None]
        return min(timeouts) if timeouts else None

    def _reap(self, now: float) -> float | None:
        head_timeout, idle_timeout = self.head_timeout, self.idle_timeout
        next_due: float | None = None
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            if not conn.awaiting or conn.closing or conn.late:
                continue
            began = conn.head_began
            if began is not None:
                if head_timeout is None:
                    continue
                due = began + head_timeout
                if due <= now:
                    conn.late = True  # its handler reads EOF and answers 408
                    _shut_reading(conn)
                    continue
            else:
                if idle_timeout is None:
                    continue
                due = conn.idle_since + idle_timeout
                if due <= now:
                    if not _has_pending_bytes(conn.sock):  # else a request just arrived
                        _close_idle_conn(conn)
                    continue
            next_due = due if next_due is None else min(next_due, due)
        return next_due

    def _evict(self, now: float) -> None:
        with self._cond:
            conns = list(self._conns.values())
        waiting = [c for c in conns if c.awaiting]
        if any(c.closing or c.late for c in waiting):
            return  # one is already on its way out: its end makes the room
        closable = sorted(
            (c for c in waiting if _closable_from(c) <= now),
            key=lambda c: (c.head_began is not None, c.head_began or c.idle_since),
        )
        for conn in closable:
            if conn.head_began is not None:
                conn.late = True  # the oldest head still arriving: 408
                _shut_reading(conn)
                return
            if not _has_pending_bytes(conn.sock):
                _close_idle_conn(conn)  # the longest idle one
                return


def _closable_from(conn: _Conn) -> float:
    """From when a connection that waits for a request may be closed without losing one.

    At once once it served one; a new connection, or one whose head is still
    arriving, after `FIRST_REQUEST_GRACE` (its request is usually on the way).
    """
    began = conn.head_began
    if began is not None:
        return began + FIRST_REQUEST_GRACE
    if conn.slot is None or conn.slot.uses == 0:
        return conn.accepted + FIRST_REQUEST_GRACE
    return conn.idle_since
