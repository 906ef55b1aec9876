"""lifecycle.grpc: grpcio servers (``grpc.server``, ``grpc.aio``) as components, stopped losslessly.

``pip install 'lifecycle[grpc]'`` (grpcio, and grpcio-health-checking for the
``grpc.health.v1`` service). Two components, one per grpcio flavour:

* `Server`: the threaded ``grpc.server``; its handlers are plain functions.
* `AioServer`: ``grpc.aio.server``; its handlers are ``async def`` (plain ones
  work too, as on grpcio's own aio server).

Both run every RPC, and your interceptors, under `lifecycle.current_token()`
(a server interceptor put in front of yours), serve ``grpc.health.v1.Health``
(``Check``, ``Watch``, ``List``) when grpcio-health-checking is installed, and
stop through the one stop sequence of every lifecycle server
(`lifecycle._serving.stopseq`): the drain turns health NOT_SERVING, then
grpcio's ``stop(grace)`` refuses new RPCs, unary and client-streaming RPCs
finish, server-streaming and bidi RPCs are asked to end through their tokens
(their request streams end with them: `requests`), and whatever still runs shortly
before the stop deadline is cut and named: the stop raises
`lifecycle.DeadlineExceeded` (exit code TIMEOUT) whose ``.cut`` names each
cut RPC by its method (``"/shop.Orders/Watch (9.9s)"``). Nothing cut: the
stop returns normally.

Example::

    import sys
    import grpc
    import lifecycle
    import lifecycle.grpc

    def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello " + request

    greeter = grpc.method_handlers_generic_handler(
        "demo.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
    )
    app = lifecycle.App(drain_delay=2.0)
    app.add(lifecycle.grpc.Server(handlers=[greeter], port=50051))
    sys.exit(lifecycle.run(app))

Added in 0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent import futures
from typing import Any, ClassVar, Final, TypeVar, cast, overload

try:
    import grpc
    import grpc.aio
except ImportError as _error:  # pragma: no cover - exercised only without grpcio
    raise ImportError(
        f"lifecycle.grpc needs grpcio ({_error}); install it with: pip install 'lifecycle[grpc]'"
    ) from None

try:
    from grpc_health.v1 import health_pb2 as _health_pb2
except ImportError:  # pragma: no cover - exercised only without grpcio-health-checking
    _health_pb2 = None

from ._core.errors import DeadlineExceeded
from ._core.log import get_logger
from ._core.tokens import (
    CancelSource,
    CancelToken,
    _current,
    _set_current,
    cancel_in_background,
    current_token,
    on_cancel_inline,
)
from ._core.views import ShutdownView
from ._serving.inflight import (
    InFlight,
    RequestTokens,
    Slot,
    cut_deadline,
    enter_scope,
    note_request,
    noted_request,
)
from ._serving.stopseq import Waiting, Work, drive_async, drive_sync

__all__ = ["HEALTH_SERVICE", "AioServer", "Server", "requests"]

_T = TypeVar("_T")

_log = get_logger()

HEALTH_SERVICE: Final = "grpc.health.v1.Health"
"""The name of the health service both servers serve (with grpcio-health-checking)."""

_END_REASON: Final = "server stopping: streaming RPC asked to end"
_CUT_REASON: Final = "server stop deadline: RPC cut"
_REFUSED: Final = "server is shutting down; retry on another replica"
_NO_DEADLINE_GRACE: Final = 1e7
"""The grace given to grpcio's stop when the stop token has no deadline: for ever, in
effect (grpcio's ``None`` would cancel every RPC at once)."""
_WATCH_RECHECK: Final = 30.0
"""Seconds a health Watch waits for a change before it looks again (it is woken sooner)."""

if _health_pb2 is not None:
    _SERVING: int = _health_pb2.HealthCheckResponse.SERVING
    _NOT_SERVING: int = _health_pb2.HealthCheckResponse.NOT_SERVING
    _SERVICE_UNKNOWN: int = _health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
else:  # pragma: no cover
    _SERVING, _NOT_SERVING, _SERVICE_UNKNOWN = 1, 2, 3


# -- the RPCs in progress ------------------------------------------------------------------


class _Call(Slot):
    """One RPC in progress: a reused `Slot` of the tracker, and its own token once long-lived.

    Slots are kept on a free list and reused from one RPC to the next, so
    that a unary RPC takes no lock and makes nothing. It is the
    `RequestScope` of the RPC, so that `lifecycle.mark_long_lived` in a
    handler turns a unary RPC (a long poll) into one the stop asks to end.
    """

    __slots__ = ("server", "source")

    def __init__(self, server: _GrpcServer) -> None:
        super().__init__()
        self.server = server
        self.source: CancelSource | None = None

    def own_token(self, parent: CancelToken) -> CancelToken:
        """Make the RPC long-lived: a token of its own, which the stop cancels to end it."""
        server = self.server
        source = CancelSource(parent)
        self.source = source
        # Invariant (with _end_long_lived, which sets _ending before it looks
        # at _streams): a source made while streams are being ended is cancelled
        # by one side or the other.
        with server._lock:
            server._streams.add(source)
        if server._ending:
            cancel_in_background(source, _END_REASON)
        server.tracker.mark_long_lived(self)
        return source.token

    def _lc_mark_long_lived(self) -> bool:
        if not self.active or noted_request() != self.uses:
            return False  # no RPC, or not this context's: it ended (the slot may serve another)
        if self.source is None:
            _current.set(self.own_token(current_token()))
        return True

    def release(self) -> None:
        server = self.server
        source = self.source
        if source is not None:
            self.source = None
            with server._lock:
                server._streams.discard(source)
            source.close()
        server.tracker.end(self)
        server._free.append(self)


def _kind(handler: Any) -> tuple[str, Callable[..., Any]]:
    """``("unary_unary", behaviour)``: which of the four RPC shapes ``handler`` serves."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind, None)
        if behaviour is not None:
            return kind, behaviour
    raise TypeError(f"{handler!r} is no grpc.RpcMethodHandler: it has no behaviour")


_MAKERS: Final = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


# -- health -------------------------------------------------------------------------------


class _Health:
    """``grpc.health.v1.Health`` whose ``Watch`` streams end at the stop.

    grpcio-health-checking's own servicer keeps ``Watch`` streams open until
    the client leaves, so that they hold the whole grace of grpcio's stop;
    this one serves the same messages, and every ``Watch`` runs under its
    RPC's token: it sends NOT_SERVING at the drain and returns (status OK)
    when the stop asks streaming RPCs to end.

    Invariant: ``_version`` grows with every change, under ``_cond``; a
    watcher notes the version it sent and sleeps only while it is unchanged.
    """

    def __init__(self, max_watches: int | None = None) -> None:
        self._cond = threading.Condition()
        self._max_watches = max_watches  # the threaded server's: a Watch holds a thread
        self._watching = 0
        self._status: dict[str, int] = {"": _SERVING}
        self._version = 0
        self._frozen = False  # the drain began: later changes are ignored
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self, service: str, status: int) -> None:
        with self._cond:
            if self._frozen:
                return
            self._status[service] = status
            self._changed()

    def shut_down(self) -> None:
        """Every service NOT_SERVING for good (the drain began)."""
        with self._cond:
            if self._frozen:
                return
            self._frozen = True
            for service in self._status:
                self._status[service] = _NOT_SERVING
            self._changed()

    def status(self, service: str) -> int | None:
        with self._cond:
            return self._status.get(service)

    def _changed(self) -> None:
        self._version += 1
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits
                loop.call_soon_threadsafe(_resolve, waiter)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _snapshot(self, service: str) -> tuple[int, int]:
        with self._cond:
            return self._status.get(service, _SERVICE_UNKNOWN), self._version

    # -- the RPCs -----------------------------------------------------------------

    def check(self, request: Any, context: Any) -> Any:
        status = self.status(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(f"unknown service {request.service!r}")
            return _health_pb2.HealthCheckResponse()
        return _health_pb2.HealthCheckResponse(status=status)

    async def check_async(self, request: Any, context: Any) -> Any:
        return self.check(request, context)

    def list(self, request: Any, context: Any) -> Any:
        with self._cond:
            statuses = dict(self._status)
        response = _health_pb2.HealthListResponse()
        for service, status in statuses.items():
            response.statuses[service].status = status
        return response

    async def list_async(self, request: Any, context: Any) -> Any:
        return self.list(request, context)

    def watch(self, request: Any, context: Any) -> Iterator[Any]:
        limit = self._max_watches
        with self._cond:
            admitted = limit is None or self._watching < limit
            if admitted:
                self._watching += 1
        if not admitted:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{limit} health Watch streams are open, the server's max_watches: "
                f"poll Check instead, or raise max_watches",
            )
        token = current_token()
        sent: int | None = None
        detach = on_cancel_inline(token, self._wake)
        context.add_callback(self._wake)  # the client left
        try:
            while True:
                status, version = self._snapshot(request.service)
                if status != sent:
                    sent = status
                    yield _health_pb2.HealthCheckResponse(status=status)
                with self._cond:
                    while self._version == version and not token.cancelled and context.is_active():
                        self._cond.wait(_WATCH_RECHECK)
                if token.cancelled or not context.is_active():
                    return
        finally:
            detach()
            with self._cond:
                self._watching -= 1

    async def watch_async(self, request: Any, context: Any) -> AsyncIterator[Any]:
        token = current_token()
        loop = asyncio.get_running_loop()
        sent: int | None = None
        while True:
            status, version = self._snapshot(request.service)
            if status != sent:
                sent = status
                yield _health_pb2.HealthCheckResponse(status=status)
            waiter: asyncio.Future[None] = loop.create_future()
            entry = (loop, waiter)
            with self._cond:
                unchanged = self._version == version
                if unchanged:
                    self._waiters.append(entry)
            detach = on_cancel_inline(token, functools.partial(_resolve_soon, loop, waiter))
            try:
                if unchanged and not token.cancelled:
                    await waiter
            finally:
                detach()
                with self._cond, contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            if token.cancelled:
                return

    def handler(self, *, aio: bool) -> Any:
        """The generic handler of the health service (async behaviours for ``aio``)."""
        request = _health_pb2.HealthCheckRequest.FromString
        response = _health_pb2.HealthCheckResponse.SerializeToString
        return grpc.method_handlers_generic_handler(
            HEALTH_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.check_async if aio else self.check, request, response
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.watch_async if aio else self.watch, request, response
                ),
                "List": grpc.unary_unary_rpc_method_handler(
                    self.list_async if aio else self.list,
                    _health_pb2.HealthListRequest.FromString,
                    _health_pb2.HealthListResponse.SerializeToString,
                ),
            },
        )


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _resolve_soon(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
        loop.call_soon_threadsafe(_resolve, waiter)


# -- the thread pool of the sync server -----------------------------------------------------


class _DaemonPool(futures.Executor):
    """A thread pool whose threads are daemons, so that a stuck handler cannot hold the exit.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter
    exit: a handler that ignores its token would keep the process alive after
    the stop cut it. Threads are made on demand, up to ``max_workers``.

    Invariant (under ``_lock``): every queued item is claimed by one thread --
    an idle one (``_idle``), a new one, or, at the cap, the next one to finish
    (``_unclaimed``) -- so that an item never waits while a thread idles.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for an item that no submit claimed yet
        self._unclaimed = 0  # items queued at the cap, for the next thread to finish
        self._shutdown = False
        # Queued items no thread took yet: id(future) -> (when queued, the job's args).
        self._pending: dict[int, tuple[float, tuple[Any, ...]]] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future: futures.Future[Any] = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self._name}: cannot take work after shutdown")
            if self._idle:
                self._idle -= 1
            elif self._threads < self._max:
                self._threads += 1
                threading.Thread(
                    target=self._work, name=f"{self._name} {self._threads}", daemon=True
                ).start()
            else:
                self._unclaimed += 1
            self._pending[id(future)] = (time.monotonic(), args)
            self._queue.put((future, fn, args, kwargs))
        return future

    def queued(self) -> list[tuple[float, str]]:
        """``[(queued_at, method), ...]``: the calls waiting for a thread (no handler ran yet).

        grpcio submits ``context.run(serve, rpc_event, ...)``: the method is
        read from the event's call details ("" where it cannot be read).
        """
        found = []
        for queued_at, args in list(self._pending.values()):
            event = args[1] if len(args) > 1 else None
            method = getattr(getattr(event, "call_details", None), "method", b"")
            if isinstance(method, bytes):
                method = method.decode("utf-8", "replace")
            found.append((queued_at, str(method) if method else "(an RPC)"))
        return found

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            self._pending.pop(id(future), None)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:  # noqa: BLE001 - the future carries it
                    future.set_exception(error)
            del job, future, fn, args, kwargs
            with self._lock:
                if self._unclaimed:
                    self._unclaimed -= 1
                else:
                    self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the threads end once the queued work is done (never waits: they are daemons)."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)


