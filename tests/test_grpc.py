"""lifecycle.grpc: Server and AioServer stop without losing an RPC, under both runners.

Real grpcio servers and clients on 127.0.0.1 (the service of
tests/grpc_fixtures.py, no generated code). RPCs are held in flight with
events and queues, never with sleeps; every wait is bounded. The process
tests run tests/procs/grpc_child.py and send it a real SIGTERM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import lifecycle
import lifecycle.grpc
from lifecycle._serving.inflight import current_scope
from tests.grpc_fixtures import BOUND, Client, Echo, make_server, method
from tests.procs.grpc_child import DRAIN, STOP_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["sync", "aio"]
RUNNERS = ["thread", "asyncio"]
BOTH = [(k, r) for k in KINDS for r in RUNNERS]
STUCK = method("Stuck")


class Marker:
    """Starts after the server (its dependency): the app serves once it did."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def start(self) -> None:
        self.started.set()


class Running:
    """An app under ``lifecycle.run`` in a thread (no signals), with a server of ``kind``."""

    def __init__(
        self,
        kind: str,
        runner: Any,
        echo: Echo,
        server_options: dict[str, Any] | None = None,
        **app_options: Any,
    ) -> None:
        self.echo = echo
        self.app = lifecycle.App("grpc-test", **app_options)
        self.server = self.app.add(make_server(kind, echo, **(server_options or {})), name="grpc")
        marker = self.app.add(Marker(), name="marker", depends_on=[self.server])
        self.codes: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.codes.append(lifecycle.run(self.app, runner=runner, signals=None)),
            daemon=True,
        )
        self.thread.start()
        assert marker.started.wait(BOUND), "the app did not start"
        self.client = Client(self.server.address)
        self.shutdown_at: float | None = None

    def shutdown(self) -> None:
        self.shutdown_at = time.monotonic()
        self.app.request_shutdown()

    def exit_code(self) -> int:
        self.thread.join(BOUND)
        assert not self.thread.is_alive(), "the app did not stop"
        (code,) = self.codes
        return code

    @property
    def stop_took(self) -> float:
        info = self.app.components["grpc"]
        assert info.stop_began is not None
        assert info.stop_ended is not None
        return info.stop_ended - info.stop_began

    def close(self) -> None:
        self.echo.release.set()
        self.app.request_shutdown()
        self.thread.join(BOUND)
        self.client.close()


@pytest.fixture
def running() -> Iterator[Any]:
    made: list[Running] = []

    def make(
        kind: str, runner: str, server_options: dict[str, Any] | None = None, **app_options: Any
    ) -> Running:
        r = Running(kind, runner, Echo(), server_options, **app_options)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def wait_refused(address: str) -> None:
    """Until a new channel's call is refused: the listener closed (bounded).

    A call that reaches the server as grpcio's stop begins can come back
    CANCELLED (grpcio refuses calls it has not matched to a handler yet that
    way); the probe then tries again until the connection itself is refused.
    """
    end = time.monotonic() + BOUND
    while time.monotonic() < end:
        client = Client(address)
        try:
            client.unary(b"probe", timeout=BOUND)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        finally:
            client.close()
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        if code is grpc.StatusCode.UNAVAILABLE:
            return
    pytest.fail("the listener never closed")


# -- every RPC runs under its token ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rpc_token_has_no_deadline_until_shutdown(running, kind: str) -> None:
    """Before shutdown an RPC's token has no deadline and is not cancelled."""
    r = running(kind, "thread")
    assert r.client.token(b"", timeout=BOUND) == b"False False"
    assert r.client.unary(b"hi", timeout=BOUND) == b"hi"
    assert r.echo.tokens[0] is not lifecycle.current_token()


# -- the stop: unary RPCs finish, streams end with a status ---------------------------


