"""Logging: structlog when the application configured it, stdlib logging otherwise; never fatal.

structlog's configuration is reset before and after every test (its capture
is not thread-safe: it is read once the runner's threads are done).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

import lifecycle
from lifecycle import App, AsyncioRunner, CancelToken, ExitCode, ThreadedRunner
from lifecycle._core import log as lifecycle_log
from lifecycle._core.log import get_logger, render

RUNNERS = ["thread", "asyncio"]
RUNTIME = Path(lifecycle.__file__).parent / "_runtime"


@pytest.fixture(autouse=True)
def unconfigured_structlog() -> Iterator[None]:
    """Every test begins and ends with structlog as an application finds it: unconfigured."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def first_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The once-per-process report of a failing log call is fresh for this test."""
    monkeypatch.setattr(lifecycle_log._Failures, "reported", False)


class Part:
    """Records its calls; its stop may raise."""

    def __init__(self, stop_error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.stop_error = stop_error

    def start(self, token: CancelToken) -> None:
        self.calls.append("start")

    def stop(self, token: CancelToken) -> None:
        self.calls.append("stop")
        if self.stop_error is not None:
            raise self.stop_error


class APart:
    """The async twin of `Part`."""

    def __init__(self, stop_error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.stop_error = stop_error

    async def start(self, token: CancelToken) -> None:
        self.calls.append("start")

    async def stop(self, token: CancelToken) -> None:
        self.calls.append("stop")
        if self.stop_error is not None:
            raise self.stop_error


def run_once(kind: str, app: App) -> int:
    """Start the app with the given runner (no signals), stop it, return the exit code."""
    if kind == "thread":
        runner = ThreadedRunner(app, signals=None)
        runner.start()
        return runner.stop("test")

    async def main() -> int:
        runner = AsyncioRunner(app, signals=None)
        await runner.start()
        return await runner.stop("test")

    return lifecycle.asyncio_run(main())


def run_to_end(kind: str, app: App) -> int | None:
    """Start the app with the given runner (no signals) and wait until it ends by itself."""
    if kind == "thread":
        runner = ThreadedRunner(app, signals=None)
        runner.start()
        return runner.wait()

    async def main() -> int | None:
        async with AsyncioRunner(app, signals=None) as arunner:
            return await arunner.wait()

    return lifecycle.asyncio_run(main())


def one_app(kind: str, stop_error: BaseException | None = None) -> tuple[App, Part | APart]:
    app = App("shop")
    part = app.add((Part if kind == "thread" else APart)(stop_error), name="db")
    return app, part


def lifecycle_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lifecycle"]


def named(records: list[logging.LogRecord], event: str) -> list[logging.LogRecord]:
    """The records of ``event`` (``record.event``)."""
    return [r for r in records if r.__dict__.get("event") == event]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event's fields (``record.fields``)."""
    value = record.__dict__["fields"]
    assert isinstance(value, dict)
    return value


# -- stdlib logging when structlog is not configured -----------------------------------------


@pytest.mark.parametrize("kind", RUNNERS)
def test_unconfigured_structlog_sends_every_event_to_stdlib_logging(kind, caplog):
    """structlog unconfigured: each transition and the summary are records of logger lifecycle."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    app, _ = one_app(kind)
    assert run_once(kind, app) == ExitCode.OK
    records = lifecycle_records(caplog)
    moves = [
        (fields(r)["component"], fields(r)["from_state"], fields(r)["to_state"])
        for r in named(records, "transition")
    ]
    assert moves == [
        ("db", "NEW", "STARTING"),
        ("db", "STARTING", "RUNNING"),
        ("db", "RUNNING", "STOPPING"),
        ("db", "STOPPING", "STOPPED"),
    ]
    (summary,) = named(records, "shutdown summary")
    assert summary.levelno == logging.INFO
    assert fields(summary)["components"]["db"]["state"] == "stopped"
    stopping = next(r for r in named(records, "transition") if fields(r)["to_state"] == "STOPPING")
    assert stopping.levelno == logging.DEBUG
    assert stopping.__dict__["component"] == "db"  # a field is an attribute of the record too
    duration = fields(stopping)["duration"]
    assert isinstance(duration, float)
    assert stopping.getMessage() == (
        f"transition component=db from_state=RUNNING to_state=STOPPING duration={duration}"
    )
    # The record names the library's line that logged, not the logger's own module.
    assert Path(stopping.pathname).parent == RUNTIME


def test_stdlib_levels_and_propagation_are_the_applications(caplog):
    """Logger lifecycle at WARNING: no INFO record reaches the handlers; WARNING ones do."""
    caplog.set_level(logging.WARNING, logger="lifecycle")
    app, _ = one_app("thread")
    runner = ThreadedRunner(app, signals=(signal.SIGTERM,))  # off the main thread: a warning
    done: list[int] = []

    def start_and_stop() -> None:
        runner.start()
        done.append(runner.stop())

    worker = threading.Thread(target=start_and_stop)
    worker.start()
    worker.join(10)
    assert done == [ExitCode.OK]
    records = lifecycle_records(caplog)
    assert [r.__dict__["event"] for r in records] == ["signal handlers not installed"]
    assert records[0].levelno == logging.WARNING


@pytest.mark.parametrize("kind", RUNNERS)
def test_exc_info_is_the_records(kind, caplog):
    """A stop that raises is an ERROR record carrying the exception itself."""
    caplog.set_level(logging.INFO, logger="lifecycle")
    error = RuntimeError("pool close failed")
    app, _ = one_app(kind, stop_error=error)
    assert run_once(kind, app) == ExitCode.FAILED
    (raised,) = named(lifecycle_records(caplog), "stop() raised")
    assert raised.levelno == logging.ERROR
    assert raised.exc_info is not None
    assert raised.exc_info[1] is error


def test_app_transitions_carry_a_duration(caplog):
    """Each app transition has the seconds spent in the state it leaves (0 for NEW)."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    app, _ = one_app("thread")
    assert run_once("thread", app) == ExitCode.OK
    moves = [fields(r) for r in named(lifecycle_records(caplog), "app transition")]
    states = ["STARTING", "RUNNING", "DRAINING", "STOPPING", "STOPPED"]
    assert [m["to_state"] for m in moves] == states
    assert moves[0]["duration"] == 0.0
    assert all(isinstance(m["duration"], float) and m["duration"] >= 0 for m in moves)


def test_the_message_puts_multi_line_values_last():
    """render(): key=value inline (quoted when needed), a stack on lines of its own."""
    text = render("stuck", {"component": "db", "hint": "do it", "n": 2, "stack": "a\nb\n"})
    assert text == "stuck component=db hint='do it' n=2\nstack:\na\nb"


def test_configured_structlog_gets_the_events_and_stdlib_none(caplog):
    """Once the application configured structlog, events go there only, with their fields."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    capture = LogCapture()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    app, _ = one_app("thread")
    assert run_once("thread", app) == ExitCode.OK
    assert lifecycle_records(caplog) == []
    moves = [e for e in capture.entries if e["event"] == "app transition"]
    assert len(moves) == 5
    assert all("duration" in e for e in moves)
    assert [e["to_state"] for e in capture.entries if e["event"] == "transition"][-1] == "STOPPED"


def test_the_choice_is_made_per_call():
    """Configuring structlog after the logger was made switches it over at the next call."""
    capture = LogCapture()
    log = get_logger()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    log.info("hello", n=1)
    assert capture.entries == [{"event": "hello", "n": 1, "log_level": "info"}]


# -- logging never breaks the lifecycle ------------------------------------------------------


def exploding(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if event.get("to_state") == "STOPPING" or event.get("event") == "shutdown summary":
        raise RuntimeError("log processor exploded")
    return event


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_raising_log_processor_skips_no_stop(kind, first_failure, capsys):
    """A processor raising on the STOPPING transition: stop is still called, exit 0, one line."""
    capture = LogCapture()
    structlog.configure(processors=[exploding, capture], cache_logger_on_first_use=False)
    app, part = one_app(kind)
    assert run_once(kind, app) == ExitCode.OK
    assert part.calls == ["start", "stop"]
    assert app.components["db"].state is lifecycle.ComponentState.STOPPED
    assert not [e for e in capture.entries if "crashed" in e["event"]]
    complaints = [line for line in capsys.readouterr().err.splitlines() if "lifecycle:" in line]
    assert complaints == [
        "lifecycle: logging the event 'app transition' raised RuntimeError: log processor "
        "exploded; the lifecycle carries on without it (later logging errors are not "
        "reported; check the structlog processors or logging handlers of the application)"
    ]


def test_a_raising_stdlib_filter_skips_no_stop(first_failure, capsys, caplog):
    """Under stdlib logging too: a filter of the application's that raises changes nothing."""
    caplog.set_level(logging.INFO, logger="lifecycle")

    def boom(record: logging.LogRecord) -> bool:
        raise ValueError("filter failed")

    std = logging.getLogger("lifecycle")
    std.addFilter(boom)
    try:
        app, part = one_app("asyncio")
        assert run_once("asyncio", app) == ExitCode.OK
    finally:
        std.removeFilter(boom)
    assert part.calls == ["start", "stop"]
    assert "raised ValueError: filter failed" in capsys.readouterr().err


def test_an_asyncio_task_left_behind_is_logged_to_stdlib(caplog):
    """asyncio_run's teardown report is a stdlib ERROR record too when structlog is unconfigured."""
    caplog.set_level(logging.INFO, logger="lifecycle")

    async def stubborn() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    async def main() -> None:
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
        await asyncio.sleep(0)

    lifecycle.asyncio_run(main(), teardown_timeout=0.05)
    (pending,) = named(lifecycle_records(caplog), "task still pending when its event loop closed")
    assert pending.levelno == logging.ERROR
    assert fields(pending)["task"] == "stubborn"


# -- levels that mean something --------------------------------------------------------------


def info_events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    return [
        (r.__dict__["event"], r.levelno)
        for r in lifecycle_records(caplog)
        if r.levelno >= logging.INFO
    ]


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_clean_run_at_info_is_one_line_per_phase(kind, caplog):
    """At INFO a clean run reads: started, shutdown requested, draining, stopping, summary.

    Transitions (component and app) are DEBUG; nothing is above INFO.
    """
    caplog.set_level(logging.INFO, logger="lifecycle")
    app = App("shop", drain_delay=0.01)
    app.add((Part if kind == "thread" else APart)(), name="db")
    assert run_once(kind, app) == ExitCode.OK
    assert info_events(caplog) == [
        ("app started", logging.INFO),
        ("shutdown requested", logging.INFO),
        ("draining", logging.INFO),
        ("stopping", logging.INFO),
        ("shutdown summary", logging.INFO),
    ]
    records = lifecycle_records(caplog)
    (requested,) = named(records, "shutdown requested")
    assert fields(requested)["reason"] == "test"
    assert fields(requested)["budget"] == pytest.approx(30.0, abs=0.5)
    (draining,) = named(records, "draining")
    assert fields(draining)["seconds"] == 0.01
    (summary,) = named(records, "shutdown summary")
    assert fields(summary)["outcome"] == "ok"
    assert summary.getMessage().splitlines()[1:] == [
        "components:",
        f"  db: state=stopped start_seconds={fields(summary)['components']['db']['start_seconds']}"
        f" stop_seconds={fields(summary)['components']['db']['stop_seconds']}",
    ]


@pytest.mark.parametrize("kind", RUNNERS)
def test_no_drain_delay_logs_no_draining_line(kind, caplog):
    caplog.set_level(logging.INFO, logger="lifecycle")
    app, _ = one_app(kind)
    assert run_once(kind, app) == ExitCode.OK
    assert "draining" not in [event for event, _ in info_events(caplog)]


@pytest.mark.parametrize("kind", RUNNERS)
def test_an_adaptive_drain_logs_its_bounds(kind, caplog):
    caplog.set_level(logging.INFO, logger="lifecycle")
    app = App("shop", drain_delay=lifecycle.Drain(min=0.01, max=0.05, quiet=0.01))
    app.add((Part if kind == "thread" else APart)(), name="db")
    assert run_once(kind, app) == ExitCode.OK
    (draining,) = named(lifecycle_records(caplog), "draining")
    assert {k: fields(draining)[k] for k in ("min", "max", "quiet")} == {
        "min": 0.01,
        "max": 0.05,
        "quiet": 0.01,
    }


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_failed_stop_is_one_error_entry_from_the_users_frame_and_an_error_summary(kind, caplog):
    """stop() raised: one ERROR entry (its traceback begins at the user's frame), the FAILED
    transition at DEBUG, and the summary at ERROR (exit FAILED)."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    app, _ = one_app(kind, stop_error=RuntimeError("pool close failed"))
    assert run_once(kind, app) == ExitCode.FAILED
    records = lifecycle_records(caplog)
    errors = [r for r in records if r.levelno >= logging.ERROR]
    errors = [r for r in errors if r.__dict__["event"] != "shutdown summary"]
    assert [r.__dict__["event"] for r in errors] == ["stop() raised"]
    (raised,) = errors
    assert raised.exc_info is not None
    tb = raised.exc_info[2]
    assert tb is not None
    assert tb.tb_frame.f_code.co_filename == __file__  # the user's frame first
    assert tb.tb_frame.f_code.co_name == "stop"
    failed = [r for r in named(records, "transition") if fields(r)["to_state"] == "FAILED"]
    assert [r.levelno for r in failed] == [logging.DEBUG]
    (summary,) = named(records, "shutdown summary")
    assert summary.levelno == logging.ERROR
    assert fields(summary)["outcome"] == "failed"


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_stuck_stop_is_one_entry_whose_stack_begins_at_the_users_frame(kind, caplog):
    """A stop past its timeout: "component stuck" with a stack that starts at the user's
    function (no runner, thread or asyncio frames above it); the summary at WARNING (TIMEOUT)."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    release = threading.Event()
    app = App("shop", stop_timeout=0.05)

    if kind == "thread":

        @app.worker
        def stuck_worker(token: CancelToken) -> None:
            release.wait(10)

    else:

        @app.worker
        async def stuck_worker(token: CancelToken) -> None:  # type: ignore[misc]
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)

    try:
        assert run_once(kind, app) == ExitCode.TIMEOUT
    finally:
        release.set()
    records = lifecycle_records(caplog)
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert [r.__dict__["event"] for r in errors] == ["component stuck"]
    stack = fields(errors[0])["stack"]
    # A task's stack is headed by its name; a thread's is frames only.
    first = next(line for line in stack.splitlines() if not line.startswith("Stack of task"))
    assert first.startswith(f'  File "{__file__}"'), stack
    assert "stuck_worker" in first
    assert "lifecycle/_runtime" not in stack
    assert "threading.py" not in stack.split(__file__)[0]
    (summary,) = named(records, "shutdown summary")
    assert summary.levelno == logging.WARNING
    assert fields(summary)["outcome"] == "timeout"


class _Seen(logging.Handler):
    """Sets an event once a record of ``event`` was emitted."""

    def __init__(self, event: str) -> None:
        super().__init__(logging.DEBUG)
        self.event = event
        self.seen = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.__dict__.get("event") == self.event:
            self.records.append(record)
            self.seen.set()


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_slow_stop_logs_what_is_still_stopping_once_a_second(kind, caplog):
    """While a component stops for more than a second: "still stopping" names it, how long
    it has been stopping, its budget, and the shutdown budget left."""
    caplog.set_level(logging.INFO, logger="lifecycle")
    seen = _Seen("still stopping")
    logger = logging.getLogger("lifecycle")
    logger.addHandler(seen)
    app = App("shop", stop_timeout=20)

    class Slow:
        def stop(self, token: CancelToken) -> None:
            assert seen.seen.wait(15), "no progress line within 15 s"

    class ASlow:
        async def stop(self, token: CancelToken) -> None:
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, seen.seen.wait, 15)

    app.add(Slow() if kind == "thread" else ASlow(), name="pool")
    try:
        assert run_once(kind, app) == ExitCode.OK
    finally:
        logger.removeHandler(seen)
    (progress, *_) = seen.records
    assert progress.levelno == logging.INFO
    (line,) = fields(progress)["components"]
    assert line.startswith(("pool 1.", "pool 2.")), line
    assert line.endswith(" of 20s")
    assert 25 < fields(progress)["budget_left"] < 30


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_fast_stop_logs_no_progress_line(kind, caplog):
    caplog.set_level(logging.INFO, logger="lifecycle")
    app, _ = one_app(kind)
    assert run_once(kind, app) == ExitCode.OK
    assert named(lifecycle_records(caplog), "still stopping") == []


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_cut_request_is_one_entry(kind, caplog):
    """A server stop that cuts a stuck request: one ERROR entry naming it ("work cut at the
    stop deadline"), no "stop() raised" traceback, no second entry for its thread or the
    FAILED transition; the summary at WARNING with the cut count."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    entered = threading.Event()
    release = threading.Event()

    from http.server import BaseHTTPRequestHandler  # noqa: PLC0415

    class Stuck(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            entered.set()
            release.wait(10)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    import socket  # noqa: PLC0415

    server = lifecycle.HTTPServer(Stuck, ("127.0.0.1", 0), name="api")
    app = App("shop")
    app.add(server, name="api", stop_timeout=0.3)
    client = socket.socket()
    try:
        if kind == "thread":
            runner = ThreadedRunner(app, signals=None)
            runner.start()
            client.connect(("127.0.0.1", server.port))
            client.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
            assert entered.wait(10)
            code = runner.stop("test")
        else:

            async def main() -> int:
                runner = AsyncioRunner(app, signals=None)
                await runner.start()
                client.connect(("127.0.0.1", server.port))
                client.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
                loop = asyncio.get_running_loop()
                assert await loop.run_in_executor(None, entered.wait, 10)
                return await runner.stop("test")

            code = lifecycle.asyncio_run(main())
    finally:
        release.set()
        client.close()
    assert code == ExitCode.TIMEOUT
    records = lifecycle_records(caplog)
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert [r.__dict__["event"] for r in errors] == ["work cut at the stop deadline"]
    assert fields(errors[0])["running"][0].startswith("GET /stuck")
    assert all(r.exc_info is None for r in records)
    (summary,) = named(records, "shutdown summary")
    assert summary.levelno == logging.WARNING
    assert fields(summary)["components"]["api"]["cut_count"] == 1


class _OwnCut(lifecycle.DeadlineExceeded):
    """A cut error of the kind a component may define (it skips the base __init__)."""

    def __init__(self) -> None:
        self.cut = ["job 7"]
        TimeoutError.__init__(self, "job 7 cut at the deadline; raise stop_timeout")


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_cut_error_of_the_components_own_is_one_entry_without_a_traceback(kind, caplog):
    """A DeadlineExceeded subclass raised by stop(): exit TIMEOUT, one "stop() raised" entry
    with its message and no traceback (lifecycle's account of a cut, not a bug)."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    app, _ = one_app(kind, stop_error=_OwnCut())
    assert run_once(kind, app) == ExitCode.TIMEOUT
    records = lifecycle_records(caplog)
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert [r.__dict__["event"] for r in errors] == ["stop() raised"]
    assert errors[0].exc_info is None
    assert fields(errors[0])["error"] == "job 7 cut at the deadline; raise stop_timeout"
    (summary,) = named(records, "shutdown summary")
    assert summary.levelno == logging.WARNING


# -- failures that must not hide or break the logs -------------------------------------------


class _BadStr(Exception):
    """A third-party exception whose __str__ raises."""

    def __str__(self) -> str:
        raise RuntimeError("str broke")


@pytest.mark.parametrize("kind", RUNNERS)
def test_an_exception_whose_str_raises_still_stops_everything_and_is_summarised(kind, caplog):
    """run() raises an exception whose str() raises: the dependency is still stopped, the
    summary is logged, and report() works."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    closed: list[str] = []
    app = App("shop", shutdown_timeout=5, stop_timeout=1)
    app.add(object(), name="db", start=lambda: None, stop=lambda: closed.append("db"))

    def crash(token: CancelToken) -> None:
        raise _BadStr

    async def acrash(token: CancelToken) -> None:
        raise _BadStr

    app.add(object(), name="w", run=crash if kind == "thread" else acrash, depends_on=["db"])
    code = run_to_end(kind, app)
    assert code == ExitCode.FAILED
    assert closed == ["db"]
    records = lifecycle_records(caplog)
    assert [r.__dict__["event"] for r in records if r.levelno == logging.CRITICAL] == []
    (summary,) = named(records, "shutdown summary")
    assert fields(summary)["components"]["w"]["error"].startswith("_BadStr: <str() failed")
    assert app.report()["components"]["w"]["state"] == "failed"


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_dependency_never_stopped_at_the_deadline_is_an_error_entry(kind, caplog):
    """api's stop hangs past shutdown_timeout: db's stop is never called; that failure is an
    ERROR entry of its own (db has no call that a "component stuck" entry would name)."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    release = threading.Event()
    app = App("shop", shutdown_timeout=0.3, stop_timeout=5)
    app.add(object(), name="db", start=lambda: None, stop=lambda: None)
    hang = lambda: release.wait(5)  # noqa: E731
    app.add(object(), name="api", depends_on=["db"], start=lambda: None, stop=hang)
    try:
        assert run_once(kind, app) == ExitCode.TIMEOUT
    finally:
        release.set()
    errors = [
        (r.__dict__["event"], fields(r).get("component"))
        for r in lifecycle_records(caplog)
        if r.levelno >= logging.ERROR
    ]
    assert ("transition", "db") in errors
    assert ("component stuck", "api") in errors
    assert ("transition", "api") not in errors  # api's is the stuck entry


@pytest.mark.parametrize("kind", RUNNERS)
def test_restarts_are_logged_after_the_crash_that_caused_them_and_the_limit_once(kind, caplog):
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    crashes = iter(range(1, 100))
    app = App("shop")

    def crash(token: CancelToken) -> None:
        raise ValueError(f"crash {next(crashes)}")

    async def acrash(token: CancelToken) -> None:
        raise ValueError(f"crash {next(crashes)}")

    policy = lifecycle.RestartPolicy("on-failure", max_restarts=2, within=60, backoff=0.001)
    app.add(object(), name="w", run=crash if kind == "thread" else acrash, restart=policy)
    code = run_to_end(kind, app)
    assert code == ExitCode.FAILED
    events = [
        r.__dict__["event"]
        for r in lifecycle_records(caplog)
        if r.levelno >= logging.WARNING and r.__dict__["event"] != "shutdown budget overrun"
    ]
    assert events == [
        "run() raised",
        "restart",
        "run() raised",
        "restart",
        "run() raised",
        "restart limit reached",
        "shutdown summary",
    ]


def test_a_value_with_a_newline_or_a_failing_repr_keeps_the_line_and_the_event():
    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("repr broke")

    assert render("e", {"t": {"r": {"s": "a\nb"}}}) == "e\nt:\n  r: s='a\\nb'"
    assert render("e", {"x": Bad()}) == "e x=<Bad: repr() failed>"


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_cut_inside_an_exception_group_is_not_logged_twice_and_is_in_the_report(kind, caplog):
    """A stop that joined two servers (a TaskGroup) raises a group holding a cut already
    logged by its server: no second entry for it, the report names the cut; what else the
    group holds is one entry with only that in its traceback."""
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    said = lifecycle.DeadlineExceeded("web", ["GET /slow (1.0s)"], logged=True)
    app, _ = one_app(kind, stop_error=ExceptionGroup("stop", [said]))
    assert run_once(kind, app) == ExitCode.TIMEOUT
    records = lifecycle_records(caplog)
    assert [r for r in records if r.levelno >= logging.ERROR] == []
    assert app.report()["components"]["db"]["cut"] == ["GET /slow (1.0s)"]

    caplog.clear()
    said = lifecycle.DeadlineExceeded("web", ["GET /slow (1.0s)"], logged=True)
    app, _ = one_app(kind, stop_error=ExceptionGroup("stop", [said, OSError("disk full")]))
    assert run_once(kind, app) == ExitCode.TIMEOUT
    errors = [r for r in lifecycle_records(caplog) if r.levelno >= logging.ERROR]
    assert [r.__dict__["event"] for r in errors] == ["stop() raised"]
    assert errors[0].exc_info is not None
    shown = errors[0].exc_info[1]
    assert isinstance(shown, ExceptionGroup)
    assert [type(e) for e in shown.exceptions] == [OSError]
    assert app.report()["components"]["db"]["cut_count"] == 1


# -- what a level that is off costs ------------------------------------------------------


def test_enabled_follows_the_stdlib_level_when_structlog_is_not_configured(caplog):
    """Unconfigured structlog: the ``lifecycle`` logger's own level decides."""
    log = get_logger()
    caplog.set_level(logging.INFO, logger="lifecycle")
    assert not log.enabled("debug")
    assert log.enabled("info")
    assert log.enabled("exception")
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    assert log.enabled("debug")


def test_enabled_follows_a_filtering_structlog_and_lets_the_rest_decide():
    """A filtering bound logger's level; any other wrapper, or a failing bind, counts as on."""
    log = get_logger()
    structlog.configure(
        processors=[LogCapture()], wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
    )
    assert not log.enabled("debug")
    assert log.enabled("warning")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET))
    assert log.enabled("debug")
    structlog.configure(wrapper_class=structlog.BoundLogger)  # no level of its own
    assert log.enabled("debug")
    structlog.configure(
        wrapper_class=structlog.stdlib.BoundLogger, logger_factory=structlog.stdlib.LoggerFactory()
    )
    logging.getLogger("lifecycle").setLevel(logging.WARNING)
    try:
        assert not log.enabled("info")  # the stdlib logger's level, through structlog
        assert log.enabled("error")
    finally:
        logging.getLogger("lifecycle").setLevel(logging.NOTSET)

    def broken_factory(*args: object) -> object:
        raise RuntimeError("no logger today")

    structlog.configure(logger_factory=broken_factory)
    assert log.enabled("debug")


