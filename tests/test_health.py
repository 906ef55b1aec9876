"""The health endpoint: probes through an app's life, the JSON status, hostile clients.

Real sockets on 127.0.0.1; every wait is on an event or a socket, with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lifecycle
from lifecycle._core.tokens import on_cancel_inline
from lifecycle._serving.health import (
    MAX_HEAD_BYTES,
    PATHS,
    Answer,
    HealthAnswers,
    HealthServer,
    Ticket,
    _Head,
    _Phase,
    _RequestError,
    _Throttle,
)

WAIT = 10.0  # upper bound on any wait; the happy path takes milliseconds
PROBE_BUDGET = 0.1  # seconds a liveness probe may take, however many slow clients there are
SLOW_HEAD = b"GET /livez HTTP/1.1\r\nX-Slow: "  # a head that never ends


# -- helpers -------------------------------------------------------------------


@attrs.define
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("ascii").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return Reply(int(status), headers, body, raw)


def exchange(port: int, request: bytes) -> Reply:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        return parse(read_all(sock))


def get(port: int, path: str, method: str = "GET") -> Reply:
    reply = exchange(port, f"{method} {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
    assert reply.headers["connection"] == "close"
    if method != "HEAD":
        assert int(reply.headers["content-length"]) == len(reply.body)
    return reply


def probes(port: int) -> dict[str, int]:
    return {p: get(port, p).status for p in ("/livez", "/readyz", "/startupz")}


def status_of(port: int) -> dict[str, Any]:
    reply = get(port, "/status")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    document: dict[str, Any] = json.loads(reply.body)
    return document


def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) for a condition set by another thread."""
    pause = threading.Event()
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        pause.wait(0.005)


def timed_get(port: int, path: str, timeout: float = 1.0) -> tuple[Reply, float]:
    """A probe with a short socket timeout, and the seconds it took (connect included)."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        reply = parse(read_all(sock))
    return reply, time.monotonic() - began


def is_open(sock: socket.socket) -> bool:
    """Whether the server still holds ``sock`` open (peeks: reads nothing)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(WAIT)


def until_closed(sock: socket.socket) -> bytes:
    """What the server sends on ``sock`` until it closes it (a reset ends it too; bounded)."""
    sock.settimeout(WAIT)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


class Crowd:
    """Slow clients: silent ones, and ones that send a byte of a head every 0.5 s."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self._trickling: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def open(self, port: int, n: int, *, head: bytes = b"", trickle: bool = False) -> None:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            if head:
                sock.sendall(head)
            self.sockets.append(sock)
            if trickle:
                self._trickling.append(sock)

    def _trickle(self) -> None:
        # Bounded: at most 4 * WAIT seconds, in steps of 0.5 s.
        for _ in range(int(8 * WAIT)):
            if self._stop.wait(0.5):
                return
            for sock in list(self._trickling):
                try:
                    sock.send(b"a")
                except OSError:
                    self._trickling.remove(sock)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def crowd() -> Iterator[Crowd]:
    """Slow clients a test opens; stopped and closed after it."""
    it = Crowd()
    yield it
    it.close()


class Gated:
    """A component whose start and/or stop block until released."""

    def __init__(self, *, hold_start: bool = False, hold_stop: bool = False) -> None:
        self.starting = threading.Event()
        self.stopping = threading.Event()
        self.release_start = threading.Event()
        self.release_stop = threading.Event()
        if not hold_start:
            self.release_start.set()
        if not hold_stop:
            self.release_stop.set()

    def start(self, token: lifecycle.CancelToken) -> None:
        self.starting.set()
        assert self.release_start.wait(WAIT)

    def stop(self, token: lifecycle.CancelToken) -> None:
        self.stopping.set()
        assert self.release_stop.wait(WAIT)

    def release(self) -> None:
        self.release_start.set()
        self.release_stop.set()


@attrs.define
class Launched:
    runner: lifecycle.ThreadedRunner
    starter: threading.Thread
    errors: list[BaseException]

    @property
    def port(self) -> int:
        # The runner keeps its HealthServer privately; App(health=0) picks the port.
        server: HealthServer = self.runner._health
        return server.port

    def started(self) -> None:
        self.starter.join(WAIT)
        assert not self.starter.is_alive()
        assert self.errors == []

    def finish(self) -> int:
        codes: list[int] = []
        waiter = threading.Thread(target=lambda: codes.append(self.runner.wait()), daemon=True)
        waiter.start()
        waiter.join(WAIT)
        assert codes, "the runner did not finish in time"
        return codes[0]


@pytest.fixture
def launch() -> Iterator[Callable[[lifecycle.App, Gated], Launched]]:
    """Start an app's runner in a thread, once ``gate`` is inside its start; stop it after."""
    launched: list[tuple[Launched, Gated]] = []

    def launch_(app: lifecycle.App, gate: Gated) -> Launched:
        runner = lifecycle.ThreadedRunner(app, signals=None)
        errors: list[BaseException] = []

        def start() -> None:
            try:
                runner.start()
            except BaseException as error:
                errors.append(error)

        starter = threading.Thread(target=start, daemon=True)
        starter.start()
        it = Launched(runner, starter, errors)
        launched.append((it, gate))
        # The runner binds the health port before anything starts.
        assert gate.starting.wait(WAIT)
        return it

    yield launch_
    for it, gate in launched:
        gate.release()
        it.runner.app.request_shutdown("test over")
        it.starter.join(WAIT)
        it.finish()