@pytest.mark.parametrize(("kind", "runner"), BOTH)
def test_unary_calls_in_flight_at_stop_complete(running, kind: str, runner: str) -> None:
    """Unary RPCs in flight when the stop closes the listener finish OK; exit OK."""
    r = running(kind, runner, stop_timeout=10.0)
    calls = [r.client.unary.future(b"hold", timeout=BOUND) for _ in range(4)]
    r.echo.wait_entered("Unary", 4)
    r.shutdown()
    wait_refused(r.server.address)  # the stop is under way, the calls still held
    r.echo.release.set()
    assert [c.result(timeout=BOUND) for c in calls] == [b"hold"] * 4
    assert r.exit_code() == lifecycle.ExitCode.OK
    assert r.app.components["grpc"].error is None


@pytest.mark.parametrize(("kind", "runner"), BOTH)
@pytest.mark.parametrize(
    ("request_", "code", "details"),
    [(b"", grpc.StatusCode.OK, ""), (b"status", grpc.StatusCode.UNAVAILABLE, "shutting down")],
    ids=["ok", "chosen-status"],
)
def test_server_stream_ends_with_its_status(
    running, kind: str, runner: str, request_: bytes, code: Any, details: str
) -> None:
    """A server stream open at stop is ended through its token, with the handler's status."""
    r = running(kind, runner, stop_timeout=10.0)
    stream = r.client.stream(request_, timeout=BOUND)
    assert next(stream) == b"tick"
    r.shutdown()
    rest: list[bytes] = []
    try:
        rest.extend(stream)
    except grpc.RpcError:
        assert code is not grpc.StatusCode.OK  # a status other than OK ends the iteration so
    assert set(rest) <= {b"tick"}
    assert stream.code() is code
    assert stream.details() == details
    assert r.exit_code() == lifecycle.ExitCode.OK
    assert r.echo.finished.get(timeout=BOUND) == "Stream"
    assert r.stop_took < 10.0 / 2, "the stream held the stop"


@pytest.mark.parametrize("kind", KINDS)
def test_marked_long_poll_ends_at_stop(running, kind: str) -> None:
    """A unary handler that calls mark_long_lived() has its token cancelled by the stop."""
    r = running(kind, "thread", stop_timeout=10.0)
    poll = r.client.long_poll.future(b"", timeout=BOUND)
    r.echo.wait_entered("LongPoll")
    r.shutdown()
    assert poll.result(timeout=BOUND) == b"ended"
    assert r.exit_code() == lifecycle.ExitCode.OK
    assert r.stop_took < 10.0 / 2


@pytest.mark.parametrize("kind", KINDS)
def test_stream_cancelled_by_client_leaves_tracker(running, kind: str) -> None:
    """A client that cancels a stream ends its handler (finally runs) and its ticket."""
    r = running(kind, "thread")
    stream = r.client.stream(b"", timeout=BOUND)
    assert next(stream) == b"tick"
    stream.cancel()
    assert r.echo.finished.get(timeout=BOUND) == "Stream"
    assert r.server.tracker.wait_idle(timeout=BOUND)


# -- health ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "runner"), BOTH)
def test_health_not_serving_before_listener_closes(running, kind: str, runner: str) -> None:
    """The drain turns health NOT_SERVING while RPCs are still served; Watch ends at stop."""
    r = running(kind, runner, drain_delay=2.0, stop_timeout=10.0)
    pb2 = r.client.health_pb2
    assert r.client.status() == "SERVING"
    assert r.client.status("test.Echo") == "SERVING"
    watches = [
        r.client.watch(pb2.HealthCheckRequest(service=s), timeout=BOUND) for s in ("", "test.Echo")
    ]
    for watch in watches:
        assert next(watch).status == pb2.HealthCheckResponse.SERVING
    r.shutdown()
    for watch in watches:
        assert next(watch).status == pb2.HealthCheckResponse.NOT_SERVING
    # Still serving, on a new connection too: the listener is open during the drain.
    fresh = Client(r.server.address)
    try:
        assert fresh.status() == "NOT_SERVING"
        assert fresh.status("test.Echo") == "NOT_SERVING"
        assert fresh.unary(b"still", timeout=BOUND) == b"still"
        # Begun during the drain: the token carries the deadline of its cut.
        assert fresh.token(b"", timeout=BOUND) == b"True False"
    finally:
        fresh.close()
    for watch in watches:
        assert list(watch) == []  # ended by the stop, not reset
        assert watch.code() is grpc.StatusCode.OK
    assert r.exit_code() == lifecycle.ExitCode.OK
    assert r.stop_took < 10.0 / 2, "a Watch stream held the stop"