_Job = tuple[futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


# -- what both servers share -----------------------------------------------------------------


def _check_interceptors(interceptors: Sequence[Any], *, aio: bool) -> list[Any]:
    wanted = grpc.aio.ServerInterceptor if aio else grpc.ServerInterceptor
    name = "grpc.aio.ServerInterceptor" if aio else "grpc.ServerInterceptor"
    server = "AioServer" if aio else "Server"
    found = list(interceptors)
    for interceptor in found:
        if not isinstance(interceptor, wanted):
            raise TypeError(
                f"{server} interceptors must be {name} objects (a class with "
                f"intercept_service), got {interceptor!r}"
            )
    return found


def _check_settings(
    long_lived: object, maximum_concurrent_rpcs: object, compression: object
) -> None:
    if long_lived is not None and not callable(long_lived):
        raise TypeError(
            f"long_lived takes a function of the method name, as in "
            f"long_lived=lambda method: method.endswith('/Watch'), got {long_lived!r}"
        )
    if maximum_concurrent_rpcs is not None and (
        isinstance(maximum_concurrent_rpcs, bool)
        or not isinstance(maximum_concurrent_rpcs, int)
        or maximum_concurrent_rpcs < 1
    ):
        raise ValueError(
            f"maximum_concurrent_rpcs must be an int >= 1 (or None: no cap), "
            f"got {maximum_concurrent_rpcs!r}"
        )
    if compression is not None and not isinstance(compression, grpc.Compression):
        raise TypeError(
            f"compression must be a grpc.Compression (grpc.Compression.Gzip, say) or None, "
            f"got {compression!r}"
        )


def _check_options(options: Any) -> list[tuple[str, Any]]:
    if isinstance(options, (dict, str, bytes)):
        raise TypeError(
            f"options takes (name, value) pairs, as in "
            f"options=[('grpc.max_receive_message_length', 8 << 20)], got {options!r}"
            + ("; for a dict pass list(options.items())" if isinstance(options, dict) else "")
        )
    found = list(options)
    for option in found:
        if not (isinstance(option, tuple) and len(option) == 2 and isinstance(option[0], str)):
            raise TypeError(
                f"options takes (name, value) pairs with a str name, as in "
                f"options=[('grpc.max_receive_message_length', 8 << 20)], got {option!r}"
            )
    return found


class _GrpcServer:
    """The tracking, tokens, health and options that `Server` and `AioServer` share.

    Invariants: every RPC that a handler serves has a ticket in `tracker`
    from before its behaviour is called until it returned (a stream: until
    its iterator ended or was closed); every RPC token descends from
    ``_tokens.root``, cancelled only at the cut; ``draining`` is a plain
    attribute, turned on as the app's shutdown token fires.
    """

    _aio: ClassVar[bool] = False

    def __init__(
        self,
        handlers: Iterable[Any] = (),
        *,
        port: int = 50051,
        host: str = "[::]",
        servicers: Iterable[tuple[Callable[[Any, Any], object], object]] = (),
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        health: bool | None = None,
        name: str | None = None,
        long_lived: Callable[[str], bool] | None = None,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
        max_watches: int | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535 (0: any free port), got {port!r}")
        if not isinstance(host, str) or not host:
            raise ValueError(
                f"host must be a non-empty str such as '[::]' or '127.0.0.1', got {host!r}"
            )
        if health and _health_pb2 is None:
            raise ImportError(
                "health=True needs grpcio-health-checking; install it with: "
                "pip install 'lifecycle[grpc]' (or pass health=False)"
            )
        self.handlers = list(handlers)
        for handler in self.handlers:
            if not callable(getattr(handler, "service", None)):
                raise TypeError(
                    f"handlers must be grpc.GenericRpcHandler objects (made with "
                    f"grpc.method_handlers_generic_handler, say), got {handler!r}; "
                    f"for a servicer of generated code pass "
                    f"servicers=[(add_XServicer_to_server, XServicer())]"
                )
        self.servicers = list(servicers)
        for pair in self.servicers:
            if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[0])):
                raise TypeError(
                    f"servicers takes (add_function, servicer) pairs, as in "
                    f"servicers=[(greeter_pb2_grpc.add_GreeterServicer_to_server, Greeter())]; "
                    f"got {pair!r}"
                )
        self.host = host
        self.interceptors = _check_interceptors(interceptors, aio=self._aio)
        options = _check_options(options)
        _check_settings(long_lived, maximum_concurrent_rpcs, compression)
        if not any(key == "grpc.so_reuseport" for key, _ in options):
            options.insert(0, ("grpc.so_reuseport", 0))
        self.options = options
        """grpcio's channel arguments. ``grpc.so_reuseport`` is off unless you turn it
        on: with it, a second server on a port in use starts silently and the two
        share the traffic, where a clear error is wanted."""
        self.health_enabled = _health_pb2 is not None if health is None else health
        self.long_lived = long_lived
        self.maximum_concurrent_rpcs = maximum_concurrent_rpcs
        self.compression = compression
        self._requested_port = port
        self._port: int | None = None
        self._name = name
        self.tracker = InFlight(f"{self.name} RPCs")
        """The `InFlight` of the RPCs in progress, labelled with their method."""
        self._health = _Health(max_watches) if self.health_enabled else None
        self._services: list[str] = []
        self._tokens = RequestTokens()
        self._lock = threading.Lock()
        self._streams: set[CancelSource] = set()  # the long-lived RPCs' own sources
        self._ending = False
        self.draining = False
        """True once the app's shutdown was requested (or the stop began): a plain attribute."""
        self._app: ShutdownView | None = None
        self._detach: list[Callable[[], bool]] = []
        self._stop_deadline: float | None = None  # the deadline of RPCs begun during the stop
        self._stop_token_deadline: float | None = None  # the stop token's own
        self._started = False
        self._stopping = False
        self._stopped = False
        # method -> (handler, its behaviour, wrapped handler)
        self._wrapped: dict[str, tuple[Any, Any, Any]] = {}
        # Slots of RPCs that ended, for the next ones. A deque: atomic pop and append,
        # no reallocation as it empties and refills RPC after RPC (a list's).
        self._free: deque[_Call] = deque()

    def __repr__(self) -> str:
        if self._stopped:
            state = "stopped"
        elif self._stopping:
            state = "stopping"
        elif self.draining:
            state = "draining"
        elif self._started:
            state = "serving"
        else:
            state = "new"
        return f"<{type(self).__name__} {self.name!r} {state} in_flight={self.tracker.count}>"

    # -- identity -------------------------------------------------------------------

    @property
    def _lc_name(self) -> str | None:
        """The ``name`` argument, or None: `App.add` registers the server under it."""
        return self._name

    @property
    def name(self) -> str:
        """For logs: the ``name`` given, else ``"grpc:PORT"`` (the real port once bound)."""
        if self._name is not None:
            return self._name
        return f"grpc:{self._port if self._port is not None else self._requested_port}"

    @property
    def port(self) -> int:
        """The bound port (the one chosen, for port 0); the requested one before start."""
        return self._port if self._port is not None else self._requested_port

    @property
    def address(self) -> str:
        """``"127.0.0.1:50051"``: what a client's ``grpc.insecure_channel`` takes."""
        host = "127.0.0.1" if self.host in ("[::]", "0.0.0.0") else self.host  # noqa: S104
        return f"{host}:{self.port}"

    @property
    def services(self) -> list[str]:
        """The services registered (known once started), which health reports on."""
        return list(self._services)

    def ready(self) -> bool:
        """True while serving, until the stop begins."""
        return self._started and not self._stopping

    def lifecycle_bind(self, app: ShutdownView) -> None:
        """Called by ``App.add``: drain when ``app``'s shutdown is requested."""
        self._app = app

    def set_serving(self, service: str, serving: bool = True) -> None:
        """Set one service's health status (SERVING or NOT_SERVING); ignored once draining.

        Example::

            server.set_serving("shop.Orders", False)   # its database went away
        """
        if self._health is not None:
            self._health.set(service, _SERVING if serving else _NOT_SERVING)

    # -- building the grpcio server -------------------------------------------------

    def _register(self, server: Any) -> None:
        """Add the health service, the handlers and the servicers to ``server``."""
        services: list[str] = []
        if self._health is not None:
            server.add_generic_rpc_handlers((self._health.handler(aio=self._aio),))
        if self.handlers:
            server.add_generic_rpc_handlers(tuple(self.handlers))
            for handler in self.handlers:
                service_name = getattr(handler, "service_name", None)
                if callable(service_name):
                    services.append(str(service_name()))
        recorder = _Recorder(server)
        for add, servicer in self.servicers:
            add(servicer, recorder)
        services.extend(recorder.services)
        self._services = list(dict.fromkeys(services))
        if self._health is not None:
            for service in self._services:
                self._health.set(service, _SERVING)

    def _bind(self, server: Any) -> None:
        address = f"{self.host}:{self._requested_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            host = self.host[1:-1] if self.host.startswith("[") else self.host
            try:
                socket.getaddrinfo(host, self._requested_port)
            except OSError as error:
                raise OSError(
                    f"{type(self).__name__} cannot listen on {address}: host {self.host!r} "
                    f"does not resolve ({error}); pass an address of this machine, "
                    f"such as host='127.0.0.1' or host='[::]' (every interface)"
                ) from None
            raise OSError(
                f"{type(self).__name__} cannot listen on {address}: the port is in use (or "
                f"the address is not available here); stop what listens there, or choose "
                f"another port (port=0 picks a free one)"
            )
        self._port = int(port)
        self.tracker.name = f"{self.name} RPCs"

    def _serving(self) -> None:
        """The server accepts: drain when the app's shutdown is requested."""
        self._started = True
        app = self._app
        if app is not None:
            self._detach.append(on_cancel_inline(app.shutdown_token, self._begin_drain))
            # Not inline: the health change takes locks and wakes watchers.
            self._detach.append(app.shutdown_token.on_cancel(self._shut_health))
        _log.info("server listening", component=self.name, port=self.port)

    def _begin_drain(self) -> None:
        # Runs as the shutdown token fires: a flag, no locks.
        self.draining = True

    def _shut_health(self) -> None:
        if self._health is not None:
            self._health.shut_down()

    # -- the stop's steps shared by both flavours ---------------------------------------

    def _drain(self, deadline: float | None) -> None:
        """The stop began; ``deadline`` is `Drain.requests_by`, when its RPCs must be done."""
        self._stop_deadline = deadline
        self.draining = True
        # RPCs begun from now on share a token with this deadline; the token of
        # the drain delay, which carries the shutdown's, is cancelled by then.
        self._tokens.renew(self._cut_deadline())
        self._shut_health()

    def _grace(self, timeout: float | None) -> float:
        """The grace given to grpcio's stop: past our cut (``timeout`` away), before the deadline.

        So that grpcio's own cancelling never comes first: the cut names what it
        ends. Measured from the stop token's deadline (what `Drain` hands the
        server is the deadline of the RPCs that begin, which may come earlier).
        """
        deadline = self._stop_token_deadline
        if timeout is None or deadline is None:
            return _NO_DEADLINE_GRACE
        left = max(0.0, deadline - time.monotonic())
        return max(0.0, timeout + (left - timeout) / 2)

    def _end_long_lived(self) -> None:
        self._ending = True
        with self._lock:
            sources = list(self._streams)
        for source in sources:
            cancel_in_background(source, _END_REASON)

    def _cut_rpcs(self) -> list[str]:
        cut = self.tracker.describe(limit=None) + self._queued_calls()
        self.tracker.close()
        self._tokens.cut(_CUT_REASON)
        return cut

    def _queued_calls(self) -> list[str]:
        """The calls accepted by grpcio that wait for a thread (the threaded server's)."""
        return []

    def _finish_stop(self, began: float, cut: bool) -> None:
        self._tokens.close()
        for detach in self._detach:
            detach()
        self._detach.clear()
        self._stopped = True
        _log.debug(
            "server stopped",
            component=self.name,
            rpcs=self.tracker.total,
            cut=cut,
            duration=round(time.monotonic() - began, 6),
        )

    def _begin_stop(self, token: CancelToken) -> float:
        """The stop begins: note its deadline, log; return when it began."""
        self._stop_token_deadline = token.deadline
        _log.debug("server stopping", component=self.name, in_flight=self.tracker.count)
        return time.monotonic()

    def _work(self) -> Work:
        ordinary, long_lived = self.tracker.counts()
        return Work(ordinary, long_lived, 0)

    # -- tokens ---------------------------------------------------------------------

    def _request_token(self) -> CancelToken:
        """The token of an RPC that begins now: shared, never made per unary RPC.

        Before the drain, the root's (cancelled only at the cut). While
        draining, `RequestTokens.draining`: a shared child of it with the
        deadline `cut_deadline` gives (a margin before the cut); one handed out
        in the drain delay, when only the shutdown deadline is known, is
        cancelled once the stop's own request deadline passes (`_drain`).
        """
        if not self.draining:
            return self._tokens.root
        return self._tokens.draining(self._cut_deadline)

    def _cut_deadline(self) -> float | None:
        shutdown = self._app.shutdown_deadline if self._app is not None else None
        return cut_deadline(shutdown, self._stop_deadline)

    # -- wrapping each RPC -----------------------------------------------------------

    def _wrap(self, handler: Any, method: str) -> Any:
        """``handler`` with each call tracked and run under its token (made once per method).

        Cached per method, by the handler object, or by its behaviour and
        serializers: an interceptor that returns a new handler per call for the
        same function (``handler._replace(...)``) still finds the wrapper made.
        """
        entry = self._wrapped.get(method)
        if entry is not None and entry[0] is handler:
            return entry[2]
        kind, behaviour = _kind(handler)
        if (
            entry is not None
            and entry[1] is behaviour
            and entry[0].request_deserializer is handler.request_deserializer
            and entry[0].response_serializer is handler.response_serializer
        ):
            return entry[2]
        if self.long_lived is not None:
            long_lived = bool(self.long_lived(method))
        else:
            long_lived = kind in _LONG_LIVED_KINDS
        # A request stream of a long-lived RPC ends when its token is cancelled,
        # so that a handler blocked in ``for m in request_iterator`` returns.
        ends = long_lived and kind in ("stream_unary", "stream_stream")
        if kind in ("unary_stream", "stream_stream"):
            if inspect.isasyncgenfunction(behaviour):
                maker = self._async_stream
            elif inspect.iscoroutinefunction(behaviour):
                maker = self._async_value  # an aio handler that writes with context.write()
            else:
                maker = self._stream
        else:
            maker = self._async_value if inspect.iscoroutinefunction(behaviour) else self._value
        wrapped = _MAKERS[kind](
            maker(behaviour, method, long_lived, ends),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, behaviour, wrapped)
        return wrapped

    def _enter(self, method: str, long_lived: bool) -> _Call | None:
        """Begin an RPC in this context: its slot, token and scope; None once the stop cut."""
        tracker = self.tracker
        try:
            call = self._free.pop()  # atomic: no lock on the hot path
        except IndexError:
            opened = tracker.open_slot(slot=_Call(self))
            if opened is None:
                return None
            call = cast(_Call, opened)
        if not tracker.begin(call, method):
            self._free.append(call)
            return None
        note_request(call.uses)  # what a copy of this context may mark
        token = self._request_token()
        _set_current(call.own_token(token) if long_lived else token)
        enter_scope(call)
        return call

    def _value(
        self, behaviour: Callable[..., Any], method: str, long_lived: bool, ends: bool
    ) -> Any:
        # The threaded server runs each RPC in a context of its own, the one its
        # interceptors ran in; grpcio's aio server runs a plain ``def`` in an
        # executor thread, in that thread's context: there the RPC gets a fresh
        # one, so that nothing of it stays on the thread afterwards.
        def serve(request: Any, context: Any) -> Any:
            rpc = self._enter(method, long_lived)
            if rpc is None:
                context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED)
            assert rpc is not None
            try:
                return behaviour(requests(request) if ends else request, context)
            finally:
                rpc.release()

        if not self._aio:
            return serve

        def in_context(request: Any, context: Any) -> Any:
            return contextvars.Context().run(serve, request, context)

        return in_context

    def _stream(
        self, behaviour: Callable[..., Any], method: str, long_lived: bool, ends: bool
    ) -> Any:
        def serve(request: Any, context: Any) -> Iterator[Any]:
            rpc = self._enter(method, long_lived)
            if rpc is None:
                context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED)
            assert rpc is not None
            responses = None
            try:
                responses = behaviour(requests(request) if ends else request, context)
                if responses is not None:
                    yield from responses
            finally:
                close = getattr(responses, "close", None)
                if close is not None:
                    close()  # the client left mid-stream: the handler's finally runs now
                rpc.release()

        if not self._aio:
            return serve

        def in_context(request: Any, context: Any) -> Iterator[Any]:
            return _InContext(contextvars.Context(), serve(request, context))

        return in_context

    def _async_value(
        self, behaviour: Callable[..., Any], method: str, long_lived: bool, ends: bool
    ) -> Any:
        async def call(request: Any, context: Any) -> Any:
            rpc = self._enter(method, long_lived)  # each aio RPC runs in a task of its own
            if rpc is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED)
            assert rpc is not None
            try:
                return await behaviour(requests(request) if ends else request, context)
            finally:
                rpc.release()

        return call

    def _async_stream(
        self, behaviour: Callable[..., Any], method: str, long_lived: bool, ends: bool
    ) -> Any:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            rpc = self._enter(method, long_lived)
            if rpc is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED)
            assert rpc is not None
            try:
                responses = behaviour(requests(request) if ends else request, context)
            except BaseException:
                rpc.release()
                raise
            try:
                async for response in responses:
                    yield response
            finally:
                try:
                    await responses.aclose()
                finally:
                    rpc.release()

        return call