class Held(Gated):
    """A component whose ready() blocks until released (bounded), counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.entered = threading.Event()
        self.answer = threading.Event()

    def ready(self) -> bool:
        self.calls += 1
        self.entered.set()
        return self.answer.wait(WAIT)


def send_probe(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(f"GET {path} HTTP/1.1\r\n\r\n".encode())
    return sock


def run_held(
    launch: Callable[[lifecycle.App, Gated], Launched], **options: Any
) -> tuple[Held, Launched]:
    """Run an app 'shop' whose component 'db' has a ready() that waits for ``answer``."""
    gate = Held()
    app = lifecycle.App("shop", **options)
    app.add(gate, name="db")
    it = launch(app, gate)
    it.started()
    return gate, it


@pytest.fixture
def server() -> Iterator[HealthServer]:
    """A HealthServer on a free loopback port for an app that is not running."""
    app = lifecycle.App("idle")
    app.add(Gated(), name="db")
    with HealthServer(app, request_timeout=0.5) as health:
        yield health


# -- probes through the app's life ---------------------------------------------


def test_probes_during_startup(launch):
    """While starting: alive, not ready, not started."""
    gate = Gated(hold_start=True)
    app = lifecycle.App("shop", health=0)
    app.add(gate, name="db")
    it = launch(app, gate)

    assert probes(it.port) == {"/livez": 200, "/readyz": 503, "/startupz": 503}
    assert status_of(it.port) == {
        "app": "shop",
        "state": "starting",
        "live": True,
        "ready": False,
        "started": False,
        "components": {"db": {"state": "starting", "failed": False}},
    }


def test_probes_while_running(launch):
    """Once every component runs, all three probes answer 200."""
    gate = Gated()
    app = lifecycle.App("shop", health=0)
    app.add(gate, name="db")
    app.add(Gated(), name="api", depends_on=["db"])
    it = launch(app, gate)
    it.started()

    assert probes(it.port) == {"/livez": 200, "/readyz": 200, "/startupz": 200}
    assert status_of(it.port) == {
        "app": "shop",
        "state": "running",
        "live": True,
        "ready": True,
        "started": True,
        "components": {
            "db": {"state": "running", "failed": False},
            "api": {"state": "running", "failed": False},
        },
    }


def test_readiness_drops_at_shutdown_request_and_health_answers_until_the_end(launch):
    """/readyz is 503 right after request_shutdown; probes answer all through the stop."""
    gate = Gated(hold_stop=True)
    app = lifecycle.App("shop", health=0)
    app.add(gate, name="db")
    it = launch(app, gate)
    it.started()
    port = it.port

    app.request_shutdown("deploy")
    assert get(port, "/readyz").status == 503
    assert get(port, "/livez").status == 200

    assert gate.stopping.wait(WAIT)
    assert probes(port) == {"/livez": 200, "/readyz": 503, "/startupz": 200}
    document = status_of(port)
    assert (document["state"], document["ready"]) == ("stopping", False)
    assert document["components"] == {"db": {"state": "stopping", "failed": False}}

    gate.release_stop.set()
    assert it.finish() == lifecycle.ExitCode.OK
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def test_a_failing_ready_makes_readyz_503(launch):
    """A component whose ready() raises or returns False makes /readyz 503."""
    verdict: list[Any] = [True]
    calls = []

    class Probed(Gated):
        def ready(self) -> bool:
            calls.append(1)
            answer = verdict[0]
            if isinstance(answer, Exception):
                raise answer
            return bool(answer)

    gate = Probed()
    app = lifecycle.App("shop", health=0)
    app.add(gate, name="db")
    it = launch(app, gate)
    it.started()

    assert get(it.port, "/readyz").status == 200
    verdict[0] = False
    assert get(it.port, "/readyz").status == 503
    verdict[0] = RuntimeError("database password is hunter2")
    before = len(calls)
    reply = get(it.port, "/readyz?verbose")
    assert reply.status == 503
    assert len(calls) == before + 1  # user code is called once per request
    assert b"hunter2" not in reply.raw
    assert get(it.port, "/livez").status == 200


def test_status_reduces_errors_to_a_flag(launch):
    """A failed component shows as failed: true, without its error message."""
    gate = Gated()
    crashed = threading.Event()
    app = lifecycle.App("shop", health=0)
    app.add(gate, name="db")

    @app.worker(critical=False)
    def mailer(token: lifecycle.CancelToken) -> None:
        crashed.set()
        raise RuntimeError("smtp password is hunter2")

    it = launch(app, gate)
    it.started()
    assert crashed.wait(WAIT)
    wait_until(lambda: app.components["mailer"].state is lifecycle.ComponentState.FAILED)

    reply = get(it.port, "/status")
    assert json.loads(reply.body)["components"] == {
        "db": {"state": "running", "failed": False},
        "mailer": {"state": "failed", "failed": True},
    }
    assert b"hunter2" not in reply.raw
    assert b"RuntimeError" not in reply.raw


def test_port_in_use_is_a_config_error_naming_the_port():
    """App(health=a taken port): start() raises ConfigError naming it; nothing starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gate = Gated()
        app = lifecycle.App("shop", health=port)
        app.add(gate, name="db")
        runner = lifecycle.ThreadedRunner(app, signals=None)
        with pytest.raises(lifecycle.ConfigError, match=f":{port} "):
            runner.start()
    assert runner.wait() == lifecycle.ExitCode.CONFIG
    assert not gate.starting.is_set()


# -- the server on its own ------------------------------------------------------


def test_port_zero_binds_an_ephemeral_port_and_close_is_idempotent():
    """Port 0 picks a free port; close() refuses new probes and may be repeated."""
    health = HealthServer(lifecycle.App("idle"))
    assert health.port == 0
    health.start()
    host, port = health.address
    assert host == "127.0.0.1"
    assert port == health.port > 0
    assert get(port, "/livez").status == 200
    health.close()
    health.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        health.start()


def test_idle_app_probes(server):
    """Before the app runs: alive, not ready, not started."""
    assert probes(server.port) == {"/livez": 200, "/readyz": 503, "/startupz": 503}
    assert get(server.port, "/").body == get(server.port, "/status").body