def test_emit_all_binds_once_and_keeps_every_event_past_a_failing_one(first_failure, capsys):
    """One bind for the batch (not one per event); a processor failing on one skips only it."""
    made: list[object] = []
    capture = LogCapture()

    def factory(*args: object) -> object:
        made.append(args)
        return structlog.PrintLogger()

    def picky(logger: object, method: str, event: MutableMapping[str, Any]) -> Any:
        if event["event"] == "bad":
            raise ValueError("not this one")
        return event

    structlog.configure(
        processors=[picky, capture], logger_factory=factory, cache_logger_on_first_use=False
    )
    get_logger().emit_all(
        [("debug", "first", {"n": 1}), ("info", "bad", {}), ("warning", "third", {"n": 3})]
    )
    assert len(made) == 1
    assert [(e["event"], e["log_level"]) for e in capture.entries] == [
        ("first", "debug"),
        ("third", "warning"),
    ]
    assert "logging the event 'bad' raised ValueError: not this one" in capsys.readouterr().err


@pytest.mark.parametrize("kind", RUNNERS)
@pytest.mark.parametrize("debug", [False, True], ids=["info", "debug"])
def test_transitions_are_built_only_when_debug_is_on(kind, debug, caplog, monkeypatch):
    """DEBUG off: no transition's fields are made at all; on: every one is logged as before."""
    from lifecycle._runtime import runners  # noqa: PLC0415 - the function counted

    built: list[str] = []
    real = runners._moved_fields

    def counting(moved: Any) -> dict[str, Any]:
        built.append(moved[0])
        return real(moved)

    monkeypatch.setattr(runners, "_moved_fields", counting)
    caplog.set_level(logging.DEBUG if debug else logging.INFO, logger="lifecycle")
    app, part = one_app(kind)
    assert run_once(kind, app) == ExitCode.OK
    assert part.calls == ["start", "stop"]
    moves = [fields(r) for r in named(lifecycle_records(caplog), "transition")]
    if not debug:
        assert built == []
        assert moves == []
        assert named(lifecycle_records(caplog), "shutdown summary")  # INFO still is
        return
    assert [(m["from_state"], m["to_state"]) for m in moves] == [
        ("NEW", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "STOPPING"),
        ("STOPPING", "STOPPED"),
    ]
    assert all(m["component"] == "db" and m["duration"] >= 0 for m in moves)
    assert built == ["db"] * 4


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_filtering_structlog_at_info_gets_no_transition_and_the_summary(kind, monkeypatch):
    """structlog filtering at INFO: the round drops its DEBUG events unbuilt."""
    from lifecycle._runtime import runners  # noqa: PLC0415 - the function counted

    built: list[str] = []

    def counting(moved: Any) -> dict[str, Any]:
        built.append(moved[0])
        return {}

    monkeypatch.setattr(runners, "_moved_fields", counting)
    capture = LogCapture()
    structlog.configure(
        processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
    )
    app, _ = one_app(kind)
    assert run_once(kind, app) == ExitCode.OK
    events = [e["event"] for e in capture.entries]
    assert "transition" not in events
    assert "app transition" not in events  # DEBUG too
    assert events[-1] == "shutdown summary"
    assert built == []