_LONG_LIVED_KINDS: Final = frozenset({"unary_stream", "stream_stream"})
"""The RPC shapes that are long-lived by default: those whose responses are a stream."""


class _InContext:
    """A generator whose every step runs in one `contextvars.Context` (whatever thread steps it)."""

    __slots__ = ("_context", "_generator")

    def __init__(self, context: contextvars.Context, generator: Iterator[Any]) -> None:
        self._context = context
        self._generator = generator

    def __iter__(self) -> _InContext:
        return self

    def __next__(self) -> Any:
        return self._context.run(next, self._generator)

    def close(self) -> None:
        close = getattr(self._generator, "close", None)
        if close is not None:
            self._context.run(close)


# -- ending a request stream when the token is cancelled ----------------------------------------


@overload
def requests(
    request_iterator: AsyncIterable[_T], token: CancelToken | None = None
) -> AsyncIterator[_T]: ...


@overload
def requests(request_iterator: Iterable[_T], token: CancelToken | None = None) -> Iterator[_T]: ...


def requests(request_iterator: Any, token: CancelToken | None = None) -> Any:
    """The requests of a client-streaming or bidi RPC, ending when ``token`` is cancelled.

    ``for m in request_iterator`` blocks until the client sends or closes: a
    handler waiting there never sees its token. Iterate
    ``lifecycle.grpc.requests(request_iterator)`` instead and the loop also
    ends, without an error, once the token (by default the RPC's,
    `lifecycle.current_token()` when this is called) is cancelled; the handler
    then returns and chooses the status (OK by default). Sync iterators give a
    sync iterator (one thread reads the requests meanwhile; it ends with the
    RPC), async ones an async iterator.

    The servers do this themselves for long-lived RPCs that take a request
    stream (bidi by default): call it for a client-streaming RPC that should
    answer with what it has when its token fires (for an RPC begun during
    the drain, a margin before the stop would cut it).

    Example::

        def upload(request_iterator, context):
            total = 0
            for chunk in lifecycle.grpc.requests(request_iterator):
                total += len(chunk.data)
            return UploadReply(received=total)   # what came before the token fired

    Added in 0.2.
    """
    if token is None:
        token = current_token()
    if (
        isinstance(request_iterator, (_Requests, _AsyncRequests))
        and request_iterator.token is token
    ):
        return request_iterator
    if hasattr(request_iterator, "__aiter__"):
        return _AsyncRequests(request_iterator, token)
    return _Requests(iter(request_iterator), token)


