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
    assert stopping.levelno == logging.INFO
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
    caplog.set_level(logging.INFO, logger="lifecycle")
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
