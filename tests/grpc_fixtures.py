"""A tiny gRPC service for the lifecycle.grpc tests, without generated code.

The service ``test.Echo`` is built with ``grpc.method_handlers_generic_handler``
and bytes in, bytes out (no serializers), so no protoc step is needed. Every
method exists in a sync flavour (for `lifecycle.grpc.Server`) and an async one
(for `lifecycle.grpc.AioServer`):

* ``Unary``: echoes the request. A request ``b"hold"`` reports itself on
  ``entered`` and waits for ``release`` (bounded) first: a call held in flight.
* ``Stream``: server streaming; sends ``b"tick"`` now and then until its
  token is cancelled, then returns (status OK). A request ``b"status"`` ends
  with UNAVAILABLE "shutting down" instead, set with ``context.set_code``.
* ``Stuck``: ignores its token: waits for ``release`` (sync) or sleeps (aio),
  bounded, whatever happens.
* ``Hang`` (aio only): as ``Stuck``, without a ``finally`` that awaits.
* ``LongPoll``: unary, marks itself long-lived, returns ``b"ended"`` when its
  token is cancelled.
* ``Token``: returns whether its token has a deadline and is cancelled.
* ``Due``: works until its token's deadline or cancellation (bounded), then
  answers ``b"due"``: a handler that answers by the time its token gives it.
* ``Spawn``: keeps a copy of its context (``contexts``), as a handler that
  starts a thread does, and returns.
* ``Bidi``: echoes each request, iterating the request iterator plainly.
* ``Upload``: client streaming; puts ``"chunk"`` on ``entered`` as each message
  comes, and answers how many came.
* ``Plain`` (aio only): a plain ``def`` unary handler (grpcio runs it in a thread).

Every handler puts its method's name on ``entered`` as it begins, so that a
test waits for "the RPC is in flight" on a queue, not with a sleep.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from typing import Any

import grpc

import lifecycle

SERVICE = "test.Echo"
BOUND = 20.0
"""Seconds any handler waits at most (a hang detector; tests release them sooner)."""
TICK = 0.05
"""Seconds between two stream messages."""
CLEANUP = 0.02
"""Seconds the aio ``Stuck`` handler's ``finally`` awaits once cancelled."""
SLOW = 0.2
"""Seconds of work of a ``b"slow"`` unary call (a handler doing work, not a test waiting)."""


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class Echo:
    """The service's state: what began, and the gate held calls wait on."""

    def __init__(self) -> None:
        self.entered: queue.Queue[str] = queue.Queue()
        self.release = threading.Event()
        self.finished: queue.Queue[str] = queue.Queue()  # finally blocks that ran
        self.tokens: list[lifecycle.CancelToken] = []
        self.contexts: list[contextvars.Context] = []

    def wait_entered(self, name: str, count: int = 1) -> None:
        for _ in range(count):
            got = self.entered.get(timeout=BOUND)
            assert got == name, (got, name)

    # -- sync ---------------------------------------------------------------------

    def unary(self, request: bytes, context: Any) -> bytes:
        self.entered.put("Unary")
        self.tokens.append(lifecycle.current_token())
        if request == b"hold":
            assert self.release.wait(BOUND), "held call never released"
        elif request == b"slow":
            threading.Event().wait(SLOW)
        return request

    def stream(self, request: bytes, context: Any) -> Any:
        token = lifecycle.current_token()
        self.entered.put("Stream")
        try:
            yield b"tick"
            while not token.wait(TICK):
                yield b"tick"
            if request == b"status":
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details("shutting down")
        finally:
            self.finished.put("Stream")

    def stuck(self, request: bytes, context: Any) -> bytes:
        self.entered.put("Stuck")
        try:
            self.release.wait(BOUND)
            return b"late"
        finally:
            self.finished.put("Stuck")

    def long_poll(self, request: bytes, context: Any) -> bytes:
        assert lifecycle.mark_long_lived()
        token = lifecycle.current_token()
        self.entered.put("LongPoll")
        return b"ended" if token.wait(BOUND) else b"timeout"

    def token(self, request: bytes, context: Any) -> bytes:
        token = lifecycle.current_token()
        return f"{token.deadline is not None} {token.cancelled}".encode()

    def due(self, request: bytes, context: Any) -> bytes:
        token = lifecycle.current_token()
        self.entered.put("Due")
        remaining = token.remaining()
        token.wait(BOUND if remaining is None else min(remaining, BOUND))
        return b"due"

    def spawn(self, request: bytes, context: Any) -> bytes:
        self.contexts.append(contextvars.copy_context())
        return b"spawned"

    def bidi(self, requests: Any, context: Any) -> Any:
        self.entered.put("Bidi")
        try:
            yield from requests
        finally:
            self.finished.put("Bidi")

    def upload(self, requests: Any, context: Any) -> bytes:
        self.entered.put("Upload")
        count = 0
        for _ in requests:
            count += 1
            self.entered.put("chunk")
        return str(count).encode()

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Due": grpc.unary_unary_rpc_method_handler(self.due),
                "Spawn": grpc.unary_unary_rpc_method_handler(self.spawn),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
                "Stuck": grpc.unary_unary_rpc_method_handler(self.stuck),
                "LongPoll": grpc.unary_unary_rpc_method_handler(self.long_poll),
                "Token": grpc.unary_unary_rpc_method_handler(self.token),
            },
        )

    # -- async --------------------------------------------------------------------

    async def unary_async(self, request: bytes, context: Any) -> bytes:
        self.entered.put("Unary")
        self.tokens.append(lifecycle.current_token())
        if request == b"hold":
            assert await asyncio.to_thread(self.release.wait, BOUND), "never released"
        elif request == b"slow":
            await asyncio.sleep(SLOW)
        return request

    async def stream_async(self, request: bytes, context: Any) -> Any:
        token = lifecycle.current_token()
        self.entered.put("Stream")
        try:
            yield b"tick"
            while not await token.wait_async(TICK):
                yield b"tick"
            if request == b"status":
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details("shutting down")
        finally:
            self.finished.put("Stream")

    async def stuck_async(self, request: bytes, context: Any) -> bytes:
        self.entered.put("Stuck")
        try:
            # A slow dependency: ignores the token; only the cut's cancellation ends it.
            await asyncio.sleep(BOUND)
            return b"late"
        finally:
            # Cleanup that awaits once cancelled, briefly: the cut's join has
            # half of the 0.1 s margin left to wait for it.
            await asyncio.sleep(CLEANUP)
            self.finished.put("Stuck")

    async def hang_async(self, request: bytes, context: Any) -> bytes:
        """Like Stuck, with nothing to clean up: ends the moment it is cancelled."""
        self.entered.put("Hang")
        await asyncio.sleep(BOUND)
        return b"late"

    async def long_poll_async(self, request: bytes, context: Any) -> bytes:
        assert lifecycle.mark_long_lived()
        token = lifecycle.current_token()
        self.entered.put("LongPoll")
        return b"ended" if await token.wait_async(BOUND) else b"timeout"

    async def token_async(self, request: bytes, context: Any) -> bytes:
        return self.token(request, context)

    async def due_async(self, request: bytes, context: Any) -> bytes:
        token = lifecycle.current_token()
        self.entered.put("Due")
        remaining = token.remaining()
        await token.wait_async(BOUND if remaining is None else min(remaining, BOUND))
        return b"due"

    async def spawn_async(self, request: bytes, context: Any) -> bytes:
        return self.spawn(request, context)

    async def bidi_async(self, requests: Any, context: Any) -> Any:
        self.entered.put("Bidi")
        try:
            async for message in requests:
                yield message
        finally:
            self.finished.put("Bidi")

    async def upload_async(self, requests: Any, context: Any) -> bytes:
        self.entered.put("Upload")
        count = 0
        async for _ in requests:
            count += 1
            self.entered.put("chunk")
        return str(count).encode()

    def plain(self, request: bytes, context: Any) -> bytes:
        self.tokens.append(lifecycle.current_token())
        if request == b"mark":
            return str(lifecycle.mark_long_lived()).encode()
        return request

    def aio_handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Due": grpc.unary_unary_rpc_method_handler(self.due_async),
                "Spawn": grpc.unary_unary_rpc_method_handler(self.spawn_async),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi_async),
                "Upload": grpc.stream_unary_rpc_method_handler(self.upload_async),
                "Plain": grpc.unary_unary_rpc_method_handler(self.plain),
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary_async),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream_async),
                "Stuck": grpc.unary_unary_rpc_method_handler(self.stuck_async),
                "Hang": grpc.unary_unary_rpc_method_handler(self.hang_async),
                "LongPoll": grpc.unary_unary_rpc_method_handler(self.long_poll_async),
                "Token": grpc.unary_unary_rpc_method_handler(self.token_async),
            },
        )