@pytest.mark.parametrize("kind", KINDS)
def test_health_list_and_set_serving(running, kind: str) -> None:
    """List names every service; set_serving changes one until the drain freezes them."""
    r = running(kind, "thread")
    pb2 = r.client.health_pb2
    listed = r.client.list(pb2.HealthListRequest(), timeout=BOUND)
    assert sorted(listed.statuses) == ["", "test.Echo"]
    r.server.set_serving("test.Echo", False)
    assert r.client.status("test.Echo") == "NOT_SERVING"
    r.server.set_serving("test.Echo")
    assert r.client.status("test.Echo") == "SERVING"
    with pytest.raises(grpc.RpcError) as unknown:
        r.client.status("nope")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


# -- the cut ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "runner"), BOTH)
def test_stuck_handler_is_cut_and_named(running, kind: str, runner: str) -> None:
    """A handler ignoring its token is cut before the stop deadline: DeadlineExceeded, TIMEOUT."""
    r = running(kind, runner, stop_timeout=1.0)
    stuck = r.client.stuck.future(b"", timeout=BOUND)
    r.echo.wait_entered("Stuck")
    quick = r.client.unary.future(b"quick", timeout=BOUND)
    assert quick.result(timeout=BOUND) == b"quick"
    r.shutdown()
    assert r.exit_code() == lifecycle.ExitCode.TIMEOUT
    assert r.stop_took < 1.0
    error = r.app.components["grpc"].error
    assert isinstance(error, lifecycle.DeadlineExceeded)
    assert len(error.cut) == 1
    assert error.cut[0].startswith(STUCK + " (")
    with pytest.raises(grpc.RpcError):
        stuck.result(timeout=BOUND)
    if kind == "aio":
        # grpcio's aio stop returns before the handlers it aborted finished;
        # the stop waited for their finally blocks (which await) all the same.
        assert r.echo.finished.get_nowait() == "Stuck"


@pytest.mark.parametrize("runner", RUNNERS)
def test_cut_comes_before_grpcio_cancels(running, runner: str) -> None:
    """grpcio's grace ends after the cut: an aio handler that ends at once when cancelled
    is still cut by lifecycle, named, and the stop raises DeadlineExceeded."""
    r = running("aio", runner, stop_timeout=1.0)
    hang = r.client.channel.unary_unary(method("Hang")).future(b"", timeout=BOUND)
    r.echo.wait_entered("Hang")
    r.shutdown()
    assert r.exit_code() == lifecycle.ExitCode.TIMEOUT
    error = r.app.components["grpc"].error
    assert isinstance(error, lifecycle.DeadlineExceeded)
    assert [c.split(" (")[0] for c in error.cut] == [method("Hang")]
    with pytest.raises(grpc.RpcError):
        hang.result(timeout=BOUND)


# -- errors -------------------------------------------------------------------------------


def _listening_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def _start(server: Any) -> None:
    if isinstance(server, lifecycle.grpc.AioServer):
        import asyncio  # noqa: PLC0415

        asyncio.run(server.start())
    else:
        server.start()


@pytest.mark.parametrize("kind", KINDS)
def test_port_in_use_names_port_and_fix(kind: str) -> None:
    """A port another socket listens on is an OSError naming the address and the way out."""
    sock, port = _listening_port()
    try:
        server = make_server(kind, Echo(), port=port)
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}.*in use.*another port"):
            _start(server)
    finally:
        sock.close()


def test_second_server_on_same_port_fails() -> None:
    """SO_REUSEPORT is off: a second server on a port in use fails instead of sharing it."""
    first = make_server("sync", Echo())
    first.start()
    try:
        second = make_server("sync", Echo(), port=first.port)
        with pytest.raises(OSError, match="in use"):
            second.start()
    finally:
        first.stop(lifecycle.CancelSource(timeout=BOUND).token)


