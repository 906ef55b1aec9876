"""The health endpoint: probes through an app's life, the JSON status, hostile clients.

Real sockets on 127.0.0.1; every wait is on an event or a socket, with a bound.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

import lifecycle
from lifecycle._serving.health import MAX_CONNECTIONS, HealthServer

WAIT = 10.0  # upper bound on any wait; the happy path takes milliseconds


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


def test_an_exception_inside_is_a_bare_500(server):
    """A probe that raises is answered 500 without internals; serving continues."""

    class Broken(lifecycle.App):
        @property
        def ready(self) -> bool:
            raise RuntimeError("secret internals")

    with HealthServer(Broken("broken")) as health:
        reply = get(health.port, "/readyz")
        assert reply.status == 500
        assert b"secret" not in reply.raw
        assert b"Traceback" not in reply.raw
        assert get(health.port, "/livez").status == 200


def test_connections_over_the_limit_wait_for_a_free_slot():
    """Beyond MAX_CONNECTIONS at once, a probe waits in the backlog until one ends."""
    with HealthServer(lifecycle.App("idle"), request_timeout=WAIT) as health:
        idle = [
            socket.create_connection(("127.0.0.1", health.port), timeout=WAIT)
            for _ in range(MAX_CONNECTIONS)
        ]
        try:
            with socket.create_connection(("127.0.0.1", health.port), timeout=0.2) as probe:
                probe.sendall(b"GET /livez HTTP/1.1\r\n\r\n")
                with pytest.raises(TimeoutError):
                    probe.recv(1)  # not served while every slot is taken
                probe.settimeout(WAIT)
                idle.pop().close()
                assert parse(read_all(probe)).status == 200
        finally:
            for sock in idle:
                sock.close()


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
