"""The adaptive drain: `Drain`, the scheduler deciding its end, the runners feeding it arrivals."""

from __future__ import annotations

import doctest
import http.client
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lifecycle
from lifecycle import AppState, ConfigError, ExitCode
from lifecycle._core.drain import Drain, drain_bounds
from lifecycle._core.graph import analyze
from lifecycle._core.scheduler import NodeSpec, Scheduler, StartComponent, StopComponent
from lifecycle._serving.inflight import InFlight

from .drive import BOUND, Drive

# -- Drain itself ---------------------------------------------------------------


def test_drain_keeps_its_fields_as_floats():
    """Drain(min, max, quiet) holds the three numbers as floats."""
    drain = Drain(1.5, 10, 0.5)
    assert (drain.min, drain.max, drain.quiet) == (1.5, 10.0, 0.5)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ((-1, 2, 1), "min must be >= 0"),
        ((3, 2, 1), "max (2.0) must be >= min (3.0)"),
        ((0, 1, 0), "quiet must be > 0"),
        ((0, 1, -1), "quiet must be > 0"),
        ((0, math.inf, 1), "max must be a finite"),
        ((math.nan, 1, 1), "min must be a finite"),
        ((0, 1, math.inf), "quiet must be a finite"),
        (("1", 2, 1), "min must be a number"),
        ((True, 2, 1), "min must be a number"),
    ],
)
def test_drain_refuses_bad_numbers_naming_the_field(args, names):
    """An invalid Drain raises ConfigError (a ValueError) naming the field and an example."""
    with pytest.raises(ConfigError) as caught:
        Drain(*args)
    assert names in str(caught.value)
    assert "Drain(" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_drain_end_examples():
    """end = max(began + min, last + quiet), capped at began + max and the deadline."""
    drain = Drain(min=1.5, max=10, quiet=0.5)
    assert drain.end(100.0, None) == 101.5
    assert drain.end(100.0, 99.0) == 101.5  # an arrival before the drain: min still holds
    assert drain.end(100.0, 101.2) == 101.7
    assert drain.end(100.0, 109.9) == 110.0
    assert drain.end(100.0, 109.9, deadline=105.0) == 105.0
    assert drain.end(100.0, None, deadline=100.5) == 100.5


def test_drain_bounds_of_a_number_and_of_a_drain():
    """drain_bounds gives (min, max): a number is both."""
    assert drain_bounds(5) == (5.0, 5.0)
    assert drain_bounds(Drain(1, 4, 0.5)) == (1.0, 4.0)


def test_app_keeps_the_drain_it_was_given_and_plans_for_its_max():
    """App.drain_delay holds the Drain as given; the plan's worst case counts max."""
    drain = Drain(min=1, max=7, quiet=0.5)
    app = lifecycle.App(drain_delay=drain, shutdown_timeout=30)
    assert app.drain_delay is drain
    assert app.plan().worst_case == 7.0


def test_app_still_refuses_a_bad_fixed_drain_delay():
    """A drain_delay that is neither a number nor a Drain is refused as before."""
    with pytest.raises(ConfigError, match="drain_delay"):
        lifecycle.App(drain_delay="5")  # type: ignore[arg-type]


def test_app_last_arrival_is_the_latest_of_its_trackers():
    """app.last_arrival() reads the trackers of the servers it holds (and owns ones)."""
    app = lifecycle.App()
    a = app.add(lifecycle.HTTPServer(BaseHTTPRequestHandler, ("127.0.0.1", 0)), name="a")
    b = app.add(lifecycle.HTTPServer(BaseHTTPRequestHandler, ("127.0.0.1", 0)), name="b")
    assert app.last_arrival() is None
    a.tracker.last_arrival = 5.0
    b.tracker.last_arrival = 7.0
    assert app.last_arrival() == 7.0


def test_inflight_records_the_last_arrival_from_its_own_clock_read():
    """enter, open_slot and begin store the clock's time in last_arrival."""
    times = iter([1.0, 2.0, 3.0])
    tracker = InFlight("t", clock=lambda: next(times))
    assert tracker.last_arrival is None
    arrivals: list[float | None] = []
    ticket = tracker.enter("a")
    assert ticket is not None
    arrivals.append(tracker.last_arrival)
    slot = tracker.open_slot()
    assert slot is not None
    arrivals.append(tracker.last_arrival)
    assert tracker.begin(slot)
    arrivals.append(tracker.last_arrival)
    assert arrivals == [1.0, 2.0, 3.0]
    assert (ticket.began, slot.began) == (1.0, 3.0)


# -- the scheduler, on a fake clock ----------------------------------------------------