def test_without_grpcio_import_error_names_extra() -> None:
    """Importing lifecycle.grpc without grpcio says which extra to install."""
    code = "import sys; sys.modules['grpc'] = None; import lifecycle.grpc"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 1
    assert "pip install 'lifecycle[grpc]'" in done.stderr


def test_rejects_what_is_no_handler() -> None:
    """handlers takes generic handlers; the message shows the servicers form for generated code."""
    with pytest.raises(TypeError, match="servicers="):
        lifecycle.grpc.Server(handlers=[object()])
    with pytest.raises(ValueError, match="port"):
        lifecycle.grpc.Server(port=70000)


def test_stop_before_start_and_twice_does_nothing() -> None:
    """stop() before start() returns; a second stop() returns at once."""
    server = make_server("sync", Echo())
    server.stop(lifecycle.CancelSource(timeout=BOUND).token)
    server.start()
    server.stop(lifecycle.CancelSource(timeout=BOUND).token)
    server.stop(lifecycle.CancelSource(timeout=BOUND).token)
    assert server.wait_stopped(BOUND)


def test_servicers_of_generated_code_are_served_and_reported() -> None:
    """(add_function, servicer) pairs are registered; their services appear in health."""
    echo = Echo()

    def add_other_to_server(servicer: Echo, server: Any) -> None:
        # What protoc's add_XServicer_to_server does with grpcio >= 1.62.
        handlers = {"Unary": grpc.unary_unary_rpc_method_handler(servicer.unary)}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Other", handlers),)
        )
        server.add_registered_method_handlers("test.Other", handlers)

    server = lifecycle.grpc.Server(
        servicers=[(add_other_to_server, echo)], host="127.0.0.1", port=0
    )
    server.start()
    client = Client(server.address)
    try:
        assert server.services == ["test.Other"]
        assert client.status("test.Other") == "SERVING"
        call = client.channel.unary_unary("/test.Other/Unary")
        assert call(b"x", timeout=BOUND) == b"x"
        assert server.tracker.total == 2  # the Check and the call: both tracked
    finally:
        client.close()
        server.stop(lifecycle.CancelSource(timeout=BOUND).token)


def wait_not_serving(client: Client) -> None:
    """Until health answers NOT_SERVING: the drain began (bounded)."""
    end = time.monotonic() + BOUND
    while client.status() != "NOT_SERVING":
        assert time.monotonic() < end, "the drain never began"


# -- health Watch streams cannot starve the threaded server ----------------------------


def test_watches_cannot_take_the_threads_of_rpcs() -> None:
    """Watch streams (one per client subchannel) hold threads of their own: with every Watch
    slot taken, Check and RPCs still answer, and one more Watch is RESOURCE_EXHAUSTED."""
    echo = Echo()
    server = make_server("sync", echo, max_workers=2, max_watches=2)
    server.start()
    clients = [Client(server.address) for _ in range(4)]
    try:
        pb2 = clients[0].health_pb2
        watches = [c.watch(pb2.HealthCheckRequest(), timeout=BOUND) for c in clients[:2]]
        for watch in watches:
            assert next(watch).status == pb2.HealthCheckResponse.SERVING
        assert clients[2].status() == "SERVING"
        assert clients[2].unary(b"still", timeout=BOUND) == b"still"
        extra = clients[3].watch(pb2.HealthCheckRequest(), timeout=BOUND)
        with pytest.raises(grpc.RpcError) as refused:
            next(extra)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_watches" in str(refused.value.details())
    finally:
        server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        for c in clients:
            c.close()


# -- the deadline of an RPC begun during the drain -----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rpc_begun_during_drain_answers_before_the_stop_cuts(running, kind: str) -> None:
    """An RPC begun during the drain that works until its token says stop still answers:
    its token fires a margin before the stop's cut, not at the far shutdown deadline."""
    r = running(kind, "thread", drain_delay=1.0, stop_timeout=1.0, shutdown_timeout=30.0)
    r.shutdown()
    wait_not_serving(r.client)
    due = r.client.due.future(b"", timeout=BOUND)
    r.echo.wait_entered("Due")
    assert due.result(timeout=BOUND) == b"due"
    assert r.exit_code() == lifecycle.ExitCode.OK, r.app.components["grpc"].error


