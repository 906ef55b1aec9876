"""`AsyncStreamServer`: an ``asyncio.start_server`` component that drains without losing work.

Its stop is the stop sequence of `lifecycle._serving.stopseq`, the same for
every server kind, carried out on the event loop (`drive_async`):

1. **Drain** -- from the moment the app's shutdown is requested until this
   component's stop: keep accepting and serving. `AsyncStreamServer.draining`
   turns True so that an HTTP handler answers with ``Connection: close`` and
   closes after it: a keep-alive client sends its next request on the
   connection it has, and a connection closed after a response that did not
   say so loses that request. Meanwhile the load balancer sees ``/readyz``
   turn 503 and stops routing here.
2. **stop** -- take in the connections the kernel already completed (once:
   at most a full queue, ``backlog + 1``, by the cut), then close the
   listening socket itself, and only then serve what was taken in: from then
   on the kernel *refuses* connections, which a load balancer sees and
   routes around (asyncio's ``Server.close()`` alone resets those queued
   connections: 20 of 20 in the backlog test), and a client served meanwhile
   cannot refill the queue. Close the keep-alive connections that sit idle between two
   requests with nothing received; wait for the requests in progress; cancel
   the tokens of the long-lived ones; wait again; shortly before the stop
   deadline cut what still runs, name every request cut and raise
   `DeadlineExceeded`.

Units of work, one `InFlight` ticket per connection:

* the **connection**: by default a connection is one unit of work from accept
  to the handler's return -- all a raw stream server knows;
* the **request**: a handler that marks each unit of work with
  ``async with server.request(label):`` makes its connection *idle* between
  two such blocks (its ticket turns long-lived, and carries the label of the
  request while one runs). Stop waits for the requests, not for idle
  connections: it closes those, and never names them as cut work. A
  keep-alive HTTP handler wants this; ``unit="request"`` makes connections
  idle from the accept on (a connection that never sent a request holds
  nobody up once `FIRST_REQUEST_GRACE` has passed).

The request hot path builds nothing that is not needed until shutdown: a
request flips its connection's ticket (no ticket of its own), reuses its
connection's request object, shares the server's token (no token of its own
unless it is long-lived), and `draining` is a plain attribute. It writes one
context variable: its number on the connection (`note_request`), so that
`lifecycle.mark_long_lived` from a context copied out of it (a task or
thread the handler started) marks it while it runs and nothing once it
ended, never the connection's next request.

Invariant: every accepted connection has a tracker ticket from its
``connection_made`` (before its handler task first runs) until its handler
returns, and the stop does not go past closing the listener before every
connection accepted until then has had its ``connection_made``: a connection
accepted just before the listener closed is waited for like any other.

Invariant: a stop begun before or during `AsyncStreamServer.start` wins. The
socket is bound without listening, and listens only once the server holds it
and no stop has begun; a stop waits for a start in progress to end and then
closes what it made; a start cancelled once listening closes the socket and
resets what it accepted. So once ``stop`` returned, the port refuses
connections and no handler task of the server is left.

Added in 0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import select
import socket
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from .._core.errors import DeadlineExceeded
from .._core.log import get_logger
from .._core.tokens import (
    CancelSource,
    CancelToken,
    CurrentValue,
    _current,
    _get_current,
    cancel_in_background,
    current_token,
    on_cancel_inline,
)
from .._core.views import ShutdownView
from .inflight import (
    InFlight,
    RequestTokens,
    Ticket,
    bind_scope,
    cut_deadline,
    describe_work,
    note_request,
    noted_request,
)
from .listening import Listening, refuse_new_connections, state_word
from .stopseq import (
    CUT_MARGIN,
    FIRST_REQUEST_GRACE,
    FORCE_JOIN,
    Waiting,
    Work,
    cut_time,
    drive_async,
)

__all__ = [
    "CUT_MARGIN",
    "AsyncStreamServer",
    "ConnectionHandler",
    "StopWaiter",
    "take_in_queued_then_close",
]

if TYPE_CHECKING:
    from ssl import SSLContext

_log = get_logger()

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""What ``asyncio.start_server`` calls: ``async def handle(reader, writer)``."""

_END_REASON = "server stopping"  # the reason long-lived requests' tokens are cancelled with
_CUT_REASON = "server stop deadline: connection cut"
# Why a stop in progress cuts at once: a later call of stop has an earlier cut time.
_CUT_NOW_REASON = "another stop's deadline came first"
_CUT_JOIN_MIN = 0.02  # seconds: a shorter join after a cut is not worth a turn of the loop
# accept() errors that consume one queued connection (its peer gave up) and leave the rest.
_ACCEPT_ABORTED = frozenset({errno.ECONNABORTED, errno.EPROTO})