def test_head_has_headers_but_no_body(server):
    """HEAD answers the same status and Content-Length as GET, with no body."""
    got = get(server.port, "/status")
    head = get(server.port, "/status", method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == got.headers["content-length"]
    assert get(server.port, "/nowhere", method="HEAD").body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_405_with_allow(server, method):
    """Methods other than GET and HEAD get 405 with Allow: GET, HEAD."""
    reply = get(server.port, "/readyz", method=method)
    assert (reply.status, reply.headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize("path", ["/nowhere", "/readyz/x", "/livez.json", "//livez"])
def test_unknown_paths_are_404(server, path):
    """Paths other than the probes and the status are 404."""
    assert get(server.port, path).status == 404


def test_verbose_lists_checks(server):
    """?verbose gives one line per check and the verdict last."""
    reply = get(server.port, "/readyz?verbose")
    assert reply.status == 503
    assert reply.body.decode().splitlines() == [
        "[-]app new",
        "[+]shutdown not requested",
        "[-]component db new",
        "readyz check failed",
    ]
    assert get(server.port, "/livez?verbose=1").body.endswith(b"livez check passed\n")


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /livez HTTP/1.1\nHost: probe\n\n",  # bare LF line endings
        b"\r\nGET /livez HTTP/1.0\r\n\r\n",  # a leading empty line, HTTP/1.0, no headers
        b"GET http://probe/livez?x=1 HTTP/1.1\r\nHost: probe\r\n\r\n",  # absolute form
    ],
)
def test_lenient_forms_are_understood(server, request_):
    """Tolerated request forms are served normally."""
    assert exchange(server.port, request_).status == 200


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /livez\r\n\r\n", 400),
        (b"GET  /livez HTTP/1.1\r\n\r\n", 400),
        (b"GET livez HTTP/1.1\r\n\r\n", 400),
        (b"GET /liv\xc3\xa9z HTTP/1.1\r\n\r\n", 400),
        (b"\xff\xfe\x00\x01\x80garbage\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost: probe\r\n folded: header\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nBad\x00Name: x\r\n\r\n", 400),
        (b"GET /livez HTTP/2.0\r\n\r\n", 505),
        (b"GET /livez HTTP/1.1\r\nHost: probe\r\n", 400),  # cut short (client half-closes)
    ],
)
def test_malformed_requests_are_answered_and_serving_continues(server, request_, status):
    """Malformed requests get a bare 4xx/5xx, no internals, and the server keeps serving."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(request_)
        sock.shutdown(socket.SHUT_WR)
        reply = parse(read_all(sock))
    assert reply.status == status
    assert reply.body.startswith(f"{status} ".encode())
    assert len(reply.body) < 40
    assert b"Traceback" not in reply.raw
    assert get(server.port, "/livez").status == 200


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
        b"GET /livez HTTP/1.1\r\n" + b"X-Filler: " + b"b" * 16000 + b"\r\n\r\n",
        b"GET /livez HTTP/1.1\r\n" + b"X-Many: c\r\n" * 1000 + b"\r\n",
        b"\x00" * 20000,
    ],
)
def test_oversized_heads_are_431(server, request_):
    """A request line and headers over 8 KiB get 431, readable by the client."""
    reply = exchange(server.port, request_)
    assert reply.status == 431
    assert get(server.port, "/livez").status == 200


def test_slow_client_gets_408_and_does_not_block_others(server):
    """A client that never finishes its request gets 408 at the timeout; others are served."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as slow:
        slow.sendall(b"GET /livez HTTP/1.1\r\nHost: pro")
        assert get(server.port, "/readyz").status == 503  # served meanwhile
        began = time.monotonic()
        reply = parse(read_all(slow))
    assert reply.status == 408
    assert time.monotonic() - began < WAIT


class Broken(lifecycle.App):
    """An app whose readiness itself raises (not a component's ready(): that is "not ready")."""

    @property
    def ready(self) -> bool:
        raise RuntimeError("secret internals")


def test_an_exception_inside_is_a_bare_500_logged_once_per_interval(log_events):
    """A probe that raises is a bare 500, every time; serving goes on; one traceback logged."""
    with HealthServer(Broken("broken")) as health:
        replies = [get(health.port, "/readyz") for _ in range(10)]
        assert [reply.status for reply in replies] == [500] * 10
        assert not any(b"secret" in reply.raw or b"Traceback" in reply.raw for reply in replies)
        assert get(health.port, "/livez").status == 200
    errors = [e for e in log_events if e["log_level"] == "error"]
    assert [(e["event"], e["exc_info"]) for e in errors] == [
        ("health endpoint: reading the app raised; answering 500", True)
    ]


def test_close_ends_pending_requests_promptly():
    """close() does not wait for a slow client's request timeout."""
    health = HealthServer(lifecycle.App("idle"), request_timeout=WAIT)
    health.start()
    with socket.create_connection(("127.0.0.1", health.port), timeout=WAIT) as slow:
        slow.sendall(b"GET /livez HTTP/1.1\r\n")
        assert get(health.port, "/livez").status == 200  # the slow one is being handled
        began = time.monotonic()
        health.close()
        assert time.monotonic() - began < WAIT / 2
        assert read_all(slow) == b""


def test_invalid_arguments_are_rejected():
    """A bad port or request timeout is a ValueError naming it."""
    app = lifecycle.App("x")
    with pytest.raises(ValueError, match="port"):
        HealthServer(app, port=70000)
    with pytest.raises(ValueError, match="request_timeout"):
        HealthServer(app, request_timeout=0)
    with pytest.raises(ValueError, match="ready_timeout"):
        HealthServer(app, ready_timeout=float("nan"))
    with pytest.raises(ValueError, match="max_connections"):
        HealthServer(app, max_connections=0)


# -- probes that cannot be starved ---------------------------------------------