@pytest.mark.parametrize("kind", KINDS)
def test_rpc_token_of_the_drain_delay_expires_as_every_server_kinds_does(
    running, kind: str
) -> None:
    """The token of an RPC begun during the drain delay carries the shutdown's deadline (30 s
    away); once the stop began (stop_timeout=1) it is cancelled with DEADLINE_EXCEEDED, the
    reason every server kind gives it, a margin before the stop's cut."""
    interceptor = _SeeToken() if kind == "sync" else _SeeTokenAio()
    r = running(
        kind,
        "thread",
        {"interceptors": [interceptor]},
        drain_delay=1.0,
        stop_timeout=1.0,
        shutdown_timeout=30.0,
    )
    r.shutdown()
    wait_not_serving(r.client)
    due = r.client.due.future(b"", timeout=BOUND)
    r.echo.wait_entered("Due")
    early = interceptor.seen[-1]
    assert early.deadline is not None
    assert early.deadline > r.app.shutdown_deadline - 1.0  # only the shutdown's is known yet
    assert due.result(timeout=BOUND) == b"due"
    assert early.reason == lifecycle.DEADLINE_EXCEEDED
    assert r.exit_code() == lifecycle.ExitCode.OK, r.app.components["grpc"].error
    assert r.stop_took < 1.0


# -- mark_long_lived and the context of an RPC ----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_mark_from_context_of_ended_rpc_marks_nothing(running, kind: str) -> None:
    """mark_long_lived() from a context copied in an RPC that ended returns False and leaves
    the reused slot alone: the next long poll on it is still ended by the stop."""
    r = running(kind, "thread", stop_timeout=10.0)
    assert r.client.spawn(b"", timeout=BOUND) == b"spawned"
    (copied,) = r.echo.contexts
    assert copied.run(lifecycle.mark_long_lived) is False
    poll = r.client.long_poll.future(b"", timeout=BOUND)
    r.echo.wait_entered("LongPoll")
    r.shutdown()
    assert poll.result(timeout=BOUND) == b"ended"
    assert r.exit_code() == lifecycle.ExitCode.OK
    assert r.stop_took < 10.0 / 2


def test_aio_plain_handler_leaves_nothing_on_the_executor_thread() -> None:
    """A plain def handler on AioServer runs in an executor thread under its RPC's token;
    after the RPC, that thread has neither the token nor the request scope."""

    def probe() -> tuple[lifecycle.CancelToken, object, bool]:
        return lifecycle.current_token(), current_scope(), lifecycle.mark_long_lived()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        before = await loop.run_in_executor(None, probe)
        echo = Echo()
        server = make_server("aio", echo)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                plain = channel.unary_unary(method("Plain"))
                assert await plain(b"hi", timeout=BOUND) == b"hi"
                assert await plain(b"mark", timeout=BOUND) == b"True"
            after = await loop.run_in_executor(None, probe)
        finally:
            await server.stop(lifecycle.CancelSource(timeout=BOUND).token)
        assert echo.tokens[0] is not before[0]  # the handler ran under its RPC's token
        assert after == before
        assert after[1] is None
        assert after[2] is False

    asyncio.run(asyncio.wait_for(main(), BOUND))


# -- user interceptors ---------------------------------------------------------------------