def running(drain: Drain | float, shutdown_timeout: float = 30.0) -> Scheduler:
    """A scheduler of one component "w", started at t=0 (app RUNNING)."""
    sched = Scheduler(
        analyze({"w": ()}),
        [NodeSpec("w", start_timeout=5.0, stop_timeout=10.0)],
        shutdown_timeout=shutdown_timeout,
        drain_delay=drain,
    )
    for action in sched.begin(0.0):
        assert isinstance(action, StartComponent)
        sched.start_finished(action.name, 0.0)
    assert sched.state is AppState.RUNNING
    return sched


def test_quiet_drain_ends_at_min():
    """Nothing arrives: the drain ends at min."""
    sched = running(Drain(min=2, max=10, quiet=0.5))
    assert sched.request_shutdown(100.0) == []
    assert sched.next_deadline() == 102.0
    assert sched.tick(101.9) == []
    assert sched.wants_arrivals
    actions = sched.tick(102.0)
    assert [type(a) for a in actions] == [StopComponent]
    assert sched.state is AppState.STOPPING
    assert not sched.wants_arrivals


def test_an_arrival_moves_the_drain_end_to_quiet_after_it():
    """An arrival fed before the timer fires re-arms it at arrival + quiet."""
    sched = running(Drain(min=2, max=10, quiet=0.5))
    sched.request_shutdown(100.0)
    sched.arrived(101.8)
    assert sched.tick(102.0) == []
    assert sched.next_deadline() == pytest.approx(102.3)
    sched.arrived(None)  # nothing new
    sched.arrived(101.0)  # an older one: changes nothing
    assert [type(a) for a in sched.tick(102.3)] == [StopComponent]


def test_steady_traffic_holds_the_drain_to_max():
    """Arrivals every 0.1 s: the drain lasts exactly max."""
    sched = running(Drain(min=1, max=4, quiet=0.5))
    sched.request_shutdown(0.0)
    t = 0.0
    while sched.state is AppState.DRAINING:
        t = round(t + 0.1, 6)
        sched.arrived(t)
        sched.tick(t)
    assert t == pytest.approx(4.0)


def test_the_shutdown_deadline_bounds_an_adaptive_drain():
    """A shutdown_timeout shorter than max ends the drain at the deadline, not later."""
    sched = running(Drain(min=1, max=30, quiet=5), shutdown_timeout=3.0)
    sched.request_shutdown(0.0)
    sched.arrived(2.9)
    assert sched.next_deadline() == 1.0
    sched.tick(1.0)
    assert sched.next_deadline() == 3.0
    sched.tick(3.0)
    assert sched.state is not AppState.DRAINING


def test_arrivals_before_the_shutdown_count():
    """An arrival just before the request holds the drain to quiet after it (past min)."""
    sched = running(Drain(min=0.5, max=10, quiet=2))
    sched.arrived(99.5)
    sched.request_shutdown(100.0)
    assert sched.next_deadline() == 101.5


def test_a_fixed_drain_delay_ignores_arrivals():
    """A number as drain_delay: arrivals change nothing, and are not asked for."""
    sched = running(3.0)
    sched.request_shutdown(0.0)
    assert not sched.wants_arrivals
    sched.arrived(2.9)
    assert [type(a) for a in sched.tick(3.0)] == [StopComponent]


@settings(max_examples=300, deadline=None)
@given(
    low=st.floats(0, 5),
    spread=st.floats(0, 10),
    quiet=st.floats(0.01, 3),
    timeout=st.floats(0.1, 20),
    gaps=st.lists(st.floats(0.001, 4), max_size=30),
    polls=st.floats(0.01, 1),
)
def test_property_the_drain_ends_within_its_bounds(low, spread, quiet, timeout, gaps, polls):
    """Never before min, never after max or the deadline, within quiet of the last arrival.

    The runner is modelled as it is: it wakes at the scheduler's next deadline
    or at some other event (every ``polls`` seconds here), and feeds the latest
    arrival before each tick.
    """
    drain = Drain(min=low, max=low + spread, quiet=quiet)
    sched = running(drain, shutdown_timeout=timeout)
    arrivals, t = [], 0.0
    for gap in gaps:
        t += gap
        arrivals.append(t)
    sched.request_shutdown(0.0)
    now, fed, ended = 0.0, None, None
    for _ in range(100_000):
        due = sched.next_deadline()
        now = min(now + polls, due) if due is not None else now + polls
        seen = [a for a in arrivals if a <= now]
        fed = seen[-1] if seen else None
        if sched.wants_arrivals:
            sched.arrived(fed)
        sched.tick(now)
        if sched.state is not AppState.DRAINING:
            ended = now
            break
    assert ended is not None
    cap = min(drain.max, timeout)
    assert ended >= min(drain.min, timeout) - 1e-9
    assert ended <= cap + 1e-9
    if fed is not None:
        # Quiet for `quiet` after the last arrival it saw ends it (unless min holds it).
        assert ended <= max(drain.min, fed + quiet) + 1e-9
        # ... and it did not end while an arrival was less than quiet ago.
        assert ended >= min(fed + quiet, cap) - 1e-9
    if arrivals and arrivals[-1] < ended:
        assert ended <= max(drain.min, arrivals[-1] + quiet) + polls + 1e-9