@pytest.mark.realtime
def test_liveness_stays_fast_with_200_slow_clients_held_open(crowd):
    """With 200 slow clients held open, 50 sequential /livez probes are each 200 within 100 ms.

    Real time: the promise is a latency. 100 trickle a byte of a head every 0.5 s,
    100 send nothing; the head timeout is long so that all 200 stay open throughout.
    """
    with HealthServer(lifecycle.App("busy"), request_timeout=WAIT) as health:
        crowd.open(health.port, 100, head=SLOW_HEAD, trickle=True)
        crowd.open(health.port, 100)
        wait_until(lambda: health._open() == 200)
        replies = [timed_get(health.port, "/livez") for _ in range(50)]
        assert [reply.status for reply, _ in replies] == [200] * 50
        slowest = max(took for _, took in replies)
        assert slowest < PROBE_BUDGET, f"slowest probe took {slowest * 1000:.1f} ms"
        assert [is_open(sock) for sock in crowd.sockets] == [True] * 200  # none dropped


def test_200_open_connections_are_held_by_a_constant_number_of_threads(crowd):
    """200 pending connections add two threads (the selector and the ready() worker), not 200."""
    before = threading.active_count()
    with HealthServer(lifecycle.App("busy"), request_timeout=WAIT) as health:
        crowd.open(health.port, 100, head=SLOW_HEAD)
        crowd.open(health.port, 100)
        wait_until(lambda: health._open() == 200)
        named = [t.name for t in threading.enumerate() if t.name.startswith("lifecycle-health")]
        assert sorted(named) == [
            f"lifecycle-health:{health.port}",
            f"lifecycle-health:{health.port}:ready",
        ]
        assert threading.active_count() - before <= 2


def test_at_the_cap_the_oldest_incomplete_connection_is_evicted(log_events):
    """At the cap a newcomer evicts the oldest incomplete connection (not an answered one)."""
    with HealthServer(lifecycle.App("capped"), request_timeout=WAIT, max_connections=3) as health:
        answered = socket.create_connection(("127.0.0.1", health.port), timeout=WAIT)
        answered.sendall(b"GET /livez HTTP/1.1\r\n\r\n")  # answered; stays open, unread
        wait_until(lambda: health._open() == 1)
        oldest, newer = (
            socket.create_connection(("127.0.0.1", health.port), timeout=WAIT) for _ in range(2)
        )
        with answered, oldest, newer:
            oldest.sendall(SLOW_HEAD)
            newer.sendall(SLOW_HEAD)
            wait_until(lambda: health._open() == 3)

            assert get(health.port, "/livez").status == 200  # a fourth connection, admitted

            assert until_closed(oldest) == b""  # evicted: closed without an answer
            wait_until(lambda: health._open() == 2)  # the answered one and the newer remain
            assert is_open(newer)
            assert parse(until_closed(answered)).status == 200
    warnings = [e["event"] for e in log_events if e["log_level"] == "warning"]
    assert warnings == [
        "health endpoint at its connection cap (3); evicting the oldest incomplete connection"
    ]