_current_connection: contextvars.ContextVar[_Connection] = contextvars.ContextVar(
    "lifecycle_aioserver_connection"
)


class _Serving:
    """What `AsyncStreamServer` and `ASGIMiddleware` share: the drain, the tokens, the wake-ups.

    Both are the `RequestScope` of their requests, found through the
    requests' token (`bind_scope`): a request sets one context variable, its
    token, and `lifecycle.mark_long_lived` finds the server from it.

    Invariants: ``draining`` is a plain attribute, set by a wake-up
    registered on the app's shutdown token (so it turns True as the token
    fires) or by the stop; every request token descends from
    ``_tokens.root``, cancelled only at the cut, and is bound to this scope;
    ``_ending`` is set before the long-lived requests' sources are looked
    at, and a source made afterwards is cancelled at once, so no long-lived
    request escapes.

    One stop, however many calls (`_stop_once`): the first call of ``stop``
    runs the stop sequence; a call while it runs waits for it and shares its
    outcome (returns, or raises the same `DeadlineExceeded`), and if its own
    cut time comes first it makes the running sequence cut then, so that
    every call returns by its own token's deadline; a call after it ended
    returns that outcome at once. Invariant: ``_stopped`` turns True only
    after ``_outcome`` holds the outcome, and a wake-up follows it.
    """

    def __init__(self) -> None:
        self.draining = False
        """True once the app's shutdown was requested (or the stop began): a plain attribute.

        Handlers should then finish the request at hand, say so (HTTP:
        ``Connection: close``) and close the connection."""
        self._tokens = RequestTokens()
        self._app: ShutdownView | None = None
        self._detach_drain: Callable[[], bool] | None = None
        self._stop_deadline: float | None = None
        self._stopping = False  # a stop began
        self._stopped = False  # the stop ended; _outcome is final
        self._outcome: BaseException | None = None  # what the stop raised (None: it returned)
        self._outcome_tb: TracebackType | None = None  # ... and where, as it first left the stop
        self._cut_labels: list[str] = []  # the requests the stop cut, oldest first
        self._cut_issued = False  # the stop cut: its handlers are (being) cancelled
        self._cut_now = CancelSource()  # cancelled: the stop running cuts at once
        self._ending = False  # the long-lived requests were asked to end
        self._waiter = StopWaiter()
        self._bound = self._tokens.root  # the request token bound to this scope last
        bind_scope(self._tokens.root, self)

    def _lc_mark_long_lived(self) -> bool | None:
        """`RequestScope`: make the calling context's request long-lived; False if it ended."""
        raise NotImplementedError

    def lifecycle_bind(self, app: ShutdownView) -> None:
        """Drain once ``app``'s shutdown is requested (``App.add`` calls this)."""
        if self._detach_drain is not None:
            self._detach_drain()
        self._app = app
        self._detach_drain = on_cancel_inline(app.shutdown_token, self._begin_drain)
        watch = getattr(app, "watch_arrivals", None)
        if callable(watch):
            # An adaptive drain reads the last arrival: the middleware's, or the tracker's.
            watch(getattr(self, "tracker", self))

    def _begin_drain(self) -> None:
        # Runs as the shutdown token fires: a flag, no logging, no locks.
        self.draining = True

    def _drain(self, deadline: float | None) -> None:
        """The stop began (its deadline): requests begun from now on learn it."""
        self._stop_deadline = deadline
        self.draining = True
        self._tokens.renew(self._cut_deadline())

    def _request_token(self) -> CancelToken:
        """The token of work that begins now: shared, never made per request."""
        if not self.draining:
            return self._tokens.root
        token = self._tokens.draining(self._cut_deadline)
        if token is not self._bound:
            bind_scope(token, self)
            self._bound = token
        return token

    def _cut_deadline(self) -> float | None:
        shutdown = self._app.shutdown_deadline if self._app is not None else None
        return cut_deadline(shutdown, self._stop_deadline)

    def _long_lived_source(self, keep: Callable[[CancelSource], object]) -> CancelSource:
        """The own source of a request turning long-lived; cancelled at once if streams ended.

        ``keep`` records it where `_end_long_lived` will find it, before
        ``_ending`` is read (the other half of the class invariant).
        """
        source = CancelSource(self._request_token())
        bind_scope(source.token, self)
        keep(source)
        if self._ending:
            cancel_in_background(source, _END_REASON)
        return source

    def _end_long_lived(self, sources: list[CancelSource]) -> None:
        """Ask the long-lived requests to end: cancel ``sources``, and any made from now on."""
        self._ending = True
        for source in sources:
            cancel_in_background(source, _END_REASON)

    # -- one stop, however many calls ------------------------------------------

    async def _stop_once(
        self,
        token: CancelToken,
        name: str,
        sequence: Callable[[CancelToken], Awaitable[object]],
    ) -> None:
        """Run ``sequence`` for the first call of ``stop``; share its outcome with every other.

        The sequence gets a token cancelled by ``token`` or by a later call
        whose cut time comes first (``_cut_now``). A stop abandoned (its task
        cancelled) cuts in the sequence's driver; the later calls then see
        what it cut.
        """
        if self._stopping:
            await self._join_stop(token, name)
            return
        self._stopping = True
        driving = CancelSource.linked(token, self._cut_now.token)
        try:
            await sequence(driving.token)
        except Exception as error:  # DeadlineExceeded, or an operation's error: every call's
            self._outcome, self._outcome_tb = error, error.__traceback__
            raise
        except BaseException:  # abandoned (cancelled): the later calls get what was cut
            self._outcome = self._cut_outcome(name)
            raise
        finally:
            driving.close()
            self._stopped = True
            self._waiter.wake()

    async def _join_stop(self, token: CancelToken, name: str) -> None:
        """A call of ``stop`` while (or after) another ran: its outcome, by ``token``'s deadline."""
        try:
            if not self._stopped:
                await self._wait_stopped(cut_time(time.monotonic(), token.deadline), token)
            if not self._stopped:
                # This call's cut time came first (or its token fired): the running
                # sequence cuts now; what is left of this call's budget is for its join.
                self._cut_now.cancel(_CUT_NOW_REASON)
                remaining = token.remaining()
                await self._wait_stopped(
                    time.monotonic() + (FORCE_JOIN if remaining is None else remaining), None
                )
        except BaseException:
            # Abandoned: leave nothing running, as the sequence's driver does.
            self._cut_now.cancel(_CUT_NOW_REASON)
            raise
        if not self._stopped:
            cut = self._cut_outcome(name)  # the sequence cut, and is still joining
            if cut is not None:
                raise cut
            return
        outcome = self._outcome
        if outcome is not None:
            raise outcome.with_traceback(self._outcome_tb)

    async def _wait_stopped(self, until: float | None, token: CancelToken | None) -> None:
        """Until the stop ended, ``until`` passed or ``token`` fired; spurious wakes looked past."""
        while not self._stopped and not (token is not None and token.cancelled):
            timeout = None if until is None else until - time.monotonic()
            if timeout is not None and timeout <= 0:
                return
            await self._waiter.wait(lambda: self._stopped, timeout, token)

    def _cut_outcome(self, name: str) -> DeadlineExceeded | None:
        """What a stop that cut without finishing amounts to: the cut, if it named requests."""
        if not self._cut_labels:
            return None
        return DeadlineExceeded(name, self._cut_labels, logged=True)  # by the first stop

    def _record_cut(self, labels: list[str]) -> list[str]:
        """The stop's cut ends ``labels``: kept for the calls of ``stop`` that join it."""
        self._cut_labels = labels
        return labels