def make_server(kind: str, echo: Echo, **kwargs: Any) -> Any:
    """A `lifecycle.grpc.Server` (``kind="sync"``) or `AioServer` (``"aio"``) on 127.0.0.1."""
    import lifecycle.grpc  # noqa: PLC0415 - the integration under test

    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("port", 0)
    if kind == "sync":
        return lifecycle.grpc.Server(handlers=[echo.handler()], **kwargs)
    return lifecycle.grpc.AioServer(handlers=[echo.aio_handler()], **kwargs)


class Client:
    """A real grpcio client of ``test.Echo`` and of the health service."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.unary = self.channel.unary_unary(method("Unary"))
        self.stream = self.channel.unary_stream(method("Stream"))
        self.stuck = self.channel.unary_unary(method("Stuck"))
        self.long_poll = self.channel.unary_unary(method("LongPoll"))
        self.token = self.channel.unary_unary(method("Token"))
        self.due = self.channel.unary_unary(method("Due"))
        self.spawn = self.channel.unary_unary(method("Spawn"))
        self.bidi = self.channel.stream_stream(method("Bidi"))
        self.upload = self.channel.stream_unary(method("Upload"))
        from grpc_health.v1 import health_pb2  # noqa: PLC0415

        self.health_pb2 = health_pb2
        self.check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self.watch = self.channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self.list = self.channel.unary_unary(
            "/grpc.health.v1.Health/List",
            request_serializer=health_pb2.HealthListRequest.SerializeToString,
            response_deserializer=health_pb2.HealthListResponse.FromString,
        )

    def status(self, service: str = "") -> str:
        """``"SERVING"`` / ``"NOT_SERVING"``: the Check answer, by name."""
        response = self.check(self.health_pb2.HealthCheckRequest(service=service), timeout=BOUND)
        return str(self.health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def close(self) -> None:
        self.channel.close()