class _Requests:
    """A sync request iterator that also ends when its token is cancelled.

    A daemon thread reads ahead by one message (grpcio's iterator blocks in
    ``next`` until the client sends); the consumer waits for the message or
    the token, whichever comes first. Invariant (under ``_cond``): at most one
    message is held; the reader waits while it is.
    """

    __slots__ = ("_cond", "_detach", "_done", "_error", "_held", "_iterator", "_started", "token")

    _EMPTY: ClassVar[object] = object()

    def __init__(self, iterator: Iterator[Any], token: CancelToken) -> None:
        self._iterator = iterator
        self.token = token
        self._cond = threading.Condition()
        self._held: Any = self._EMPTY
        self._done = False  # the reader is finished: the stream ended, or it failed
        self._error: BaseException | None = None
        self._started = False
        self._detach: Callable[[], bool] | None = None

    def __iter__(self) -> _Requests:
        return self

    def __next__(self) -> Any:
        if not self._started:
            self._started = True
            self._detach = on_cancel_inline(self.token, self._wake)
            threading.Thread(target=self._read, name="lifecycle:grpc requests", daemon=True).start()
        with self._cond:
            while self._held is self._EMPTY and not self._done and not self.token.cancelled:
                self._cond.wait()
            held = self._held
            if held is not self._EMPTY:
                self._held = self._EMPTY
                self._cond.notify_all()
                return held
            self._stop()
            if self._error is not None and not self.token.cancelled:
                raise self._error
            raise StopIteration

    def _stop(self) -> None:
        detach, self._detach = self._detach, None
        if detach is not None:
            detach()
        self._done = True
        self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _read(self) -> None:
        try:
            for item in self._iterator:
                with self._cond:
                    while self._held is not self._EMPTY and not self._done:
                        self._cond.wait()
                    if self._done:
                        return  # the consumer stopped: the RPC is ending
                    self._held = item
                    self._cond.notify_all()
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            self._error = error
        with self._cond:
            self._done = True
            self._cond.notify_all()