class _Connection:
    """One accepted connection: its ticket, streams, handler task and request bookkeeping.

    `lifecycle.mark_long_lived` marks the request in progress on it, or the
    connection itself in connection mode (`AsyncStreamServer` is the scope
    and finds the connection of the calling task).

    Invariants: ``busy`` counts the ordinary units in progress (in connection
    mode the connection itself is one, until its first `request`);
    ``streams`` the long-lived ones. ``ticket.long_lived`` is True exactly
    when ``busy == 0``. The connection is *idle* when both are 0.
    """

    __slots__ = (
        "accepted",
        "busy",
        "by_request",
        "current",
        "cut",
        "ended",
        "idle_label",
        "peer",
        "reader",
        "requests",
        "server",
        "source",
        "spare",
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
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        by_request: bool,
    ) -> None:
        self.server = server
        self.peer = peer
        self.ticket = ticket
        self.reader = reader
        self.writer = writer
        self.accepted = ticket.began
        self.task: asyncio.Task[None] | None = None
        self.by_request = by_request  # idle between request() blocks (else: one unit)
        self.busy = 0 if by_request else 1
        self.streams = 0
        self.requests = 0  # request() blocks entered so far
        self.current: _Request | None = None  # the innermost request() block in progress
        self.source: CancelSource | None = None  # own token, once marked long-lived as a whole
        self.cut = False  # stop cancelled its handler at the deadline
        self.ended = False  # its handler returned: nothing of it can be marked
        self.idle_label = f"connection {peer} (idle)"  # the ticket's label between requests
        self.spare: _Request | None = _Request(self)  # reused by request(): no allocation

    @property
    def idle(self) -> bool:
        """Between two requests: nothing would be lost by closing it now."""
        return self.busy == 0 and self.streams == 0

    def mark_long_lived(self, use: int) -> bool:
        """Make request number ``use`` long-lived, if it is in progress; False if it is not.

        ``use`` is what the calling context noted (`noted_request`): the
        number of the `request` block it runs in (or was copied from), 0 for
        the connection unit of connection mode. A context copied out of a
        block that ended names a number no block in progress has.
        """
        if self.ended:
            return False
        request = self.current
        while request is not None:  # the innermost block first; nesting is rare
            if request._use == use:
                request.mark()
                return True
            request = request._outer
        if use != 0 or self.by_request:
            return False  # that request ended (or the connection unit did)
        if self.source is None:
            # Connection mode: the connection itself is the unit; it turns into a stream.
            self.source = self.server._stream_source()
            _current.set(self.source.token)
            self.busy -= 1
            self.streams += 1
            self.ticket.long_lived = True
            self.server._moved(self)
        return True

    def end_connection_unit(self) -> None:
        """The handler entered its first `request`: the connection-wide unit ends."""
        self.by_request = True
        if self.source is None:
            self.busy -= 1
        else:
            self.streams -= 1  # its source stays the handler's token; released at the end