class _SeeToken(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen: list[lifecycle.CancelToken] = []

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.seen.append(lifecycle.current_token())
        return continuation(details)


class _SeeTokenAio(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen: list[lifecycle.CancelToken] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.seen.append(lifecycle.current_token())
        return await continuation(details)


@pytest.mark.parametrize("kind", KINDS)
def test_user_interceptor_runs_under_the_rpc_token(running, kind: str) -> None:
    """Your interceptor's intercept_service sees the RPC's token, the one its handler gets."""
    interceptor = _SeeToken() if kind == "sync" else _SeeTokenAio()
    r = running(kind, "thread", {"interceptors": [interceptor]}, start_timeout=1.0)
    assert r.client.unary(b"x", timeout=BOUND) == b"x"
    assert interceptor.seen[-1] is r.echo.tokens[-1]
    assert not interceptor.seen[-1].cancelled


# -- streams that read requests --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_idle_bidi_stream_ends_ok_at_stop(running, kind: str) -> None:
    """A bidi handler iterating its requests while the client sends nothing more is ended by
    the stop: the request iterator ends when the token is cancelled; status OK, exit OK."""
    r = running(kind, "thread", stop_timeout=10.0)
    idle = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"hello"
        idle.wait(BOUND)

    try:
        stream = r.client.bidi(requests(), timeout=BOUND)
        assert next(stream) == b"hello"
        r.shutdown()
        assert list(stream) == []
        assert stream.code() is grpc.StatusCode.OK
        assert r.exit_code() == lifecycle.ExitCode.OK
        assert r.stop_took < 10.0 / 2, "the idle stream held the stop"
        assert r.echo.finished.get(timeout=BOUND) == "Bidi"
    finally:
        idle.set()


@pytest.mark.parametrize("kind", KINDS)
def test_upload_is_waited_for_like_a_unary_call(running, kind: str) -> None:
    """A client-streaming RPC is ordinary work by default: the stop waits for it to finish."""
    r = running(kind, "thread", stop_timeout=10.0)
    go = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"a"
        go.wait(BOUND)
        yield b"b"

    try:
        upload = r.client.upload.future(chunks(), timeout=BOUND)
        r.echo.wait_entered("Upload")
        assert r.server.tracker.counts() == (1, 0)
        r.shutdown()
        wait_refused(r.server.address)
        go.set()
        assert upload.result(timeout=BOUND) == b"2"
        assert r.exit_code() == lifecycle.ExitCode.OK
    finally:
        go.set()


@pytest.mark.parametrize("kind", KINDS)
def test_upload_made_long_lived_answers_with_what_came_at_stop(running, kind: str) -> None:
    """A client-streaming method named long-lived has its request stream ended by the stop:
    the handler answers with the messages that came, while the client still sends nothing."""
    r = running(kind, "thread", {"long_lived": lambda m: m.endswith("/Upload")}, stop_timeout=10.0)
    idle = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"a"
        idle.wait(BOUND)

    try:
        upload = r.client.upload.future(chunks(), timeout=BOUND)
        r.echo.wait_entered("Upload")
        r.echo.wait_entered("chunk")
        r.shutdown()
        assert upload.result(timeout=BOUND) == b"1"
        assert r.exit_code() == lifecycle.ExitCode.OK
        assert r.stop_took < 10.0 / 2
    finally:
        idle.set()


@pytest.mark.parametrize("kind", KINDS)
def test_requests_helper_ends_iteration_when_token_is_cancelled(kind: str) -> None:
    """lifecycle.grpc.requests(it) stops iterating once the current token is cancelled."""
    source = lifecycle.CancelSource()
    if kind == "sync":
        gate = threading.Event()

        def endless() -> Iterator[int]:
            yield 1
            gate.wait(BOUND)
            yield 2

        with _as_current(source.token):
            it = lifecycle.grpc.requests(endless())
            assert next(it) == 1
            source.cancel()
            assert list(it) == []
        gate.set()
    else:

        async def main() -> list[int]:
            async def endless() -> Any:
                yield 1
                await asyncio.sleep(BOUND)
                yield 2

            got = []
            with _as_current(source.token):
                async for item in lifecycle.grpc.requests(endless()):
                    got.append(item)
                    source.cancel()
            return got

        assert asyncio.run(asyncio.wait_for(main(), BOUND)) == [1]


class _as_current:
    """``with _as_current(token):`` makes ``token`` current_token() in the block."""

    def __init__(self, token: lifecycle.CancelToken) -> None:
        from lifecycle._core.tokens import _current  # noqa: PLC0415

        self._var = _current
        self._token = token

    def __enter__(self) -> None:
        self._reset = self._var.set(self._token)

    def __exit__(self, *exc: object) -> None:
        self._var.reset(self._reset)


# -- calls queued behind a full pool ----------------------------------------------------------


def test_calls_queued_behind_a_full_pool_are_named_at_the_cut(running) -> None:
    """A call grpcio accepted that waits for a thread when the stop cuts is named too."""
    r = running("sync", "thread", {"max_workers": 1, "max_watches": 1}, stop_timeout=1.0)
    stuck = [r.client.stuck.future(b"", timeout=BOUND) for _ in range(2)]
    r.echo.wait_entered("Stuck", 2)
    queued = r.client.unary.future(b"queued", timeout=BOUND)
    end = time.monotonic() + BOUND
    while not r.server._pool.queued():
        assert time.monotonic() < end, "the call never queued"
    r.shutdown()
    assert r.exit_code() == lifecycle.ExitCode.TIMEOUT
    error = r.app.components["grpc"].error
    assert isinstance(error, lifecycle.DeadlineExceeded)
    assert sorted(c.split(" (")[0] for c in error.cut) == sorted([method("Unary"), STUCK, STUCK])
    assert any("queued" in c for c in error.cut)
    for call in [*stuck, queued]:
        with pytest.raises(grpc.RpcError):
            call.result(timeout=BOUND)


# -- bad input is named at construction ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"options": {"grpc.max_receive_message_length": 1}}, "options"),
        ({"options": [("a", 1, 2)]}, "options"),
        ({"maximum_concurrent_rpcs": 0}, "maximum_concurrent_rpcs"),
        ({"maximum_concurrent_rpcs": -1}, "maximum_concurrent_rpcs"),
        ({"maximum_concurrent_rpcs": "4"}, "maximum_concurrent_rpcs"),
        ({"compression": "gzip"}, "compression"),
        ({"interceptors": [object()]}, "interceptors"),
        ({"long_lived": True}, "long_lived"),
    ],
    ids=[
        "options-dict",
        "options-3-tuple",
        "mcr-0",
        "mcr-neg",
        "mcr-str",
        "compression",
        "interceptor",
        "long-lived",
    ],
)
def test_bad_arguments_are_named_at_construction(kind: str, options: Any, match: str) -> None:
    """What grpcio would take and then fail on per call is refused when the server is made."""
    with pytest.raises((TypeError, ValueError), match=match):
        make_server(kind, Echo(), **options)