class _AsyncRequests:
    """An async request iterator that also ends when its token is cancelled."""

    __slots__ = ("_iterator", "token")

    def __init__(self, iterable: AsyncIterable[Any], token: CancelToken) -> None:
        self._iterator = iterable.__aiter__()
        self.token = token

    def __aiter__(self) -> _AsyncRequests:
        return self

    async def __anext__(self) -> Any:
        token = self.token
        if token.cancelled:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        read = asyncio.ensure_future(self._iterator.__anext__())
        cancelled: asyncio.Future[None] = loop.create_future()
        detach = on_cancel_inline(token, functools.partial(_resolve_soon, loop, cancelled))
        try:
            await asyncio.wait((read, cancelled), return_when=asyncio.FIRST_COMPLETED)
        finally:
            detach()
            if not cancelled.done():
                cancelled.cancel()
        if read.done():
            return read.result()  # StopAsyncIteration at the stream's end, as it should
        read.cancel()
        with contextlib.suppress(BaseException):
            await read
        raise StopAsyncIteration


class _Recorder:
    """The grpcio server as a generated ``add_XServicer_to_server`` sees it, noting the services."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        for handler in handlers:
            service_name = getattr(handler, "service_name", None)
            if callable(service_name):
                self.services.append(str(service_name()))
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.services.append(service)
        self._server.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _Interceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Puts every RPC of the sync server under its token and in the tracker."""

    def __init__(self, server: _GrpcServer) -> None:
        self._server = server

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        # grpcio runs the interceptors and then the handler in one context per
        # RPC: the interceptors after this one see the RPC's token too.
        _set_current(self._server._request_token())
        handler = continuation(details)
        if handler is None:
            return None
        return self._server._wrap(handler, details.method)