# Bound once: the per-request path calls it without an attribute lookup each.
_monotonic = time.monotonic


class _Request:
    """``async with server.request(label)`` (or ``with``): one unit of work on a connection.

    The hot path of every request: it flips the connection's ticket between
    busy and idle (no ticket of its own), is reused from one request to the
    next, and makes a token of its own only when it is long-lived.
    """

    __slots__ = ("_conn", "_label", "_long_lived", "_outer", "_reset", "_source", "_use")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._label = ""
        self._use = 0  # its number on the connection (`_Connection.requests`) while it runs
        self._long_lived = False
        self._outer: _Request | None = None
        self._source: CancelSource | None = None
        self._reset: contextvars.Token[CurrentValue] | None = None

    def __enter__(self) -> CancelToken:
        conn = self._conn
        if not conn.by_request:
            conn.end_connection_unit()
        self._use = use = conn.requests + 1
        conn.requests = use
        conn.busy = busy = conn.busy + 1
        if busy == 1:
            ticket = conn.ticket
            ticket.long_lived = False
            ticket.label = self._label
            # Each request is an arrival for an adaptive drain, not only its connection.
            conn.server.tracker.last_arrival = ticket.began = _monotonic()
        self._outer = conn.current
        conn.current = self
        note_request(use)  # what a copy of this context may mark
        if conn.server.draining:
            # Shutdown was requested: the request learns when it will be cut.
            self._reset = _current.set(conn.server._request_token())
        if self._long_lived:
            self.mark()
        current = _get_current()
        # Never a request's record here but under an ASGI call nested in the handler.
        return current if current.__class__ is CancelToken else current_token()

    def mark(self) -> None:
        """Make this request long-lived: not waited for at stop; its own token is cancelled."""
        if self._source is not None:
            return
        conn = self._conn
        server = conn.server
        self._source = server._stream_source()
        reset = _current.set(self._source.token)
        if self._reset is None:
            self._reset = reset
        conn.busy -= 1
        conn.streams += 1
        if conn.busy == 0:
            conn.ticket.long_lived = True
            conn.ticket.label = self._label
        server._moved(conn)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        outer = conn.current = self._outer
        if outer is not None:
            self._outer = None
            note_request(outer._use)  # the handler's context is the enclosing block's again
        if self._reset is not None:
            # ValueError: marked long-lived from another task; this one's context is unchanged.
            with contextlib.suppress(ValueError):
                _current.reset(self._reset)
            self._reset = None
        source = self._source
        if source is None:
            conn.busy = busy = conn.busy - 1
        else:
            self._source = None
            conn.streams -= 1
            conn.server._streams.discard(source)
            source.close()
            busy = conn.busy
        if busy == 0:
            ticket = conn.ticket
            ticket.long_lived = True
            if conn.streams == 0:
                ticket.label = conn.idle_label
        if conn.server._stopping:
            conn.server._waiter.wake()  # the stop may be waiting for this request
        if conn.spare is None:
            conn.spare = self

    async def __aenter__(self) -> CancelToken:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class AsyncStreamServer(Listening, _Serving):
    """A TCP server component for ``asyncio.start_server`` handlers, with a zero-loss stop.

    Args:
        client_connected_cb: ``async def handle(reader, writer)``, called per
            connection in its own task. Inside it `lifecycle.current_token`
            is cancelled when the stop cuts what remains; once shutdown was
            requested it carries the deadline of that cut. The server closes
            the connection when the handler returns.
        host: address to listen on.
        port: port to listen on; 0 picks a free one (see `port`).
        backlog: the listen backlog (128: a burst of connections beyond it is
            dropped by the kernel; the stdlib ``socketserver``'s 5 is too small).
        name: for logs; ``"tcp:HOST:PORT"`` by default.
        unit: ``"connection"`` (default): a connection is one unit of work
            until its handler first enters `request`, and idle between
            requests from then on. ``"request"``: connections are idle from
            the accept on; only `request` blocks are waited for at stop.

    The handler reads ``server.draining`` to know that the app is shutting
    down: an HTTP handler then answers with ``Connection: close`` and returns.
    A long-lived stream calls `lifecycle.mark_long_lived` (or enters
    ``server.request(label, long_lived=True)``): stop does not wait for it,
    it cancels its token.

    Example::

        async def handle(reader, writer):
            while line := await reader.readline():        # idle: may be ended
                with server.request(line.decode().strip()):
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

    KIND = "tcp"

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
        super().__init__()
        self.tracker = InFlight(f"{self.name} work")
        """The `InFlight` of the connections: one ticket each, long-lived while idle,
        labelled with the request in progress (for metrics, logs and tests)."""
        self._server: asyncio.Server | None = None
        self._starting = False  # start() is binding (a stop waits for it to end)
        self._connections: set[_Connection] = set()
        self._streams: set[CancelSource] = set()  # the long-lived requests' own sources
        self._ops = _StopOps(self)

    def __repr__(self) -> str:
        state = state_word(
            stopped=self._stopped,
            stopping=self._stopping,
            draining=self.draining,
            listening=self._server is not None,
        )
        return f"<AsyncStreamServer {self.name!r} {state} connections={len(self._connections)}>"

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return len(self._connections)

    # -- lifecycle -------------------------------------------------------------

    async def start(self, token: CancelToken | None = None) -> None:
        """Listen; return once connections are accepted.

        A `stop` that begins before or during the start wins: the server
        never listens (or stops listening before that stop returns), and
        start raises.

        Raises:
            RuntimeError: it was already started, or stopped (before or while
                it was starting).
            OSError: the address cannot be bound (in use, not permitted).
        """
        if self._stopping:
            raise RuntimeError(
                f"server {self.name!r} was stopped; a stopped server does not listen "
                f"again (create a new one)"
            )
        if self._starting or self._server is not None:
            raise RuntimeError(
                f"server {self.name!r} was already started; a server starts once "
                f"(create a new one to listen again)"
            )
        self._starting = True
        try:
            await self._listen()
        finally:
            self._starting = False
            self._waiter.wake()  # a stop may be waiting for the start to end
        if self._stopping:
            raise RuntimeError(
                f"server {self.name!r} was stopped while it was starting; its stop "
                f"closed the listener (create a new server to listen again)"
            )

    async def _listen(self) -> None:
        """Bind, then listen unless a stop began meanwhile.

        Invariant: the socket listens only once ``_server`` holds it, so the
        stop (which waits for the start to end) closes it; until then it is
        bound but not listening, and the kernel refuses connections to it.
        """
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            self._protocol,
            self.host,
            self._requested_port,
            backlog=self.backlog,
            reuse_address=True,
            start_serving=False,
        )
        sockname = listener.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        self.tracker.name = f"{self.name} work"  # the real port, once known
        if self._stopping:
            listener.close()  # never listened
            return
        self._server = listener
        try:
            await listener.start_serving()
        except BaseException:
            if not self._stopping:
                # Cancelled (a start timeout): no stop will come; end what was accepted.
                self._server = None
                listener.close()
                self._abort_connections()
            raise  # else: the stop waiting for this start closes the listener

    def _abort_connections(self) -> None:
        """Reset every connection and cancel its handler (a start that did not complete)."""
        for conn in list(self._connections):
            conn.cut = True
            if conn.task is not None:
                conn.task.cancel()
            conn.writer.transport.abort()

    def ready(self) -> bool:
        """True while listening (until stop begins)."""
        server = self._server
        return (
            server is not None and not self._starting and not self._stopping and server.is_serving()
        )

    async def stop(self, token: CancelToken | None = None) -> None:
        """Stop without losing work: the stop sequence of this module's docstring.

        Returns when every connection has ended, at once when nothing is in
        flight. Once it returned, the port refuses connections, also when it
        was called before or during `start` (which then raises and never
        listens). Called again while it runs, it returns when the first call
        does, with the same outcome, but by its own token's deadline (cutting
        then if the first call would cut later); called after it finished, it
        returns that outcome at once.

        Raises:
            DeadlineExceeded: requests were cut `CUT_MARGIN` before ``token``'s
                deadline; ``.cut`` names every one (idle connections are not
                requests and are never named).
        """
        if token is None:
            token = current_token()
        await self._stop_once(token, self.name, self._stop_sequence)

    async def _stop_sequence(self, token: CancelToken) -> None:
        try:
            if self._starting:
                # A start is binding: it listens only if no stop began, so wait for
                # it to end, then close what it made.
                until = cut_time(time.monotonic(), token.deadline)
                while self._starting and not token.cancelled:
                    timeout = None if until is None else until - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break
                    await self._waiter.wait(lambda: not self._starting, timeout, token)
            await drive_async(self._ops, token, name=self.name)
        finally:
            self._tokens.close()
            if self._detach_drain is not None:
                self._detach_drain()
            server, self._server = self._server, None
            if server is not None:
                server.close()  # the listener, if the sequence did not get to it

    def request(self, label: str = "", *, long_lived: bool = False) -> _Request:
        """Mark one unit of work on this connection: ``async with server.request("GET /"):``.

        Between two such blocks the connection is *idle*: stop closes it
        instead of waiting for it. Inside the block `current_token` is the
        request's token; once shutdown was requested it carries the deadline
        by which the request will be cut. Enter the block as soon as the
        first bytes of a request have been read (before reading the rest).

        Args:
            label: names the request in the log if it is cut (``"GET /slow"``).
            long_lived: a stream that runs until told to end (a subscription,
                a long poll): stop does not wait for it but cancels its token.
                The shorthand for calling `lifecycle.mark_long_lived` first
                thing in the block.

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
        block = conn.spare
        if block is None:
            block = _Request(conn)
        else:
            conn.spare = None
        block._label = label
        block._long_lived = long_lived
        return block

    # -- connections -------------------------------------------------------------

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        """The protocol of one connection, for the listener and for the backlog taken in."""
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._on_connect)

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Runs synchronously inside connection_made: the ticket covers the
        # connection from the accept on, and the handler's task is ours.
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        by_request = self.unit == "request"
        label = f"connection {peer}" + (" (idle)" if by_request else "")
        ticket = self.tracker.enter(label, long_lived=by_request)
        assert ticket is not None  # never closed
        conn = _Connection(self, peer, ticket, reader, writer, by_request=by_request)
        self._connections.add(conn)
        conn.task = asyncio.get_running_loop().create_task(self._serve(conn))
        # The cleanup runs even for a task cancelled (cut) before its first step.
        conn.task.add_done_callback(lambda _: self._forget(conn))

    async def _serve(self, conn: _Connection) -> None:
        _current_connection.set(conn)
        _current.set(self._request_token())
        note_request(0)  # the connection unit (none inherited from the accepting task)
        try:
            await self._callback(conn.reader, conn.writer)
        except asyncio.CancelledError:
            if not conn.cut:
                raise
            # Cut by stop at the deadline: named there; end the task quietly.
        except ConnectionError as error:
            _log.debug("connection lost", component=self.name, peer=conn.peer, error=repr(error))
        except Exception:  # noqa: BLE001 - a handler's error is logged; the server goes on
            _log.exception("connection handler raised", component=self.name, peer=conn.peer)

    def _forget(self, conn: _Connection) -> None:
        """The handler's task is done: close the connection, release what it held."""
        conn.ended = True
        conn.writer.close()
        if conn.source is not None:
            self._streams.discard(conn.source)
            conn.source.close()
        self._connections.discard(conn)
        self.tracker.leave(conn.ticket)
        if self._stopping:
            self._waiter.wake()

    # -- tokens and wake-ups ------------------------------------------------------

    def _lc_mark_long_lived(self) -> bool:
        conn = _current_connection.get(None)
        if conn is None or conn.server is not self:
            return False
        return conn.mark_long_lived(noted_request())

    def _stream_source(self) -> CancelSource:
        """The own source of a request turning long-lived (cancelled at once if streams end)."""
        return self._long_lived_source(self._streams.add)

    def _moved(self, conn: _Connection) -> None:
        """``conn``'s work turned long-lived: the stop may be waiting for that."""
        if self._stopping:
            self._waiter.wake()

    def _work(self) -> Work:
        ordinary = long_lived = 0
        for conn in self._connections:
            ordinary += conn.busy
            long_lived += conn.streams
        return Work(ordinary, long_lived, len(self._connections))