def test_a_flood_beyond_the_cap_cannot_keep_probes_out(crowd, log_events):
    """200 idle clients, cap 16: the 184 oldest are evicted, every probe is 200, one warning."""
    with HealthServer(lifecycle.App("flooded"), request_timeout=WAIT, max_connections=16) as health:
        crowd.open(health.port, 200)
        wait_until(lambda: not any(is_open(sock) for sock in crowd.sockets[:184]))
        assert [is_open(sock) for sock in crowd.sockets] == [False] * 184 + [True] * 16
        assert [get(health.port, "/livez").status for _ in range(20)] == [200] * 20
    warnings = [e for e in log_events if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == [
        "health endpoint at its connection cap (16); evicting the oldest incomplete connection"
    ]


@pytest.mark.realtime
def test_a_ready_that_blocks_does_not_freeze_the_endpoint(launch):
    """A ready() that does not return: /livez stays fast, /readyz is 503 at its 1 s bound
    without a second call while it is stuck, close() is quick; once it returns, a fresh call.

    Real time: the promise is a bound (1 s, the runner's default); margins are generous.
    """
    gate, it = run_held(launch, health=0)
    try:
        reply, took = timed_get(it.port, "/readyz", timeout=3.0)
        assert (reply.status, reply.body) == (503, b"ready() of 'shop' did not answer within 1s\n")
        assert 1.0 <= took < 2.0
        assert timed_get(it.port, "/livez")[1] < PROBE_BUDGET
        reply, took = timed_get(it.port, "/readyz?verbose")  # still stuck: answered at once
        assert reply.status == 503
        assert reply.body.decode().splitlines()[-2:] == [
            "[-]ready() of 'shop' did not answer within 1s",
            "readyz check failed",
        ]
        assert took < 0.5
        assert json.loads(timed_get(it.port, "/status")[0].body)["ready"] is False
        assert gate.calls == 1  # no second evaluation while the first is stuck

        gate.answer.set()
        wait_until(lambda: get(it.port, "/readyz").status == 200)
        assert gate.calls >= 2

        gate.answer.clear()
        assert timed_get(it.port, "/readyz", timeout=3.0)[0].status == 503  # stuck again
        health: HealthServer = it.runner._health
        began = time.monotonic()
        health.close()
        assert time.monotonic() - began < 0.2
    finally:
        gate.answer.set()


def test_requests_during_one_evaluation_share_it(launch):
    """Three /readyz that arrive while ready() runs get its one answer: one call, three 200s."""
    gate, it = run_held(launch)
    with HealthServer(it.runner.app, ready_timeout=WAIT) as health:
        first = send_probe(health.port, "/readyz")
        assert gate.entered.wait(WAIT)
        others = [send_probe(health.port, "/readyz"), send_probe(health.port, "/status")]
        waiting = health._phases[_Phase.WAITING]
        wait_until(lambda: len(waiting) == 3)
        gate.answer.set()
        replies = [parse(until_closed(sock)) for sock in [first, *others]]
        for sock in [first, *others]:
            sock.close()
    assert [reply.status for reply in replies] == [200, 200, 200]
    assert json.loads(replies[2].body)["ready"] is True
    assert gate.calls == 1


def test_a_shutdown_requested_during_the_evaluation_makes_it_503(launch):
    """ready() began before the shutdown request and then says True: the request is still 503."""
    gate, it = run_held(launch)
    app = it.runner.app
    with HealthServer(app, ready_timeout=WAIT) as health:
        with send_probe(health.port, "/readyz") as probe:
            assert gate.entered.wait(WAIT)
            app.request_shutdown("deploy")
            gate.answer.set()
            assert parse(until_closed(probe)).status == 503
        assert gate.calls == 1
        assert get(health.port, "/readyz").status == 503  # and ready() is not called again
        assert gate.calls == 1


@pytest.mark.realtime
def test_close_is_quick_with_200_connections_open(crowd):
    """close() with 200 pending connections takes < 200 ms (50 ms normally) and ends them all."""
    health = HealthServer(lifecycle.App("busy"), request_timeout=WAIT)
    health.start()
    try:
        crowd.open(health.port, 100, head=SLOW_HEAD)
        crowd.open(health.port, 100)
        wait_until(lambda: health._open() == 200)
        began = time.monotonic()
        health.close()
        took = time.monotonic() - began
    finally:
        health.close()
    assert took < 0.2, f"close() took {took * 1000:.1f} ms"
    assert [until_closed(sock) for sock in crowd.sockets] == [b""] * 200


def test_a_client_that_never_reads_is_dropped_and_blocks_nobody():
    """A client that never reads a large /status is dropped at the write timeout; others served."""
    app = lifecycle.App("big")
    for i in range(80):
        app.add(Gated(), name=f"component-{i}-" + "x" * 100_000)  # /status is about 8 MB
    # A head timeout beyond every wait: only the write timeout can drop the client.
    with HealthServer(app, request_timeout=3 * WAIT) as health:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with stalled:
            stalled.connect(("127.0.0.1", health.port))
            stalled.sendall(b"GET /status HTTP/1.1\r\n\r\n")
            wait_until(lambda: health._open() == 1)
            assert [get(health.port, "/livez").status for _ in range(5)] == [200] * 5
            full = get(health.port, "/status")  # a client that reads gets all of it
            wait_until(lambda: health._open() == 0)  # the stalled one is dropped
            assert len(until_closed(stalled)) < len(full.raw)  # cut, not waited for


def test_hostile_requests_log_no_warning_or_error(server, log_events):
    """Malformed, oversized, cut and reset requests log nothing at warning or above."""
    for request_ in [
        b"GARBAGE\r\n\r\n",
        b"GET /livez HTTP/2.0\r\n\r\n",
        b"\x00" * 20000,
        b"GET /livez HTTP/1.1\r\nBad\x00Name: x\r\n\r\n",
        b"GET /" + b"a" * 9000,
    ]:
        assert exchange(server.port, request_).status in {400, 431, 505}
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as reset:
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.sendall(b"GET /livez HTTP/1.1\r\n")
    assert get(server.port, "/livez").status == 200
    server.close()
    loud = [
        e
        for e in log_events
        if e["log_level"] in {"warning", "error", "critical"} or "exc_info" in e
    ]
    assert loud == []


def test_throttle_lets_one_through_per_interval_and_counts_the_rest(clock):
    """The log throttle passes the first event, then one per interval with the number held back."""
    throttle = _Throttle(10.0, clock=clock)
    assert [throttle(), throttle(), throttle()] == [0, None, None]
    clock.advance(9.9)
    assert throttle() is None
    clock.advance(0.1)
    assert [throttle(), throttle()] == [3, None]


def test_close_before_start_and_twice_is_harmless():
    """close() before start() is a no-op that makes the server final; a second close() too."""
    health = HealthServer(lifecycle.App("idle"))
    health.close()
    health.close()
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        health.start()


# -- the connection cap never costs an accepted probe its answer ----------------


class HeldApp(lifecycle.App):
    """An app whose readiness blocks until released (bounded), counting its evaluations."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.evaluations = 0
        self.entered = threading.Event()
        self.answer = threading.Event()

    @property
    def ready(self) -> bool:
        self.evaluations += 1
        self.entered.set()
        return self.answer.wait(WAIT)


def status_of_reply(raw: bytes) -> int | None:
    """The status of a complete response, or None when the server closed without one."""
    if raw == b"":
        return None
    reply = parse(raw)
    assert int(reply.headers["content-length"]) == len(reply.body)  # not cut
    return reply.status


def test_a_flood_of_complete_readyz_cannot_evict_an_accepted_probe():
    """One /readyz waits on a slow ready(); 300 complete /readyz follow (cap 256): it gets 200."""
    app = HeldApp("flooded")
    with HealthServer(app, ready_timeout=WAIT) as health:
        first = send_probe(health.port, "/readyz")
        assert app.entered.wait(WAIT)
        flood = [send_probe(health.port, "/readyz") for _ in range(300)]
        try:
            # Accepted after the flood, so every flood head has been read by now;
            # it needs no ready() and is answered while ready() is still blocked.
            assert get(health.port, "/livez").status == 200
            waited = len(health._phases[_Phase.WAITING])
            app.answer.set()
            assert status_of_reply(until_closed(first)) == 200
            assert waited == 128  # half the cap waits, no more
            replies = [until_closed(sock) for sock in flood]
        finally:
            first.close()
            for sock in flood:
                sock.close()
    statuses = [status_of_reply(raw) for raw in replies]
    assert set(statuses) <= {200, 503, None}  # None: evicted while its head was incomplete
    assert statuses.count(200) == 127  # the others that waited, with the first
    refused = [parse(raw) for raw in replies if raw.startswith(b"HTTP/1.1 503 ")]
    assert {(r.headers["retry-after"], r.body) for r in refused} == {
        ("1", b"503 service unavailable\n")
    }
    assert app.evaluations == 1


def test_at_the_cap_livez_evicts_an_answered_connection_never_a_waiting_one():
    """Cap 4: two /readyz wait, two more get 503 (held open); /livez is 200; all are answered."""
    app = HeldApp("capped")
    with HealthServer(app, ready_timeout=WAIT, max_connections=4) as health:
        waiting = health._phases[_Phase.WAITING]
        first = send_probe(health.port, "/readyz")
        assert app.entered.wait(WAIT)
        second = send_probe(health.port, "/readyz")
        wait_until(lambda: len(waiting) == 2)
        third, fourth = send_probe(health.port, "/readyz"), send_probe(health.port, "/status")
        with first, second, third, fourth:
            # Answered at once, then held open by the client: answered, not waiting.
            assert [status_of_reply(until_closed(sock)) for sock in (third, fourth)] == [503, 503]
            assert get(health.port, "/livez").status == 200  # evicts the third, at the cap
            assert len(waiting) == 2
            app.answer.set()
            assert [status_of_reply(until_closed(sock)) for sock in (first, second)] == [200, 200]
    assert app.evaluations == 1


def test_at_the_cap_with_every_connection_owed_an_answer_the_newcomer_is_refused(log_events):
    """Cap 1 held by a waiting /readyz: a newcomer gets 503 with Retry-After; the first, 200."""
    app = HeldApp("full")
    with (
        HealthServer(app, ready_timeout=WAIT, max_connections=1) as health,
        send_probe(health.port, "/readyz") as first,
    ):
        assert app.entered.wait(WAIT)
        refused = exchange(health.port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert (refused.status, refused.headers["retry-after"]) == (503, "1")
        assert refused.body == b"503 service unavailable\n"
        app.answer.set()
        assert status_of_reply(until_closed(first)) == 200
    assert app.evaluations == 1
    warnings = [e["event"] for e in log_events if e["log_level"] == "warning"]
    assert warnings == [
        "health endpoint at its connection cap (1) and every connection is owed an answer; "
        "refusing new ones with 503 (Retry-After: 1) unless they need no ready()"
    ]


# -- a ready() that raises what is not an Exception ------------------------------


class Scripted(lifecycle.App):
    """An app whose readiness returns ``outcome``, or raises it when it is an exception class."""

    outcome: bool | type[BaseException] = False

    @property
    def ready(self) -> bool:
        outcome = self.outcome
        if isinstance(outcome, type):
            raise outcome()
        return outcome


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt, asyncio.CancelledError])
def test_a_ready_raising_a_base_exception_is_503_and_readiness_recovers(log_events, error):
    """ready() raising SystemExit & co: 503 "not ready", logged once with its traceback; the
    thread that evaluates survives, so /readyz is 200 once ready() returns True again."""
    app = Scripted("scripted")
    with HealthServer(app, ready_timeout=WAIT / 2) as health:
        app.outcome = error
        replies = [get(health.port, "/readyz") for _ in range(3)]
        assert [(r.status, r.body) for r in replies] == [(503, b"not ready\n")] * 3
        app.outcome = True
        assert get(health.port, "/readyz").status == 200
    errors = [e for e in log_events if e["log_level"] == "error"]
    assert [(e["event"], e["exc_info"]) for e in errors] == [
        ("health endpoint: reading the app raised; answering 503", True)
    ]


# -- start() and close() from different threads -----------------------------------


Registration = Callable[[lifecycle.CancelToken, Callable[[], object]], Callable[[], bool]]
REGISTER = "lifecycle._serving.health.on_cancel_inline"  # where start() registers on the token


@attrs.define
class PausedStart:
    """start() paused where it registers on the shutdown token, recording each detach."""

    hook: Registration  # what start() calls instead of on_cancel_inline
    inside: threading.Event = attrs.Factory(threading.Event)  # start() is paused
    release: threading.Event = attrs.Factory(threading.Event)  # lets it go on
    detached: list[bool] = attrs.Factory(list)  # what each detach returned


@pytest.fixture
def paused_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[PausedStart]:
    """Pause start() where it registers on the shutdown token; record each detach's result."""

    def pausing(token: lifecycle.CancelToken, fn: Callable[[], object]) -> Callable[[], bool]:
        detach = on_cancel_inline(token, fn)
        it.inside.set()
        assert it.release.wait(WAIT)

        def recording() -> bool:
            it.detached.append(detach())
            return it.detached[-1]

        return recording

    it = PausedStart(pausing)
    monkeypatch.setattr(REGISTER, pausing)
    yield it
    it.release.set()


def call_recording(
    health: HealthServer,
    name: str,
    errors: dict[str, BaseException],
    together: threading.Barrier | None = None,
) -> None:
    """Call ``health.<name>()``, once ``together`` lets every caller go; record what it raises."""
    if together is not None:
        together.wait()
    try:
        getattr(health, name)()
    except BaseException as error:  # recorded for the assertions
        errors[name] = error


def health_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("lifecycle-health")]