# -- both runners, a real HTTPServer, real requests ---------------------------------------


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Traffic:
    """Requests one after the other on fresh connections until told to stop or refused."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed = 0
        self.done = threading.Event()
        self.first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test:traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        end = time.monotonic() + 60
        for _ in range(100_000):
            if self.done.is_set() or time.monotonic() > end:
                return
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                self.ok += 1
                self.first.set()
            except OSError:
                self.failed += 1
                if self.failed > 3:
                    return  # the listener closed: the drain is over
            self.done.wait(0.05)

    def stop(self) -> None:
        self.done.set()
        self._thread.join(BOUND)


def _start(drive: Drive, drain: Drain, shutdown_timeout: float = 60.0) -> tuple[lifecycle.App, int]:
    app = lifecycle.App(drain_delay=drain, shutdown_timeout=shutdown_timeout, stop_timeout=5)
    server = app.add(lifecycle.HTTPServer(_Hello, ("127.0.0.1", 0)), name="web")
    drive.start(app)
    return app, server.port


@pytest.mark.realtime
def test_runner_ends_a_quiet_drain_at_min(drive):
    """No request during the drain: the stop begins at min, long before max."""
    app, _ = _start(drive, Drain(min=1.0, max=20.0, quiet=0.5))
    began = time.monotonic()
    assert drive.stop(timeout=30) == ExitCode.OK
    stop_began = app.components["web"].stop_began
    assert stop_began is not None
    assert stop_began - began >= 1.0
    assert stop_began - began < 15.0


@pytest.mark.realtime
def test_runner_holds_the_drain_to_max_while_requests_keep_arriving(drive):
    """Requests every ~50 ms (quiet 3 s): the stop begins no earlier than max."""
    app, port = _start(drive, Drain(min=0.5, max=4.0, quiet=3.0))
    traffic = _Traffic(port)
    try:
        assert traffic.first.wait(BOUND)
        began = time.monotonic()
        assert drive.stop(timeout=40) == ExitCode.OK
    finally:
        traffic.stop()
    stop_began = app.components["web"].stop_began
    assert stop_began is not None
    assert stop_began - began >= 4.0
    assert stop_began - began < 20.0
    assert app.last_arrival() is not None
    assert traffic.ok > 10


@pytest.mark.realtime
def test_runner_ends_the_drain_by_the_shutdown_deadline(drive):
    """shutdown_timeout 3 s, max 30 s, steady traffic: the deadline ends the drain, not max."""
    app = lifecycle.App(
        drain_delay=Drain(min=0.5, max=30.0, quiet=5.0), shutdown_timeout=3.0, stop_timeout=5
    )
    server = app.add(lifecycle.HTTPServer(_Hello, ("127.0.0.1", 0)), name="web")
    drive.start(app)
    traffic = _Traffic(server.port)
    try:
        assert traffic.first.wait(BOUND)
        began = time.monotonic()
        code = drive.stop(timeout=40)
    finally:
        traffic.stop()
        # The deadline abandoned the server without a stop: close it, so no thread outlives it.
        server.stop(lifecycle.CancelSource(timeout=BOUND).token)
    elapsed = time.monotonic() - began
    assert 2.5 <= elapsed < 20.0
    assert code == ExitCode.TIMEOUT  # the drain used the whole budget: nothing was stopped
    assert app.state is AppState.FAILED


def test_middlewares_bound_to_an_app_are_watched():
    """A WSGI or ASGI middleware given ``app=`` registers what records its arrivals."""
    app = lifecycle.App()
    wsgi = lifecycle.WSGIMiddleware(lambda environ, start_response: [b""], app)
    asgi = lifecycle.ASGIMiddleware(lambda scope, receive, send: None, app)  # type: ignore[arg-type,return-value]
    assert wsgi.tracker in app.arrival_sources
    assert asgi in app.arrival_sources
    asgi.last_arrival = 3.0
    assert app.last_arrival() == 3.0


def test_watch_arrivals_is_idempotent():
    """Watching the same source twice reads it once."""
    app = lifecycle.App()
    tracker = InFlight("jobs")
    app.watch_arrivals(tracker)
    app.watch_arrivals(tracker)
    assert app.arrival_sources == (tracker,)


class _Idle:
    """A component with a run() that returns once cancelled: no arrivals watched."""

    def run(self, token: lifecycle.CancelToken) -> None:
        token.wait(BOUND * 3)


@pytest.mark.realtime
def test_runner_drains_to_max_when_it_watches_nothing(drive):
    """A Drain with no server to read arrivals from cannot tell traffic stopped: max."""
    app = lifecycle.App(drain_delay=Drain(min=0.2, max=2.0, quiet=0.1), shutdown_timeout=30)
    app.add(_Idle(), name="idle")
    drive.start(app)
    began = time.monotonic()
    assert drive.stop(timeout=30) == ExitCode.OK
    stop_began = app.components["idle"].stop_began
    assert stop_began is not None
    assert stop_began - began >= 2.0


def test_the_uvicorn_and_aiohttp_integrations_are_watched():
    """lifecycle.uvicorn.Server (its ASGI middleware) and lifecycle.aiohttp.Server feed arrivals."""
    pytest.importorskip("uvicorn")
    web = pytest.importorskip("aiohttp.web")
    lc_aiohttp = pytest.importorskip("lifecycle.aiohttp")
    lc_uvicorn = pytest.importorskip("lifecycle.uvicorn")

    async def asgi(scope: object, receive: object, send: object) -> None:
        return None

    app = lifecycle.App()
    uv = app.add(lc_uvicorn.Server(asgi, "127.0.0.1", 0), name="uv")
    aio = app.add(lc_aiohttp.Server(web.Application(), "127.0.0.1", 0), name="aio")
    assert uv.middleware in app.arrival_sources
    assert aio in app.arrival_sources
    aio.last_arrival = 4.0
    assert app.last_arrival() == 4.0


@pytest.mark.realtime
@pytest.mark.parametrize("kind", ["uvicorn", "aiohttp", "wsgi"])
def test_a_real_request_records_an_arrival(drive, kind):
    """One real request through each integration moves app.last_arrival()."""
    app = lifecycle.App(shutdown_timeout=20)
    if kind == "uvicorn":
        pytest.importorskip("uvicorn")
        lc_uvicorn = pytest.importorskip("lifecycle.uvicorn")

        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        server: Any = app.add(lc_uvicorn.Server(asgi, "127.0.0.1", 0), name="web")
    elif kind == "aiohttp":
        web = pytest.importorskip("aiohttp.web")
        lc_aiohttp = pytest.importorskip("lifecycle.aiohttp")

        async def hello(request: Any) -> Any:
            return web.Response(text="ok")

        application = web.Application()
        application.router.add_get("/", hello)
        server = app.add(lc_aiohttp.Server(application, "127.0.0.1", 0), name="web")
    else:

        def wsgi(environ: Any, start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Length", "2")])
            return [b"ok"]

        server = app.add(lifecycle.WSGIServer(wsgi, ("127.0.0.1", 0)), name="web")
    drive.start(app)
    assert app.last_arrival() is None
    before = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"ok"
    conn.close()
    at = app.last_arrival()
    assert at is not None
    assert at >= before
    assert drive.stop(timeout=30) == ExitCode.OK


def _ok_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


@pytest.mark.parametrize("kind", ["http", "wsgi"])
def test_every_request_on_a_kept_alive_connection_is_an_arrival(kind):
    """Not only the connection: each request it carries moves the tracker's last arrival.

    Keep-alive clients send their requests on connections opened long
    before; an adaptive drain that saw only new connections would end while
    they still send.
    """
    if kind == "http":
        server: Any = lifecycle.HTTPServer(_Hello, ("127.0.0.1", 0))
    else:
        server = lifecycle.WSGIServer(_ok_wsgi, ("127.0.0.1", 0))
    now = [100.0]
    server.tracker.clock = lambda: now[0]
    server.start(lifecycle.CancelSource().token)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"ok"
        assert server.tracker.last_arrival == 100.0
        now[0] = 107.0
        conn.request("GET", "/")  # the same connection
        assert conn.getresponse().read() == b"ok"
        assert server.tracker.last_arrival == 107.0
    finally:
        conn.close()
        server.stop(lifecycle.CancelSource(timeout=BOUND).token)


def test_every_request_through_the_wsgi_middleware_is_an_arrival():
    """Its lanes are pooled: the request, not the lane, is the arrival."""
    middleware = lifecycle.WSGIMiddleware(_ok_wsgi)
    now = [10.0]
    middleware.tracker.clock = lambda: now[0]

    def call() -> None:
        start_response: Any = lambda *a: None  # noqa: E731
        body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response)
        assert list(body) == [b"ok"]

    call()
    assert middleware.tracker.last_arrival == 10.0
    now[0] = 12.5
    call()  # served in the lane the first request freed
    assert middleware.tracker.last_arrival == 12.5


def test_the_docstring_examples_run() -> None:
    """The examples in `Drain`'s docstrings hold."""
    failed, tried = doctest.testmod(sys.modules[Drain.__module__], raise_on_error=False)
    assert tried > 0
    assert failed == 0