class _StopOps:
    """The stop sequence's operations (`AsyncStopOps`) on an `AsyncStreamServer`."""

    def __init__(self, server: AsyncStreamServer) -> None:
        self.server = server

    def work(self) -> Work:
        return self.server._work()

    def drain(self, deadline: float | None) -> None:
        self.server._drain(deadline)

    async def close_listener(self, timeout: float | None) -> None:
        """Take in what the kernel queued, once, then close the listening socket.

        `take_in_queued_then_close`: the connections taken in are served only
        once the listening socket is closed; later attempts are refused.
        """
        server = self.server
        listener = server._server
        if listener is not None:
            await take_in_queued_then_close(
                listener, server._protocol, server.name, backlog=server.backlog, timeout=timeout
            )

    def close_idle(self, now: float) -> float | None:
        server = self.server
        recheck: float | None = None
        for conn in list(server._connections):
            if not conn.idle or conn.writer.is_closing():
                continue
            if conn.requests == 0:
                due = conn.accepted + FIRST_REQUEST_GRACE
                if due > now:
                    # Just accepted: its first request is usually on the way.
                    recheck = due if recheck is None else min(recheck, due)
                    continue
            if _has_input(conn):
                continue  # a request is arriving: it is served, with Connection: close
            conn.writer.close()  # the handler reads EOF and returns
        return recheck

    async def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        server = self.server
        await server._waiter.wait(lambda: _holds(server._work(), what), timeout, token)

    def end_long_lived(self) -> None:
        self.server._end_long_lived(list(self.server._streams))

    def cut(self) -> list[str]:
        """Name what remains and cancel its tokens; the handlers are cancelled, later.

        The handler tasks are cancelled and their transports aborted from a
        callback of the loop's next turn, so the stop names and logs what it
        cut and, with no time left to join, returns before hundreds of
        handlers run (200 cut here at once: 3-33 ms past a 0.05 s budget,
        measured).
        """
        server = self.server
        cut = describe_work([c.ticket for c in server._connections if not c.idle], time.monotonic())
        server._tokens.cut(_CUT_REASON)
        server._cut_issued = True
        try:
            asyncio.get_running_loop().call_soon(server._abort_connections)
        except RuntimeError:  # no loop runs here: abort them now
            server._abort_connections()
        return server._record_cut(cut)

    async def join(self, timeout: float | None) -> bool:
        if self.server._cut_issued and timeout is not None and timeout < _CUT_JOIN_MIN:
            return not self.server._connections  # no time to wait for the cut handlers
        tasks = [c.task for c in self.server._connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return not self.server._connections


class StopWaiter:
    """Where a stop waits for its work to change, woken from any thread, with no polling.

    The code that changes the work (a request ends, turns long-lived, a
    connection closes) calls `wake` when a stop runs; the stop's `wait`
    returns once its condition holds, it was woken, its time is up or its
    token fired. Spurious returns are fine: the stop sequence looks again.

    Invariant: `wait` registers itself before it checks its condition, and
    the changers change the work before they call `wake`, so no change can
    fall between the check and the wait unseen.

    Example::

        waiter = StopWaiter()
        await waiter.wait(lambda: not calls, timeout=5.0, token=token)   # the stop
        waiter.wake()                                                    # a request ended
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        # The waits in progress (usually one: the stop's).
        self._pending: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def wake(self) -> None:
        """The work changed: let the waiting stops look again (any thread)."""
        for loop, waiter in list(self._pending):
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
                loop.call_soon_threadsafe(_resolve, waiter)

    async def wait(
        self, holds: Callable[[], bool], timeout: float | None, token: CancelToken | None = None
    ) -> None:
        """Until ``holds()``, a `wake`, ``timeout`` seconds, or ``token`` fires."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (loop, waiter)
        self._pending.append(entry)
        detach = on_cancel_inline(token, self.wake) if token is not None else None
        try:
            if (token is not None and token.cancelled) or holds():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            if detach is not None:
                detach()
            self._pending.remove(entry)


def _holds(work: Work, what: Waiting) -> bool:
    if what == "ordinary":
        return work.ordinary == 0
    if what == "requests":
        return work.requests == 0
    return work.connections == 0


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def take_in_queued_then_close(
    listener: asyncio.Server,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    name: str,
    *,
    backlog: int,
    timeout: float | None,
    ssl: SSLContext | None = None,
) -> None:
    """Take in what the kernel queued on ``listener``, close it, then serve what was taken in.

    ``take_in_queued_then_close(listener, protocol_factory, name, *, backlog,
    timeout, ssl=None)``: the listener-closing step of a stop, for any
    ``asyncio.Server`` (``listener``) whose connections ``protocol_factory``
    makes (what was passed to ``loop.create_server``; ``ssl`` as passed
    there). ``name`` names the server in the log, ``backlog`` is the listen
    backlog, ``timeout`` the seconds it may spend accepting (None: no bound).

    asyncio's ``Server.close()`` alone resets the connections the kernel
    completed but the loop had not accepted yet, and drops those the loop
    accepted in the same iteration (their transport cannot attach to a
    closed server). So: stop the loop's accepting, let the connections it
    accepted already attach, make the kernel drop new handshakes
    (`refuse_new_connections`: none completes between the last accept and
    the close, which would reset it), accept what is queued
    (`_accept_queued`), then close; every later connection attempt is
    refused. Only then are the
    connections taken in served: a client served meanwhile cannot refill
    the queue.

    The queue is taken in once, not until it is empty: at most what it can
    hold (``backlog + 1`` on Linux) per socket, and by ``timeout``. A queue
    that refills as fast as it is taken in would otherwise keep the listener
    open until the cut. When it returns, every connection taken in has had
    its protocol's ``connection_made``; one whose transport could not be
    made is closed and logged at debug level.

    Example::

        await take_in_queued_then_close(
            listener, self._protocol, self.name, backlog=self.backlog, timeout=timeout
        )
    """
    loop = asyncio.get_running_loop()
    for sock in listener.sockets:
        with contextlib.suppress(NotImplementedError):  # a loop without add_reader
            loop.remove_reader(sock.fileno())
    await asyncio.sleep(0)  # what the loop accepted already creates its transports
    until = None if timeout is None else time.monotonic() + timeout
    listening = [sock.dup() for sock in listener.sockets]  # sockets we may accept() on
    for sock in listening:  # no handshake completes between the last accept and the close
        refuse_new_connections(sock, name)
    try:
        queued = [
            conn
            for sock in listening
            for conn in _accept_queued(sock, name, limit=backlog + 1, until=until)
        ]
    finally:
        for sock in listening:
            sock.close()
    listener.close()  # from here the kernel refuses new connections
    results = await asyncio.gather(
        *(loop.connect_accepted_socket(protocol_factory, conn, ssl=ssl) for conn in queued),
        return_exceptions=True,
    )
    for conn, result in zip(queued, results, strict=True):
        if isinstance(result, BaseException):
            _log.debug("queued connection lost", component=name, error=repr(result))
            conn.close()
    # Every connection taken in has had its connection_made, scheduled by its
    # transport in the iteration just run.
    await asyncio.sleep(0)


def _accept_queued(
    sock: socket.socket,
    name: str,
    *,
    limit: int | None = None,
    until: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[socket.socket]:
    """Accept, without serving, what the kernel has queued on ``sock`` (non-blocking).

    Until the queue is empty, ``limit`` connections were taken or ``clock()``
    reached ``until``, whichever comes first. A listener that closes next
    passes its queue's size as ``limit`` (``backlog + 1`` on Linux): under
    load the queue may never be empty.

    Example::

        taken = _accept_queued(listening, "api", limit=server.backlog + 1, until=deadline)
    """
    accepted: list[socket.socket] = []
    taken = 0  # queue entries taken: accepted, or aborted by their peer
    while (limit is None or taken < limit) and (until is None or clock() < until):
        taken += 1
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError as error:
            if error.errno in _ACCEPT_ABORTED:
                continue  # that one is gone; the rest of the queue is still there
            # Out of descriptors or memory: what is left is reset as the listener closes.
            _log.warning(
                "accept failed while closing the listener", component=name, error=str(error)
            )
            return accepted
        accepted.append(conn)
    return accepted


def _has_input(conn: _Connection) -> bool:
    """Whether bytes of a next request are buffered or waiting in the kernel."""
    # StreamReader keeps what it received and the handler did not read yet in
    # its buffer (``_buffer``, a bytearray, in every CPython since 3.4).
    if getattr(conn.reader, "_buffer", None):
        return True
    sock = conn.writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile: nothing to serve
        return False