def test_close_racing_start_waits_for_it_and_leaves_nothing_behind(paused_start):
    """close() from another thread in the middle of start(): no error, start() raises that it
    was closed, the registration is detached, the port refuses, no thread is left."""
    health = HealthServer(lifecycle.App("racing"))
    errors: dict[str, BaseException] = {}
    starter = threading.Thread(target=call_recording, args=(health, "start", errors))
    starter.start()
    assert paused_start.inside.wait(WAIT)
    port = health.port
    closer = threading.Thread(target=call_recording, args=(health, "close", errors))
    closer.start()
    wait_until(lambda: health._state.value == "closed")  # close() has begun
    paused_start.release.set()
    starter.join(WAIT)
    closer.join(WAIT)
    assert "close" not in errors
    assert isinstance(errors["start"], RuntimeError)
    assert "was closed while it started" in str(errors["start"])
    assert paused_start.detached == [True]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    wait_until(lambda: health_threads() == [])


def test_close_inside_start_on_the_same_thread_aborts_the_start(paused_start, monkeypatch):
    """close() on the thread that is inside start() (a signal handler would be) does not block:
    start() then aborts, raising that it was closed, and leaves nothing open."""
    health = HealthServer(lifecycle.App("signalled"))
    paused_start.release.set()  # the pause returns at once; close() is called inside it instead

    def closing(token: lifecycle.CancelToken, fn: Callable[[], object]) -> Callable[[], bool]:
        detach: Callable[[], bool] = paused_start.hook(token, fn)
        health.close()
        return detach

    monkeypatch.setattr(REGISTER, closing)
    with pytest.raises(RuntimeError, match="was closed while it started"):
        health.start()
    assert paused_start.detached == [True]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", health.port), timeout=WAIT).close()
    wait_until(lambda: health_threads() == [])