class _AioInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The same for the aio server."""

    def __init__(self, server: _GrpcServer) -> None:
        self._server = server

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        _set_current(self._server._request_token())  # as in _Interceptor
        handler = await continuation(details)
        if handler is None:
            return None
        return self._server._wrap(handler, details.method)


# -- the sync server ----------------------------------------------------------------------


class Server(_GrpcServer):
    """A threaded ``grpc.server`` as a component: every RPC under its token, a zero-loss stop.

    Args:
        handlers: ``grpc.GenericRpcHandler`` objects, as
            ``grpc.method_handlers_generic_handler(service, methods)`` makes.
        port: the port to listen on; 0 picks a free one (see `port`).
        host: the address to listen on (``"[::]"``: every interface, as in
            grpcio's examples; ``"127.0.0.1"`` for this machine only).
        servicers: ``(add_function, servicer)`` pairs for code generated by
            protoc: ``[(greeter_pb2_grpc.add_GreeterServicer_to_server, Greeter())]``.
        interceptors: your ``grpc.ServerInterceptor`` objects (``AioServer``:
            ``grpc.aio.ServerInterceptor``); lifecycle's own comes first, so that
            yours run under the RPC's token too: in ``intercept_service`` the
            token shared by the RPCs that begin now (a long-lived RPC gets a
            child of it as its handler begins).
        options: grpcio channel arguments (``("grpc.max_receive_message_length", ...)``).
            ``grpc.so_reuseport`` is off by default: a port in use is an error
            rather than a second server silently sharing it.
        health: serve ``grpc.health.v1.Health`` (None: when grpcio-health-checking
            is installed; True: require it; False: not).
        name: for logs (``"grpc:PORT"`` by default).
        long_lived: ``method -> bool``: which RPCs the stop asks to end
            instead of waiting for them. By default the RPCs whose responses
            are a stream (server streaming, bidi) are long-lived; unary and
            client-streaming RPCs (an upload) are waited for. A unary handler
            may call `lifecycle.mark_long_lived` (a long poll). The request
            stream of a long-lived RPC ends when its token is cancelled
            (`requests`), so that a bidi handler in ``for m in request_iterator``
            returns even while the client sends nothing.
        max_workers: threads serving RPCs (a stream holds one while it runs).
        max_watches: health ``Watch`` streams served at once, each on a thread
            of its own on top of ``max_workers`` (a client with health checking
            keeps one open per connection); one more is refused with
            RESOURCE_EXHAUSTED. So Watch streams never take the threads of
            RPCs and of ``Check``: measured, with 16 Watch streams open and no
            such bound, every ``Check`` and RPC waited for a thread until its
            deadline.
        maximum_concurrent_rpcs: grpcio's cap (Watch streams count);
            RPCs past it get RESOURCE_EXHAUSTED.
        compression: grpcio's default compression for responses
            (a ``grpc.Compression``).

    Inside a handler `lifecycle.current_token()` is the RPC's token: for a
    unary RPC it is cancelled only when the stop cuts it; one begun once
    shutdown was requested carries a deadline a margin before that cut (pass
    ``token.remaining()`` on as a timeout). During the drain only the
    shutdown deadline is known, the latest the stop can end: the token
    carries that one, and is cancelled, once the stop began, a margin before
    the stop's own cut if that comes first (reason
    `lifecycle.DEADLINE_EXCEEDED`). For a long-lived RPC it is cancelled
    when the stop asks streams to end, and the handler then returns, which
    ends the stream with status OK (or sets its own status first with
    ``context.set_code``).

    What happens on SIGTERM, step by step:

    1. **Drain** (the app's ``drain_delay``): health turns NOT_SERVING for
       every service at once (``Check`` answers it, open ``Watch`` streams
       receive it) while RPCs are still served, so that load balancers and
       clients move to other replicas. ``draining`` is True.
    2. **Stop accepting**: grpcio's ``stop(grace)`` refuses new RPCs
       (UNAVAILABLE) and tells clients to go away (HTTP/2 GOAWAY); ``grace``
       is the stop token's remaining time less half of the cut margin, so
       that grpcio's own cancelling never comes before the cut below.
    3. **Unary RPCs finish**: the stop waits for every RPC that is not
       long-lived.
    4. **Streams are told to end**: the tokens of the long-lived RPCs are
       cancelled (health ``Watch`` streams among them: they end with OK), and
       the stop waits for them to return.
    5. **Done**: once grpcio's stop has completed, `stop` returns normally.
       Measured with four 200 ms unary calls in flight and a stream open:
       the stop takes 0.20 s and the stream ends OK, where grpcio's own
       ``stop(5)`` takes 5.0 s and ends the stream with UNAVAILABLE.
    6. **Cut**, `CUT_MARGIN` before the stop deadline, if RPCs still run: their
       tokens are cancelled, grpcio cancels the calls, the handlers are given
       half of what is left to return, and the stop raises
       `lifecycle.DeadlineExceeded` whose ``.cut`` names every RPC cut by
       method (the app exits with TIMEOUT), calls still queued for a thread
       among them (``"/shop.Orders/Get (0.4s, queued: no thread reached
       it)"``). Threads are daemons: a handler that never returns cannot hold
       the process's exit.

    Example::

        def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
            return b"hello " + request

        greeter = grpc.method_handlers_generic_handler(
            "demo.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
        )
        app = lifecycle.App(drain_delay=2.0)
        app.add(lifecycle.grpc.Server(handlers=[greeter], port=50051))
        sys.exit(lifecycle.run(app))

    Added in 0.2.
    """

    def __init__(
        self,
        handlers: Iterable[Any] = (),
        *,
        port: int = 50051,
        host: str = "[::]",
        servicers: Iterable[tuple[Callable[[Any, Any], object], object]] = (),
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        health: bool | None = None,
        name: str | None = None,
        long_lived: Callable[[str], bool] | None = None,
        max_workers: int = 16,
        max_watches: int = 16,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if isinstance(max_watches, bool) or not isinstance(max_watches, int) or max_watches < 0:
            raise ValueError(
                f"max_watches must be an int >= 0 (0: refuse every health Watch), "
                f"got {max_watches!r}"
            )
        super().__init__(
            handlers,
            port=port,
            host=host,
            servicers=servicers,
            interceptors=interceptors,
            options=options,
            health=health,
            name=name,
            long_lived=long_lived,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            compression=compression,
            max_watches=max_watches,
        )
        self.max_workers = max_workers
        self.max_watches = max_watches
        self.server: Any = None
        """The ``grpc.Server`` once started (for what this class does not wrap)."""
        self._pool: _DaemonPool | None = None
        self._shutdown: list[threading.Event] = []

    def start(self, token: CancelToken | None = None) -> None:
        """Build the grpcio server, bind, start; return once it accepts RPCs.

        Raises:
            OSError: the port is in use (the message names it and the fix).
            RuntimeError: it was already started (a server starts once).
        """
        if self.server is not None:
            raise RuntimeError(f"{self.name!r} was already started; a server starts once")
        # Watch streams hold a thread each, up to max_watches of them: threads of
        # their own, so that they never take those of RPCs (and of Check).
        watches = self.max_watches if self._health is not None else 0
        self._pool = _DaemonPool(self.max_workers + watches, f"lifecycle:{self.name}")
        server = grpc.server(
            self._pool,
            interceptors=[_Interceptor(self), *self.interceptors],
            options=self.options,
            maximum_concurrent_rpcs=self.maximum_concurrent_rpcs,
            compression=self.compression,
        )
        try:
            self._register(server)
            self._bind(server)
        except BaseException:
            server.stop(None)
            self._pool.shutdown()
            raise
        self.server = server
        server.start()
        self._serving()

    def stop(self, token: CancelToken | None = None) -> None:
        """Stop without losing an RPC: the steps of the class docstring, by ``token``'s deadline.

        Returns at once when nothing is in flight. Calling it again, or before
        `start`, does nothing.

        Raises:
            DeadlineExceeded: RPCs were cut at the deadline; ``.cut`` names every one.
        """
        if token is None:
            token = current_token()
        with self._lock:
            if self.server is None or self._stopping:
                return
            self._stopping = True
        began = self._begin_stop(token)
        cut = False
        try:
            drive_sync(_SyncOps(self), token, name=self.name)
        except DeadlineExceeded:
            cut = True
            raise
        finally:
            if not self._shutdown:
                self._shutdown.append(self.server.stop(0))
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._finish_stop(began, cut)

    def _queued_calls(self) -> list[str]:
        pool = self._pool
        if pool is None:
            return []
        now = time.monotonic()
        return [
            f"{method} ({now - queued_at:.1f}s, queued: no thread reached it)"
            for queued_at, method in sorted(pool.queued())
        ]

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until grpcio's server has shut down (bounded); True if it has."""
        return bool(self._shutdown) and all(e.wait(timeout) for e in self._shutdown)


class _SyncOps:
    """The stop sequence's operations (`SyncStopOps`) on a `Server`."""

    __slots__ = ("server",)

    def __init__(self, server: Server) -> None:
        self.server = server

    def work(self) -> Work:
        return self.server._work()

    def drain(self, deadline: float | None) -> None:
        self.server._drain(deadline)

    def close_listener(self, timeout: float | None) -> None:
        server = self.server
        server._shutdown.append(server.server.stop(server._grace(timeout)))

    def close_idle(self, now: float) -> float | None:
        return None  # grpcio owns its connections; stop(grace) sent them GOAWAY

    def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        self.server.tracker.wait_idle(token, timeout=timeout, ignore_long_lived=what == "ordinary")

    def end_long_lived(self) -> None:
        self.server._end_long_lived()

    def cut(self) -> list[str]:
        server = self.server
        cut = server._cut_rpcs()
        if server.server is not None:
            server._shutdown.append(server.server.stop(0))  # cancel every call now
        return cut

    def join(self, timeout: float | None) -> bool:
        server = self.server
        end = None if timeout is None else time.monotonic() + timeout
        for event in server._shutdown:
            if not event.wait(None if end is None else max(0.0, end - time.monotonic())):
                return False
        left = None if end is None else max(0.0, end - time.monotonic())
        return server.tracker.wait_idle(timeout=left)


# -- the aio server ------------------------------------------------------------------------


class AioServer(_GrpcServer):
    """A ``grpc.aio.server`` as a component: every RPC under its token, a zero-loss stop.

    Takes the same arguments as `Server` (no ``max_workers``: RPCs are tasks
    on the event loop), and stops with the same steps, carried out on the
    loop. Handlers are ``async def`` functions (streams: async generators);
    inside them `lifecycle.current_token()` is the RPC's token, with the same
    meaning as in `Server`: a streaming handler should end when it is
    cancelled (``await token.wait_async(timeout)`` between messages, say).

    What happens on SIGTERM, step by step: as in `Server` -- health
    NOT_SERVING for every service at the drain; ``await stop(grace)`` refuses
    new RPCs (its grace ends half the cut margin after the cut); unary RPCs
    finish; the streams' tokens are cancelled and health ``Watch`` streams
    end; `CUT_MARGIN` before the deadline what still runs is cut, named and
    reported as `lifecycle.DeadlineExceeded`. grpcio's aio ``stop`` can
    return before the handlers it aborted have run their ``finally`` blocks;
    this stop also waits (bounded) until every handler has returned.

    A handler that blocks the event loop (``time.sleep`` in an ``async def``)
    stops everything on the loop, this stop and its cut included: it is
    neither cut within the stop's budget nor named by the stop. The app's
    ``shutdown_timeout`` watchdog ends the process (exit TIMEOUT) and logs
    the loop thread's stack, which shows the handler. Plain ``def``
    handlers run in the loop's executor, each RPC in a fresh context: the
    RPC's token is current there, and nothing of it stays on the thread.

    Example::

        async def hello(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return b"hello " + request

        greeter = grpc.method_handlers_generic_handler(
            "demo.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
        )
        app = lifecycle.App(drain_delay=2.0)
        app.add(lifecycle.grpc.AioServer(handlers=[greeter], port=50051))
        sys.exit(lifecycle.run(app))

    Added in 0.2.
    """

    _aio: ClassVar[bool] = True

    def __init__(
        self,
        handlers: Iterable[Any] = (),
        *,
        port: int = 50051,
        host: str = "[::]",
        servicers: Iterable[tuple[Callable[[Any, Any], object], object]] = (),
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        health: bool | None = None,
        name: str | None = None,
        long_lived: Callable[[str], bool] | None = None,
        maximum_concurrent_rpcs: int | None = None,
        compression: Any = None,
    ) -> None:
        super().__init__(
            handlers,
            port=port,
            host=host,
            servicers=servicers,
            interceptors=interceptors,
            options=options,
            health=health,
            name=name,
            long_lived=long_lived,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            compression=compression,
        )
        self.server: Any = None
        """The ``grpc.aio.Server`` once started."""
        self._stops: list[asyncio.Task[None]] = []

    async def start(self, token: CancelToken | None = None) -> None:
        """Build the grpcio aio server, bind, start; return once it accepts RPCs.

        Raises:
            OSError: the port is in use (the message names it and the fix).
            RuntimeError: it was already started (a server starts once).
        """
        if self.server is not None:
            raise RuntimeError(f"{self.name!r} was already started; a server starts once")
        server = grpc.aio.server(
            interceptors=[_AioInterceptor(self), *self.interceptors],
            options=self.options,
            maximum_concurrent_rpcs=self.maximum_concurrent_rpcs,
            compression=self.compression,
        )
        try:
            self._register(server)
            self._bind(server)
        except BaseException:
            await server.stop(None)
            raise
        self.server = server
        await server.start()
        self._serving()

    async def stop(self, token: CancelToken | None = None) -> None:
        """Stop without losing an RPC: the steps of `Server`, on the event loop.

        Raises:
            DeadlineExceeded: RPCs were cut at the deadline; ``.cut`` names every one.
        """
        if token is None:
            token = current_token()
        if self.server is None or self._stopping:
            return
        self._stopping = True
        began = self._begin_stop(token)
        cut = False
        try:
            await drive_async(_AsyncOps(self), token, name=self.name)
        except DeadlineExceeded:
            cut = True
            raise
        finally:
            if not self._stops:
                self._stop_task(0)
            self._finish_stop(began, cut)

    def _stop_task(self, grace: float) -> None:
        self._stops.append(asyncio.get_running_loop().create_task(self.server.stop(grace)))

    async def wait_stopped(self, timeout: float | None = None) -> bool:
        """Until grpcio's server has shut down (bounded); True if it has."""
        if not self._stops:
            return False
        _, pending = await asyncio.wait(self._stops, timeout=timeout)
        return not pending


class _AsyncOps:
    """The stop sequence's operations (`AsyncStopOps`) on an `AioServer`."""

    __slots__ = ("server",)

    def __init__(self, server: AioServer) -> None:
        self.server = server

    def work(self) -> Work:
        return self.server._work()

    def drain(self, deadline: float | None) -> None:
        self.server._drain(deadline)

    async def close_listener(self, timeout: float | None) -> None:
        server = self.server
        server._stop_task(server._grace(timeout))
        await asyncio.sleep(0)  # grpcio's stop begins: new RPCs are refused

    def close_idle(self, now: float) -> float | None:
        return None  # grpcio owns its connections; stop(grace) sent them GOAWAY

    async def wait(self, what: Waiting, timeout: float | None, token: CancelToken) -> None:
        await self.server.tracker.wait_idle_async(
            token, timeout=timeout, ignore_long_lived=what == "ordinary"
        )

    def end_long_lived(self) -> None:
        self.server._end_long_lived()

    def cut(self) -> list[str]:
        server = self.server
        cut = server._cut_rpcs()
        server._stop_task(0)  # abort every call now
        return cut

    async def join(self, timeout: float | None) -> bool:
        server = self.server
        end = None if timeout is None else time.monotonic() + timeout
        _, pending = await asyncio.wait(server._stops, timeout=timeout)
        if pending:
            return False
        # grpcio's aio stop can return before the handlers it aborted ran their
        # finally blocks: every handler leaves the tracker only once it returned.
        left = None if end is None else max(0.0, end - time.monotonic())
        return await server.tracker.wait_idle_async(timeout=left)