def test_interceptor_of_the_other_flavour_is_named() -> None:
    """A grpc.aio interceptor on the threaded server (and back) says which class is wanted."""
    with pytest.raises(TypeError, match=r"grpc\.ServerInterceptor"):
        make_server("sync", Echo(), interceptors=[_SeeTokenAio()])
    with pytest.raises(TypeError, match=r"grpc\.aio\.ServerInterceptor"):
        make_server("aio", Echo(), interceptors=[_SeeToken()])


@pytest.mark.parametrize("kind", KINDS)
def test_host_that_does_not_resolve_is_named_as_such(kind: str) -> None:
    """A host that does not resolve is reported as that, not as a port in use."""
    server = make_server(kind, Echo(), host="nohost.invalid")
    with pytest.raises(OSError, match=r"nohost\.invalid.*does not resolve"):
        _start(server)


# -- the per-method wrap cache ---------------------------------------------------------------------


def test_wrap_cache_holds_for_a_new_handler_of_the_same_behaviour() -> None:
    """An interceptor that returns a new handler object per call for the same behaviour
    (``handler._replace(...)``) still gets the cached wrapper."""
    server = lifecycle.grpc.Server(host="127.0.0.1", port=0)

    def echo(request: bytes, context: Any) -> bytes:
        return request

    first = server._wrap(grpc.unary_unary_rpc_method_handler(echo), "/t.S/U")
    again = server._wrap(grpc.unary_unary_rpc_method_handler(echo), "/t.S/U")
    assert again is first


# -- real processes, real SIGTERM ------------------------------------------------------------