def call_together(health: HealthServer, *names: str) -> dict[str, BaseException]:
    """Call the methods ``names`` of ``health`` on threads released together; what each raised."""
    together = threading.Barrier(len(names), timeout=WAIT)
    errors: dict[str, BaseException] = {}
    threads = [
        threading.Thread(target=call_recording, args=(health, name, errors, together))
        for name in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    return errors


def test_start_and_close_racing_freely_always_end_closed():
    """start() and close() released together, 30 times: close() never raises, start() only
    that the server was closed, and each time the port refuses and no thread is left."""
    for _ in range(30):
        health = HealthServer(lifecycle.App("racing"))
        errors = call_together(health, "start", "close")
        assert "close" not in errors
        if "start" in errors:
            message = str(errors["start"])
            assert isinstance(errors["start"], RuntimeError), message
            assert "cannot be restarted" in message
        if health.port:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", health.port), timeout=WAIT).close()
        wait_until(lambda: health_threads() == [])
        assert health._state.value == "closed"


def test_with_raises_as_start_does_on_a_closed_or_serving_server():
    """`with` on a closed server, or on one already serving, raises start()'s error."""
    closed = HealthServer(lifecycle.App("idle"))
    closed.close()
    with pytest.raises(RuntimeError, match="cannot be restarted"), closed:
        pass
    serving = HealthServer(lifecycle.App("idle"))
    serving.start()
    try:
        with pytest.raises(RuntimeError, match="already serving"), serving:
            pass
        assert get(serving.port, "/livez").status == 200  # a failed `with` closes nothing
    finally:
        serving.close()


def test_a_start_that_cannot_bind_may_be_retried():
    """start() on a taken port raises OSError, leaves nothing open, and may be called again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        health = HealthServer(lifecycle.App("retry"), port=port)
        with pytest.raises(OSError, match="in use"):
            health.start()
        assert health_threads() == []
    health.start()  # the port is free now
    try:
        assert get(port, "/livez").status == 200
    finally:
        health.close()


# -- the head limit is exact ---------------------------------------------------------


def boundary_head(size: int, end: bytes = b"\r\n\r\n") -> bytes:
    """A GET /livez head of exactly ``size`` bytes, its terminating empty line included."""
    start = b"GET /livez HTTP/1.1\r\nX-Filler: "
    return start + b"f" * (size - len(start) - len(end)) + end


def buffered_or_answered(health: HealthServer, sock: socket.socket, n: int) -> bool:
    """Whether the server holds ``n`` bytes of an incomplete head, or has answered ``sock``."""
    if sum(len(conn.head) for conn in health._phases[_Phase.READING]) == n:
        return True
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(WAIT)


@pytest.mark.parametrize(
    ("size", "status"), [(8192, 200), (8193, 431), (8196, 431)], ids=["8192", "8193", "8196"]
)
@pytest.mark.parametrize("split", [0, 1, 3, 4, 4100], ids=lambda s: f"split-{s}")
def test_the_head_limit_counts_the_terminator_wherever_the_head_is_split(
    server, size, status, split
):
    """8192 bytes of head, its empty line included, are served; 8193 are 431 — in one
    piece or with the last ``split`` bytes sent after the server has read the rest."""
    request = boundary_head(size)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        if split:
            sock.sendall(request[:-split])
            wait_until(lambda: buffered_or_answered(server, sock, len(request) - split))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(request[-split:])
        else:
            sock.sendall(request)
        assert status_of_reply(until_closed(sock)) == status


def feed_in_pieces(*pieces: bytes) -> bytes | int | None:
    """What a `_Head` gives for a head arriving in ``pieces``: the head, 431, or None."""
    head = _Head()
    for piece in pieces:
        try:
            complete = head.feed(piece)
        except _RequestError as error:
            return error.status.value
        if complete is not None:
            return complete
    return None


TERMINATORS = [b"\r\n\r\n", b"\n\n", b"\r\n\n", b"\n\r\n"]


@pytest.mark.parametrize("end", TERMINATORS, ids=repr)
def test_the_head_limit_is_exact_at_every_split_point(end):
    """A head of 8192 bytes, its empty line included, is taken and one of 8193 is 431,
    whichever terminator it uses and wherever it is split in two."""
    fits, too_big = boundary_head(MAX_HEAD_BYTES, end), boundary_head(MAX_HEAD_BYTES + 1, end)
    taken = fits[: -len(end)]
    for split in range(len(fits) + 1):
        assert (split, feed_in_pieces(fits[:split], fits[split:])) == (split, taken)
    for split in range(len(too_big) + 1):
        assert (split, feed_in_pieces(too_big[:split], too_big[split:])) == (split, 431)


@given(
    size=st.integers(MAX_HEAD_BYTES - 8, MAX_HEAD_BYTES + 8),
    end=st.sampled_from(TERMINATORS),
    leading=st.sampled_from([b"", b"\r\n", b"\n\r\n"]),
    cuts=st.lists(st.integers(0, MAX_HEAD_BYTES + 12), max_size=6),
)
def test_a_head_gives_the_same_outcome_however_it_is_split(size, end, leading, cuts):
    """Any pieces give the outcome of one piece: taken iff it fits 8192 bytes (empty lines
    before the request line not counted)."""
    request = leading + boundary_head(size, end)
    bounds = sorted({0, len(request), *(min(cut, len(request)) for cut in cuts)})
    pieces = [request[a:b] for a, b in itertools.pairwise(bounds)]
    expected = request[len(leading) : -len(end)] if size <= MAX_HEAD_BYTES else 431
    assert feed_in_pieces(request) == expected
    assert feed_in_pieces(*pieces) == expected


# -- HealthAnswers: the answers, for any transport -------------------------------


@pytest.fixture
def answers_of() -> Iterator[Callable[..., HealthAnswers]]:
    """Started `HealthAnswers` for an app; closed after the test."""
    made: list[HealthAnswers] = []

    def make(app: Any, **options: Any) -> HealthAnswers:
        answers = HealthAnswers(app, **options)
        answers.start()
        made.append(answers)
        return answers

    yield make
    for answers in made:
        answers.close()


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_answers_are_the_health_servers_own_for_every_path(launch, answers_of, method):
    """Every path (and an unknown one), plain and verbose: the status, headers and body that
    the HealthServer sends, which adds only Content-Length and Connection."""
    gate, it = run_held(launch, health=0)
    gate.answer.set()
    answers = answers_of(it.runner.app)
    for path in [*PATHS, "/nope"]:
        for query in ("", "verbose"):
            target = f"{path}?{query}" if query else path
            wire = get(it.port, target, method)
            status, headers, body = answers.answer(method, path, query)
            assert wire.status == status, target
            if method != "HEAD":
                assert wire.body == body, target
            assert int(wire.headers["content-length"]) == len(body), target
            sent = {
                k: v for k, v in wire.headers.items() if k not in ("content-length", "connection")
            }
            assert sent == {name.lower(): value for name, value in headers}, target


def test_answers_wait_for_one_shared_evaluation_across_threads(answers_of):
    """Three threads ask /readyz while ready() runs: one evaluation, three 200s once it ends."""
    app = HeldApp("shop")
    answers = answers_of(app, ready_timeout=WAIT)
    got: list[Answer] = []
    askers = [
        threading.Thread(target=lambda: got.append(answers.answer("GET", "/readyz")))
        for _ in range(3)
    ]
    askers[0].start()
    assert app.entered.wait(WAIT)
    for asker in askers[1:]:
        asker.start()
    wait_until(lambda: len(answers._waiters) == 3)  # all three wait for the one evaluation
    app.answer.set()
    for asker in askers:
        asker.join(WAIT)
    assert [(a.status, a.body) for a in got] == [(200, b"ok\n")] * 3
    assert app.evaluations == 1


def test_a_ticket_ends_with_its_evaluation_or_when_overdue(answers_of):
    """begin() gives a ticket while ready() runs; finish() is None until it is overdue, then
    the overrun answer; once the evaluation ends, its verdict."""
    app = HeldApp("shop")
    answers = answers_of(app, ready_timeout=5.0)
    ticket = answers.begin("GET", "/readyz", "", now=100.0)
    assert isinstance(ticket, Ticket)
    assert ticket.overdue == 105.0
    assert app.entered.wait(WAIT)
    assert answers.finish(ticket, now=104.9) is None
    overdue = answers.finish(ticket, now=105.0)
    assert overdue is not None
    assert (overdue.status, overdue.body) == (503, b"ready() of 'shop' did not answer within 5s\n")
    assert ("Retry-After", "1") not in overdue.headers  # a probe's 503, not a refusal
    app.answer.set()
    wait_until(lambda: answers.finish(ticket, now=100.0) is not None)
    done = answers.finish(ticket, now=100.0)
    assert done is not None
    assert done.status == 200


def test_admit_refuses_only_what_would_wait(answers_of):
    """admit() is asked only for an answer that would wait; False is a 503 with Retry-After."""
    app = HeldApp("shop")
    answers = answers_of(app)
    asked: list[str] = []

    def refuse() -> bool:
        asked.append("asked")
        return False

    assert answers.begin("GET", "/livez", admit=refuse).status == 200
    refused = answers.begin("GET", "/readyz", admit=refuse)
    assert isinstance(refused, Answer)
    assert (refused.status, ("Retry-After", "1") in refused.headers) == (503, True)
    assert asked == ["asked"]
    assert app.evaluations == 0


def test_answers_need_a_start_for_readiness_and_say_not_ready_after_close():
    """/livez needs no start; /readyz before start() raises saying so; after close(), 503 at
    once without calling ready()."""
    app = HeldApp("shop")
    answers = HealthAnswers(app)
    assert answers.answer("GET", "/livez").status == 200
    with pytest.raises(RuntimeError, match=r"call start\(\)"):
        answers.answer("GET", "/readyz")
    answers.start()
    answers.close()
    assert answers.answer("GET", "/readyz")[::2] == (503, b"not ready\n")
    assert app.evaluations == 0


@pytest.mark.realtime
def test_answer_async_bounds_a_blocking_ready_and_never_blocks_the_loop(answers_of):
    """A ready() that blocks: answer_async says 503 at the 0.2 s bound, the loop runs meanwhile,
    and concurrent requests share the one stuck evaluation."""
    app = HeldApp("shop")
    answers = answers_of(app, ready_timeout=0.2)

    async def main() -> tuple[list[Answer], int, float]:
        ticks = 0
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        began = time.monotonic()
        got = await asyncio.gather(*(answers.answer_async("GET", "/readyz") for _ in range(3)))
        took = time.monotonic() - began
        stop.set()
        await ticker
        return list(got), ticks, took

    try:
        got, ticks, took = asyncio.run(main())
    finally:
        app.answer.set()
    assert [(a.status, a.body) for a in got] == [
        (503, b"ready() of 'shop' did not answer within 0.2s\n")
    ] * 3
    assert 0.2 <= took < 1.0
    assert ticks >= 5  # the loop kept running while the evaluation was stuck
    assert app.evaluations == 1


def test_a_ready_that_raises_is_500_as_on_the_health_server(answers_of):
    """ready() raising: 500, the HealthServer's answer, without internals."""

    class Failing(lifecycle.App):
        @property
        def ready(self) -> bool:
            raise RuntimeError("secret detail")

    answers = answers_of(Failing("shop"))
    status, _, body = answers.answer("GET", "/readyz")
    assert (status, body) == (500, b"500 internal server error\n")
