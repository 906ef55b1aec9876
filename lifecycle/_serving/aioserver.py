"""`AsyncStreamServer`: an ``asyncio.start_server`` component that drains without losing work.

The shutdown sequence it carries out (ROLLING-FINDINGS lessons 1-3, 7):

1. **Drain** -- from the moment the app's shutdown is requested until this
   component's stop: keep accepting and serving. `AsyncStreamServer.draining`
   turns True so that an HTTP handler answers with ``Connection: close`` and
   closes after it (lesson 1); the load balancer meanwhile sees ``/readyz``
   turn 503 (lesson 7).
2. **stop** -- close the listening socket (the kernel then *refuses* new
   connections, which a load balancer can see, lesson 2); wait for the work in
   progress; cancel the per-connection tokens and close the connections that
   sit idle between two requests; wait again; shortly before the stop
   deadline cancel what still runs, abort its connections and log what was
   cut, by name.

Units of work, tracked in one `InFlight` with one ticket per connection:

* the **connection**: by default a connection is one unit of work from accept
  to the handler's return -- all a raw stream server knows;
* the **request**: a handler that marks each unit of work with
  ``async with server.request(label):`` makes its connection *idle* between
  two such blocks (its ticket turns long-lived, and carries the label of the
  request while one runs). Stop waits for the requests, not for idle
  connections: it closes those. A keep-alive HTTP handler wants this;
  ``unit="request"`` makes connections idle from the accept on (a connection
  that never sent a request holds nobody up).

Marking a request flips the connection's ticket instead of entering one of
its own: it is on every request's path (about 1.5 us of CPU per request,
``benchmarks/serving_async.py``).

Invariant: every accepted connection has a tracker ticket from its
``connection_made`` (before its handler task first runs) until its handler
returns, so a connection accepted just before the listener closed is waited
for like any other.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import structlog

from .._core.errors import DeadlineExceeded
from .._core.tokens import CancelSource, CancelToken, _current, current_token
from .inflight import InFlight, Ticket, cut_deadline

if TYPE_CHECKING:
    from .._core.views import ShutdownView as App

__all__ = ["AsyncStreamServer", "ConnectionHandler"]

_log = structlog.get_logger("lifecycle")

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""What ``asyncio.start_server`` calls: ``async def handle(reader, writer)``."""

CUT_MARGIN = 0.1
"""Seconds before the stop deadline at which what still runs is cut.

The runner abandons a stop at its deadline; cutting slightly earlier lets the
stop itself cancel the handlers, close their connections, log them by name
and return within its bound. With less than ``10 * CUT_MARGIN`` left, a tenth
of what is left is kept instead.
"""

# Loop iterations that carry an already-accepted socket to connection_made:
# the accept task's first step creates the transport, which schedules
# connection_made with call_soon. One spare iteration for safety.
_ACCEPT_ITERATIONS = 3

_current_connection: contextvars.ContextVar[_Connection] = contextvars.ContextVar(
    "lifecycle_aioserver_connection"
)


class _Connection:
    """One accepted connection: its ticket, token, writer and handler task.

    Invariant: ``ticket.long_lived`` is True exactly when nothing but
    long-lived work (or nothing at all) runs on the connection: in request
    mode with no ordinary request in progress. Stop waits for the others.
    """

    __slots__ = (
        "busy",
        "by_request",
        "cut",
        "idle_label",
        "peer",
        "server",
        "source",
        "streams",
        "task",
        "ticket",
        "writer",
    )

    def __init__(
        self,
        server: AsyncStreamServer,
        peer: str,
        ticket: Ticket,
        source: CancelSource,
        writer: asyncio.StreamWriter,
        *,
        by_request: bool,
    ) -> None:
        self.server = server
        self.peer = peer
        self.ticket = ticket
        self.source = source
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        self.by_request = by_request  # idle between request() blocks (else: one unit)
        self.busy = 0  # ordinary request() blocks in progress
        self.streams = 0  # long-lived request() blocks in progress
        self.cut = False  # stop cancelled its handler at the deadline
        self.idle_label = f"connection {peer} (idle)"  # the ticket's label between requests

    @property
    def idle(self) -> bool:
        """Between two requests: nothing would be lost by closing it now."""
        return self.by_request and self.busy == 0 and self.streams == 0