class Child:
    """tests/procs/grpc_child.py: JSON lines on stdout, the library's log on stderr."""

    def __init__(self, kind: str, runner: str, scenario: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.procs.grpc_child", kind, runner, scenario],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next(
                (
                    e
                    for e in self.events
                    if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
                ),
                None,
            )

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self.proc.poll() is not None, BOUND)
            got = found()
        assert got is not None, f"{event} not seen; stderr:\n{''.join(self.stderr)}"
        return got

    def exit_after_sigterm(self) -> tuple[int, float]:
        sent = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the child did not exit; killed it\n{''.join(self.stderr)}")
        for reader in self._readers:
            reader.join(BOUND)
        return code, time.monotonic() - sent

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def child() -> Iterator[Any]:
    made: list[Child] = []

    def spawn(kind: str, runner: str, scenario: str) -> Child:
        c = Child(kind, runner, scenario)
        made.append(c)
        return c

    yield spawn
    for c in made:
        c.close()


@pytest.mark.process
@pytest.mark.parametrize(("kind", "runner"), BOTH)
def test_sigterm_under_load_loses_no_rpc(child, kind: str, runner: str) -> None:
    """SIGTERM with unary calls and a stream in flight: every call OK, stream OK, exit 0."""
    c = child(kind, runner, "ok")
    port = c.wait_for("ready")["port"]
    client = Client(f"127.0.0.1:{port}")
    pb2 = client.health_pb2
    not_serving = threading.Event()
    results: list[object] = []
    lock = threading.Lock()
    busy = threading.Barrier(5)

    def watch() -> None:
        for response in client.watch(pb2.HealthCheckRequest(service=""), timeout=BOUND):
            if response.status == pb2.HealthCheckResponse.NOT_SERVING:
                not_serving.set()  # what a load balancer acts on: no new calls here

    def caller() -> None:
        first = True
        while not not_serving.is_set():
            try:
                outcome: object = client.unary(b"slow", timeout=BOUND)
            except grpc.RpcError as error:
                outcome = error.code()
            with lock:
                results.append(outcome)
            if first:
                first = False
                busy.wait(BOUND)

    stream = client.stream(b"", timeout=BOUND)
    assert next(stream) == b"tick"
    threads = [threading.Thread(target=t, daemon=True) for t in [watch] + [caller] * 4]
    for t in threads:
        t.start()
    busy.wait(BOUND)  # every caller has completed a call: load is on
    try:
        code, took = c.exit_after_sigterm()
        rest = list(stream)
        for t in threads:
            t.join(BOUND)
    finally:
        client.close()
    assert code == lifecycle.ExitCode.OK, "".join(c.stderr)
    assert took < DRAIN + STOP_TIMEOUT["ok"], took  # the budget: drain + stop timeout
    assert set(rest) <= {b"tick"}
    assert stream.code() is grpc.StatusCode.OK
    assert len(results) >= 4
    assert set(results) == {b"slow"}, results


@pytest.mark.process
@pytest.mark.parametrize(("kind", "runner"), BOTH)
def test_sigterm_with_stuck_handler_exits_timeout_naming_it(child, kind: str, runner: str) -> None:
    """SIGTERM with a handler that ignores its token: exit TIMEOUT in budget, the RPC named."""
    c = child(kind, runner, "stuck")
    port = c.wait_for("ready")["port"]
    client = Client(f"127.0.0.1:{port}")
    try:
        stuck = client.stuck.future(b"", timeout=BOUND)
        c.wait_for("entered", method="Stuck")
        code, took = c.exit_after_sigterm()
        with pytest.raises(grpc.RpcError):
            stuck.result(timeout=BOUND)
    finally:
        client.close()
    stderr = "".join(c.stderr)
    assert code == lifecycle.ExitCode.TIMEOUT, stderr
    # Bounded by the drain and the stop timeout (2x margin for a loaded machine),
    # not by the handler, which would hold the RPC for BOUND seconds.
    assert took < 2 * (DRAIN + STOP_TIMEOUT["stuck"]), took
    assert STUCK in stderr