class _Request:
    """``async with server.request(label)`` (or ``with``): one unit of work on a connection.

    The hot path of every request: it only flips the connection's ticket
    between busy and idle (no ticket of its own), and makes a token of its
    own only once shutdown was requested (to carry the deadline).
    """

    __slots__ = ("_conn", "_label", "_long_lived", "_reset", "_source")

    def __init__(self, conn: _Connection, label: str, long_lived: bool) -> None:
        self._conn = conn
        self._label = label
        self._long_lived = long_lived
        self._source: CancelSource | None = None
        self._reset: contextvars.Token[CancelToken] | None = None

    def __enter__(self) -> CancelToken:
        conn = self._conn
        ticket = conn.ticket
        if self._long_lived:
            conn.streams += 1
            if conn.busy == 0:
                ticket.label = self._label
                if not ticket.long_lived:  # leaving connection mode while stop may wait
                    ticket.long_lived = True
                    conn.server.tracker.notify()
        else:
            conn.busy += 1
            if conn.busy == 1:
                ticket.long_lived = False
                ticket.label = self._label
                ticket.began = time.monotonic()
        conn.by_request = True
        token = conn.source.token
        deadline = conn.server._deadline()
        if deadline is not None:
            # Shutdown was requested: the request learns when it will be cut.
            self._source = CancelSource(token, deadline=deadline)
            token = self._source.token
            self._reset = _current.set(token)
        return token

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        if self._source is not None:
            if self._reset is not None:
                _current.reset(self._reset)
                self._reset = None
            self._source.close()
            self._source = None
        server = conn.server
        if self._long_lived:
            conn.streams -= 1
        else:
            conn.busy -= 1
            if conn.busy == 0:
                conn.ticket.long_lived = True
                if server._stopping:
                    server.tracker.notify()  # stop may be waiting for this request
        if conn.busy == 0 and conn.streams == 0:
            conn.ticket.label = conn.idle_label
            if server._closing_idle:
                # Stop already ended the idle connections; this one just became idle.
                conn.writer.close()

    async def __aenter__(self) -> CancelToken:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class AsyncStreamServer:
    """A TCP server component for ``asyncio.start_server`` handlers, with a zero-loss stop.

    Args:
        client_connected_cb: ``async def handle(reader, writer)``, called per
            connection in its own task. Inside it `lifecycle.current_token`
            is the connection's token (cancelled at stop once the work in
            progress is done; with a deadline once shutdown was requested).
            The server closes the connection when the handler returns.
        host: address to listen on.
        port: port to listen on; 0 picks a free one (see `port`).
        backlog: the listen backlog (lesson 6: the stdlib's 5 is too small).
        name: for logs; ``"tcp:HOST:PORT"`` by default.
        unit: ``"connection"`` (default): a connection is one unit of work
            until its handler first enters `request`, and idle between
            requests from then on. ``"request"``: connections are idle from
            the accept on; only `request` blocks are waited for at stop.

    The handler reads ``server.draining`` to know that the app is shutting
    down: an HTTP handler then answers with ``Connection: close`` and returns.

    Example::

        async def handle(reader, writer):
            while line := await reader.readline():        # idle: may be ended
                async with server.request(line.decode().strip()):
                    writer.write(b"echo " + line)
                    await writer.drain()
                if server.draining:
                    return                                # closes the connection

        server = lifecycle.AsyncStreamServer(handle, port=9000)
        app = lifecycle.App(drain_delay=2.0)
        app.add(server)
        sys.exit(lifecycle.run(app))

    Added in 0.1.
    """

    def __init__(
        self,
        client_connected_cb: ConnectionHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        backlog: int = 128,
        name: str | None = None,
        unit: Literal["connection", "request"] = "connection",
    ) -> None:
        if not callable(client_connected_cb):
            raise TypeError(
                f"client_connected_cb must be an async function (reader, writer), "
                f"got {client_connected_cb!r}"
            )
        if unit not in ("connection", "request"):
            raise ValueError(f"unit must be 'connection' or 'request', got {unit!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be a positive int, got {backlog!r}")
        self.host = host
        self.backlog = backlog
        self.unit = unit
        self._callback = client_connected_cb
        self._requested_port = port
        self._name = name
        self._address: tuple[str, int] | None = None
        self.tracker = InFlight(f"{self.name} work")
        """The `InFlight` of the connections: one ticket each, long-lived while idle,
        labelled with the request in progress (for metrics, logs and tests)."""
        self._server: asyncio.Server | None = None
        self._conns = CancelSource()
        self._connections: set[_Connection] = set()
        self._shutdown: CancelToken | None = None
        self._shutdown_deadline: Callable[[], float | None] = _no_deadline
        self._stop_deadline: float | None = None
        self._stopping = False
        self._closing_idle = False

    def __repr__(self) -> str:
        state = (
            "stopping"
            if self._stopping
            else "draining"
            if self.draining
            else "serving"
            if self._server is not None
            else "not started"
        )
        return f"<AsyncStreamServer {self.name!r} {state} connections={len(self._connections)}>"

    # -- identity ------------------------------------------------------------

    @property
    def name(self) -> str:
        """For logs: the ``name`` argument, or ``tcp:HOST:PORT``."""
        if self._name is not None:
            return self._name
        host, port = self._address or (self.host, self._requested_port)
        return f"tcp:{host}:{port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it listens on (the real port when 0 was asked for).

        Raises:
            RuntimeError: the server has not started.
        """
        if self._address is None:
            raise RuntimeError(
                f"server {self.name!r} has no address before start(): add it to an App "
                f"and run it, or await server.start()"
            )
        return self._address

    @property
    def port(self) -> int:
        """The port it listens on (see `address`)."""
        return self.address[1]

    @property
    def draining(self) -> bool:
        """True once the app's shutdown was requested (or stop began).

        Handlers should then finish the request at hand, say so (HTTP:
        ``Connection: close``) and close the connection.
        """
        shutdown = self._shutdown
        return self._stopping or (shutdown is not None and shutdown.cancelled)

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return len(self._connections)

    # -- lifecycle -------------------------------------------------------------

    def lifecycle_bind(self, app: App) -> None:
        """Called by ``App.add``: watch the app's shutdown token and deadline."""
        self._shutdown = app.shutdown_token
        self._shutdown_deadline = lambda: app.shutdown_deadline

    async def start(self, token: CancelToken | None = None) -> None:
        """Listen; return once connections are accepted.

        Raises:
            RuntimeError: it was already started.
            OSError: the address cannot be bound (in use, not permitted).
        """
        if self._server is not None or self._stopping:
            raise RuntimeError(
                f"server {self.name!r} was already started; a server starts once "
                f"(create a new one to listen again)"
            )
        self._server = await asyncio.start_server(
            self._on_connect,
            self.host,
            self._requested_port,
            backlog=self.backlog,
            reuse_address=True,
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        self.tracker.name = f"{self.name} work"  # the real port, once known

    def ready(self) -> bool:
        """True while listening (until stop begins)."""
        server = self._server
        return server is not None and not self._stopping and server.is_serving()

    async def stop(self, token: CancelToken | None = None) -> None:
        """Close the listener, finish the work in progress, end the rest by the deadline.

        1. close the listening socket: new connections are refused;
        2. wait until no request (or connection-unit) is in progress;
        3. cancel the connections' tokens and close the idle ones; wait until
           every connection has ended;
        4. ``CUT_MARGIN`` before ``token``'s deadline: cancel the handlers
           still running, abort their connections and log them by name.

        Returns at once when nothing is in flight. Idempotent.
        """
        if token is None:
            token = current_token()
        server = self._server
        if server is None or self._stopping:
            return
        self._stopping = True
        self._stop_deadline = token.deadline
        try:
            # Take in what the kernel has already queued, then close the
            # listening socket itself: from here connections are refused.
            await asyncio.sleep(0)
            server.close()
            for _ in range(_ACCEPT_ITERATIONS):
                await asyncio.sleep(0)
            with _cut_source(token) as cut:
                await self.tracker.wait_idle_async(cut.token, ignore_long_lived=True)
                self._conns.cancel("server stopping")
                self._closing_idle = True
                for conn in list(self._connections):
                    if conn.idle:
                        conn.writer.close()
                idle = await self.tracker.wait_idle_async(cut.token)
            cut_work = [] if idle else self._cut()
            await self._join_handlers(token)
        except BaseException:
            # The stop itself was cancelled (the runner abandoned it): leave
            # nothing running behind.
            self._cut_now()
            raise
        finally:
            self._conns.close()
            self._server = None
        if cut_work:
            raise DeadlineExceeded(self.name, cut_work)

    def request(self, label: str = "", *, long_lived: bool = False) -> _Request:
        """Mark one unit of work on this connection: ``async with server.request("GET /"):``.

        Between two such blocks the connection is *idle*: stop closes it at
        once instead of waiting for it. Inside the block `current_token`
        is the request's token; once shutdown was requested it carries the
        deadline by which the request will be cut. Enter the block as soon as
        the first bytes of a request have been read (before reading the rest).

        Args:
            label: names the request in the log if it is cut (``"GET /slow"``).
            long_lived: a stream that runs until told to end (a subscription,
                a long poll): stop does not wait for it but cancels its token.

        Raises:
            RuntimeError: called outside a connection handler of this server.

        Example::

            async with server.request("GET /orders") as token:
                body = await fetch_orders(timeout=token.remaining())
        """
        conn = _current_connection.get(None)
        if conn is None or conn.server is not self:
            raise RuntimeError(
                f"server.request() must be used inside a connection handler of "
                f"{self.name!r} (in the task asyncio.start_server started for it)"
            )
        return _Request(conn, label, long_lived)

    # -- internals -------------------------------------------------------------

    def _deadline(self) -> float | None:
        """When work begun now will be cut: the shutdown or stop deadline, if any."""
        shutdown = self._shutdown
        if not self._stopping and (shutdown is None or not shutdown.cancelled):
            return None  # the hot path: no shutdown requested
        return cut_deadline(self._shutdown_deadline(), self._stop_deadline)

    def _on_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Coroutine[Any, Any, None]:
        # Runs synchronously inside connection_made, before the handler's task
        # exists: the ticket covers the connection from the accept on.
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        by_request = self.unit == "request"
        label = f"connection {peer}" + (" (idle)" if by_request else "")
        ticket = self.tracker.enter(label, long_lived=by_request)
        assert ticket is not None  # never closed
        source = CancelSource(self._conns.token, deadline=self._deadline())
        conn = _Connection(self, peer, ticket, source, writer, by_request=by_request)
        self._connections.add(conn)
        if self._closing_idle and conn.idle:
            writer.close()  # stop already ended the idle connections
        return self._serve(conn, reader, writer)

    async def _serve(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn.task = asyncio.current_task()
        _current_connection.set(conn)
        reset = _current.set(conn.source.token)
        try:
            await self._callback(reader, writer)
        except asyncio.CancelledError:
            if not conn.cut:
                raise
            # Cut by stop at the deadline: logged there; end the task quietly.
        except ConnectionError as error:
            _log.debug("connection lost", component=self.name, peer=conn.peer, error=repr(error))
        except Exception:  # noqa: BLE001 - a handler's error is logged; the server goes on
            _log.exception("connection handler raised", component=self.name, peer=conn.peer)
        finally:
            _current.reset(reset)
            writer.close()
            conn.source.close()
            self._connections.discard(conn)
            self.tracker.leave(conn.ticket)

    def _cut(self) -> list[str]:
        """Log what still runs, by name, then cut it; return what was cut."""
        running = self.tracker.describe()
        _log.error(
            "work cut at the stop deadline",
            component=self.name,
            requests=sorted(c.ticket.label for c in self._connections if not c.idle),
            running=running,
            connections=len(self._connections),
            hint="raise stop_timeout, or make these handlers honour lifecycle.current_token()",
        )
        self._cut_now()
        return running

    def _cut_now(self) -> None:
        for conn in list(self._connections):
            conn.cut = True
            if conn.task is not None and not conn.task.done():
                conn.task.cancel()
            conn.writer.transport.abort()

    async def _join_handlers(self, token: CancelToken) -> None:
        """Wait (bounded) for the handler tasks to end; they have left the tracker."""
        tasks = [c.task for c in self._connections if c.task is not None and not c.task.done()]
        if tasks:
            remaining = token.remaining()
            await asyncio.wait(tasks, timeout=1.0 if remaining is None else max(remaining, 0.01))


def _no_deadline() -> float | None:
    return None


def _cut_source(token: CancelToken) -> CancelSource:
    """A child of ``token`` that fires `CUT_MARGIN` before its deadline."""
    remaining = token.remaining()
    if remaining is None:
        return CancelSource(token)
    margin = min(CUT_MARGIN, remaining / 10)
    return CancelSource(token, timeout=max(0.0, remaining - margin))
