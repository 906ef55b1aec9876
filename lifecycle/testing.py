"""`lifecycle.testing`: a pytest plugin for testing your own app's lifecycle.

Load it where you want it: ``pytest_plugins = ["lifecycle.testing"]`` in
the top-level ``conftest.py``, or ``-p lifecycle.testing`` (in ``addopts``).
It is not loaded by itself (no ``pytest11`` entry point): a library that
services import should not add fixtures to, nor have its modules rewritten
in, every test session of every program that installs it. ``import
lifecycle`` never imports this module (pytest is needed only by tests).

In-process, on both runners::

    def test_stops_cleanly(lifecycle_runner):          # runs twice: thread, asyncio
        app = make_app()
        lifecycle_runner.start(app)
        code = lifecycle_runner.request_shutdown("test")
        assert_exit_code(code, lifecycle.ExitCode.OK)
        assert_clean_stop(app.report())
        assert_stopped_before(app.report(), "api", "db")

In a child process, with a real signal::

    def test_sigterm():
        result = spawn("myapp:app").terminate()       # SIGTERM once ready
        assert_exit_code(result, 0)

Components that misbehave on purpose: `stuck` / `stuck_async` (a phase that
ignores its token) and `failing` / `failing_async` (a phase that raises).

What it offers, and what it does not: the runners run on the real clock
(their threads wait in real time, token deadlines fire on the real
monotonic clock), so there is no fake clock for them that would be honest.
Time-driven behaviour (a stop timeout, a drain delay) is tested with small
real timeouts (``stop_timeout=0.1``) — or, for the logic of a declaration
(what stops when, what overruns, the exit code), with `simulate`: the real
scheduler, which is sans-I/O, fed scripted calls on a virtual clock.

The marker PYTEST_DONT_REWRITE keeps pytest from rewriting this module's
asserts (its messages are its own), so a test module may import it before
pytest loads it as a plugin.

Added in 0.4.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import json
import math
import os
import signal as signal_module
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal

import pytest

from ._core.states import ExitCode
from ._core.tokens import CancelToken
from ._runtime.app import App
from ._runtime.runners import AsyncioRunner, ThreadedRunner

__all__ = [
    "DEFAULT_TIMEOUT",
    "RUNNER_KINDS",
    "Behaviour",
    "Exited",
    "Harness",
    "Misbehaving",
    "Spawned",
    "assert_clean_stop",
    "assert_exit_code",
    "assert_nothing_cut",
    "assert_started_before",
    "assert_stopped_before",
    "failing",
    "failing_async",
    "simulate",
    "spawn",
    "stuck",
    "stuck_async",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds any wait of this module takes at most before it fails the test."""

RUNNER_KINDS = ("thread", "asyncio")
"""The runners the ``runner_kind`` fixture is parametrised over."""

Phase = Literal["start", "run", "stop"]
Report = Mapping[str, Any]
_EPSILON = 2e-6  # the report rounds times to 1e-6: a sum of two may be that far off


def _exit_name(code: int) -> str:
    try:
        return f"{code} {ExitCode(code).name}"
    except ValueError:
        if code > 128:
            try:
                return f"{code} (forced by {signal_module.Signals(code - 128).name})"
            except ValueError:
                pass
        return str(code)


# -- reading a report ---------------------------------------------------------------------


def _report_of(report: Report | App) -> Report:
    if isinstance(report, App):
        return report.report()
    if not isinstance(report, Mapping) or "components" not in report:
        raise TypeError(
            f"expected an app.report() dict or an App, got {type(report).__name__}; "
            f"pass app.report()"
        )
    return report


def _component(report: Report, name: str) -> Mapping[str, Any]:
    components: Mapping[str, Mapping[str, Any]] = report["components"]
    if name not in components:
        known = ", ".join(components) or "none"
        raise AssertionError(f"no component {name!r} in the report of the app; it has: {known}")
    return components[name]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _problems(report: Report) -> list[str]:
    """What kept the run from being a clean stop, one line per thing, naming it."""
    problems: list[str] = []
    for name, c in report["components"].items():
        if c.get("timed_out") == "stop" and c.get("stop_at") is None:
            problems.append(
                f"component {name!r} was never stopped: the shutdown deadline passed "
                f"before its turn (a component stopping before it overran)"
            )
        elif c.get("timed_out"):
            budget = c.get("stop_budget") if c["timed_out"] == "stop" else c.get("start_timeout")
            problems.append(
                f"component {name!r} timed out in {c['timed_out']} "
                f"(budget {_seconds(budget)}) and was abandoned"
            )
        if c.get("cut_count"):
            cut = "; ".join(c.get("cut", []))
            problems.append(
                f"component {name!r} cut {c['cut_count']} unfinished request(s) "
                f"at its stop deadline: {cut}"
            )
        if c.get("error") and not c.get("cut_count") and not c.get("timed_out"):
            problems.append(f"component {name!r} is {c['state']}: {c['error']}")
        elif c["state"] != "stopped" and not c.get("timed_out"):
            why = f": {c['error']}" if c.get("error") else ""
            problems.append(f"component {name!r} ended {c['state']}, not stopped{why}")
    return problems


def assert_clean_stop(report: Report | App) -> None:
    """Assert the app ran and stopped cleanly: exit 0, every component stopped, none overran.

    ``report`` is ``app.report()`` (or the `App`). The message names each
    component that failed, timed out, was cut or did not stop.

    Example::

        app = lifecycle.App("clean")
        app.add(Pool())
        with lifecycle.ThreadedRunner(app, signals=None):
            pass
        assert_clean_stop(app.report())

    Raises:
        AssertionError: what was not clean.
    """
    report = _report_of(report)
    problems = _problems(report)
    code = report.get("exit_code")
    if code is None:
        problems.insert(0, f"the app has not finished (state {report['state']!r})")
    elif code != ExitCode.OK:
        problems.insert(0, f"exit code {_exit_name(code)}, expected 0 OK")
    elif report["state"] != "stopped":
        problems.insert(0, f"the app ended {report['state']!r}, not 'stopped'")
    if problems:
        raise AssertionError(
            f"app {report.get('app')!r} did not stop cleanly:\n  " + "\n  ".join(problems)
        )


def assert_nothing_cut(report: Report | App) -> None:
    """Assert no server cut unfinished requests at its stop deadline.

    Example::

        assert_nothing_cut(app.report())

    Raises:
        AssertionError: names each component that cut, how many and what.
    """
    report = _report_of(report)
    cuts = [
        f"{name!r} cut {c['cut_count']}: {'; '.join(c.get('cut', []))}"
        for name, c in report["components"].items()
        if c.get("cut_count")
    ]
    if cuts:
        raise AssertionError("requests were cut at the stop deadline: " + " | ".join(cuts))


def assert_exit_code(result: int | Exited | Report | App | None, expected: int) -> None:
    """Assert the exit code of a run: an int, an `Exited`, ``app.report()`` or the `App`.

    The message names both codes and, from a report, what failed or overran;
    from an `Exited`, the child's last output lines.

    Example::

        assert_exit_code(lifecycle_runner.request_shutdown(), lifecycle.ExitCode.OK)
        assert_exit_code(spawn("myapp:app").terminate(), 0)

    Raises:
        AssertionError: the code differs (or the run has not finished).
    """
    detail = ""
    if isinstance(result, Exited):
        code: int | None = result.exit_code
        tail = "\n    ".join(result.lines[-15:]) or "(no output)"
        detail = f"\n  its last output lines:\n    {tail}"
    elif isinstance(result, int):
        code = int(result)
    elif result is None:
        code = None
    else:
        report = _report_of(result)
        code = report.get("exit_code")
        problems = _problems(report)
        if problems:
            detail = "\n  " + "\n  ".join(problems)
    if code is None:
        raise AssertionError(f"the app has not finished; expected exit code {_exit_name(expected)}")
    if code != expected:
        raise AssertionError(
            f"exit code {_exit_name(code)}, expected {_exit_name(int(expected))}{detail}"
        )


_PAST: Final = {"start": "started", "stop": "stopped"}


def _ordered(
    report: Report | App, first: str, second: str, phase: Literal["start", "stop"]
) -> None:
    if first == second:
        raise ValueError(f"assert_{_PAST[phase]}_before: name two components, not {first!r} twice")
    report = _report_of(report)
    a, b = _component(report, first), _component(report, second)
    for name, c in ((first, a), (second, b)):
        if c[f"{phase}_at"] is None:
            raise AssertionError(
                f"component {name!r} never began its {phase} (state {c['state']!r}); "
                f"cannot tell whether {first!r} {_PAST[phase]} before {second!r}"
            )
    if a[f"{phase}_seconds"] is None or a["timed_out"] == phase:
        why = (
            "it overran its timeout and was abandoned, and may still run"
            if a["timed_out"] == phase
            else f"state {a['state']!r}"
        )
        raise AssertionError(
            f"component {first!r} never finished its {phase} ({why}), "
            f"so it did not {phase} before {second!r}"
        )
    a_end = a[f"{phase}_at"] + a[f"{phase}_seconds"]
    b_begin = b[f"{phase}_at"]
    if a_end > b_begin + _EPSILON:
        verb = "stopping" if phase == "stop" else "starting"
        raise AssertionError(
            f"{first!r} should have finished its {phase} before {second!r} began {verb}, "
            f"but {second!r} began at {_seconds(b_begin)} and {first!r} ran "
            f"{_seconds(a[f'{phase}_at'])}..{_seconds(a_end)} (seconds since start); "
            f"declare {second!r} as a dependency of {first!r}: "
            f"depends_on of {first!r} is {list(a['depends_on'])}"
        )


def assert_stopped_before(report: Report | App, first: str, second: str) -> None:
    """Assert ``first`` finished its stop before ``second`` began its stop (``stop_at``).

    What ``depends_on`` promises: a component stops before what it depends on.

    Example::

        assert_stopped_before(app.report(), "api", "db")

    Raises:
        AssertionError: the order was wrong, or one of them never stopped; names both times.
    """
    _ordered(report, first, second, "stop")


def assert_started_before(report: Report | App, first: str, second: str) -> None:
    """Assert ``first`` finished its start before ``second`` began its start (``start_at``).

    Example::

        assert_started_before(app.report(), "db", "api")

    Raises:
        AssertionError: the order was wrong, or one of them never started; names both times.
    """
    _ordered(report, first, second, "start")


# -- components that misbehave on purpose -----------------------------------------------

_LIVE: list[Misbehaving] = []
_LIVE_LOCK = threading.Lock()
_PHASES = ("start", "run", "stop")



def _check_seconds(name: str, value: float) -> None:
    """A bound of a test helper: a finite number of seconds above 0 (every wait is bounded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}={value!r}: give a number of seconds, e.g. {name}=10")
    if not (0 < value < math.inf):
        raise ValueError(
            f"{name}={value!r}: give a finite number of seconds above 0, e.g. {name}=10 "
            f"(every wait of lifecycle.testing is bounded)"
        )

class Misbehaving:
    """A test component that hangs or raises in one phase; made by `stuck` or `failing`.

    It has only the hook of its ``phase`` (``start``, ``run`` or ``stop``),
    sync or async. A stuck call ignores its token and waits until `release`
    (the plugin releases every one at the end of the test, and waits for its
    calls to return, so no thread is left behind), or ``hold`` seconds at
    most. ``calls`` counts the calls that began; ``entered`` is set by the first.

    Example::

        part = stuck("stop")
        app.add(part, name="cache", stop_timeout=0.1)
        ...
        part.release()
    """

    def __init__(
        self,
        phase: Phase,
        *,
        mode: Literal["stuck", "failing"],
        asynchronous: bool,
        error: BaseException | None = None,
        hold: float = 60.0,
    ) -> None:
        if phase not in _PHASES:
            raise ValueError(f"phase={phase!r}: use one of {', '.join(_PHASES)}")
        _check_seconds("hold", hold)
        if error is not None and not isinstance(error, BaseException):
            raise TypeError(
                f"error={error!r}: give an exception instance, e.g. error=OSError('no database')"
            )
        self.phase: Phase = phase
        self.mode = mode
        self.asynchronous = asynchronous
        self.error = error
        self.hold = hold
        self.calls = 0
        self.entered = threading.Event()
        self._released = threading.Event()
        self._active = 0
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        hook = self._async_call if asynchronous else self._sync_call
        setattr(self, phase, hook)
        with _LIVE_LOCK:
            _LIVE.append(self)

    def __repr__(self) -> str:
        kind = "async " if self.asynchronous else ""
        return f"<{self.mode} {kind}{self.phase}>"

    def _enter(self) -> None:
        with self._cond:
            self.calls += 1
            self._active += 1
        self.entered.set()

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _sync_call(self, token: CancelToken) -> None:
        self._enter()
        try:
            if self.mode == "failing":
                assert self.error is not None
                raise self.error
            self._released.wait(self.hold)  # ignores its token, on purpose
        finally:
            self._leave()

    async def _async_call(self, token: CancelToken) -> None:
        self._enter()
        try:
            if self.mode == "failing":
                assert self.error is not None
                raise self.error
            event = asyncio.Event()
            with self._cond:
                self._waiters.append((asyncio.get_running_loop(), event))
                released = self._released.is_set()
            if not released:
                # Ignores its token; an abandon by the runner cancels the task.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), self.hold)
        finally:
            self._leave()

    def release(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Let every stuck call return, and wait (bounded) until they have.

        Raises:
            AssertionError: a call still runs after ``timeout`` seconds.
        """
        self._released.set()
        with self._cond:
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the call is over
                loop.call_soon_threadsafe(event.set)
        with self._cond:
            done = self._cond.wait_for(lambda: self._active == 0, timeout)
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
        if not done:
            raise AssertionError(
                f"{self!r}: {self._active} call(s) still running {timeout}s after release"
            )


def stuck(phase: Phase = "stop", *, hold: float = 60.0) -> Misbehaving:
    """A sync component whose ``phase`` hook ignores its token and hangs until released.

    Its ``start``/``run``/``stop`` blocks a thread; the runner abandons it
    at its timeout (exit TIMEOUT for a stuck stop). Released at the test's
    end by the plugin (or by ``.release()``); ``hold`` bounds it anyway.

    Example::

        app = lifecycle.App("stuck", stop_timeout=0.1)
        app.add(stuck("stop"), name="cache")
    """
    return Misbehaving(phase, mode="stuck", asynchronous=False, hold=hold)


def stuck_async(phase: Phase = "stop", *, hold: float = 60.0) -> Misbehaving:
    """The async twin of `stuck`: its hook awaits release, ignoring its token.

    The runner's abandon cancels its task (as it would any coroutine's).

    Example::

        app.add(stuck_async("stop"), name="cache", stop_timeout=0.1)
    """
    return Misbehaving(phase, mode="stuck", asynchronous=True, hold=hold)


def failing(phase: Phase = "start", *, error: BaseException | None = None) -> Misbehaving:
    """A sync component whose ``phase`` hook raises ``error`` (a ``RuntimeError`` by default).

    A failing start makes the app roll back (exit FAILED); a failing ``run``
    is a crash; a failing stop is exit FAILED too.

    Example::

        app.add(failing("start", error=OSError("no database")), name="db")
    """
    if error is None:
        error = RuntimeError(f"failing {phase} (lifecycle.testing.failing)")
    return Misbehaving(phase, mode="failing", asynchronous=False, error=error)


def failing_async(phase: Phase = "start", *, error: BaseException | None = None) -> Misbehaving:
    """The async twin of `failing`.

    Example::

        app.add(failing_async("stop"), name="cache")
    """
    if error is None:
        error = RuntimeError(f"failing async {phase} (lifecycle.testing.failing_async)")
    return Misbehaving(phase, mode="failing", asynchronous=True, error=error)


def _release_all() -> list[str]:
    with _LIVE_LOCK:
        live = list(_LIVE)
    problems = []
    for part in live:
        try:
            part.release()
        except AssertionError as error:
            problems.append(str(error))
    return problems


# -- an app in-process, on either runner --------------------------------------------------


class Harness:
    """Runs one app in-process on one runner kind, every call bounded by ``timeout``.

    ``kind`` is ``"thread"`` (a `ThreadedRunner`) or ``"asyncio"`` (an
    `AsyncioRunner` on an event loop of its own, in a thread). Either way
    the calls below block the test for at most ``timeout`` seconds, and the
    test thread stays free while the app runs. No signal handler is
    installed (``signals=None``). The ``lifecycle_runner`` fixture gives one
    per runner kind and closes it at the test's end.

    Example::

        harness = Harness("asyncio")
        try:
            harness.start(app)
            assert harness.request_shutdown("test") == 0
        finally:
            harness.close()
    """

    def __init__(self, kind: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if kind not in RUNNER_KINDS:
            raise ValueError(f"kind={kind!r}: use one of {', '.join(RUNNER_KINDS)}")
        _check_seconds("timeout", timeout)
        self.kind = kind
        self.timeout = timeout
        self.app: App | None = None
        self.runner: ThreadedRunner | AsyncioRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Harness {self.kind}>"

    @property
    def exit_code(self) -> int | None:
        """The exit code once the app has stopped, else None."""
        return None if self.runner is None else self.runner.exit_code

    def report(self) -> dict[str, Any]:
        """``app.report()`` of the app started here."""
        return self._app("report").report()

    def _app(self, what: str) -> App:
        if self.app is None:
            raise RuntimeError(f"{self!r}.{what}(): call start(app) first")
        return self.app

    def _submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        if self._loop is not None:
            loop = self._loop

            async def body() -> Any:
                result = call()
                return await result if asyncio.iscoroutine(result) else result

            return asyncio.run_coroutine_threadsafe(body(), loop)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def work() -> None:
            try:
                future.set_result(call())
            except BaseException as error:  # noqa: BLE001 - handed to the test
                future.set_exception(error)

        threading.Thread(target=work, name=f"lifecycle.testing:{self.kind}", daemon=True).start()
        return future

    def _bounded(self, future: concurrent.futures.Future[Any], what: str, timeout: float) -> Any:
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise AssertionError(
                f"{what} did not return within {timeout}s on the {self.kind} runner; "
                f"still busy: {self._busy()}"
            ) from None

    def _busy(self) -> str:
        if self.app is None:
            return "-"
        report = self.app.report()
        busy = [
            f"{name} ({c['state']})"
            for name, c in report["components"].items()
            if c["state"] in ("starting", "stopping", "restarting")
        ]
        return f"app {report['state']}; " + (", ".join(busy) or "no component starting/stopping")

    def start(self, app: App, **runner_options: Any) -> None:
        """Start ``app`` on this harness's runner; return once every component runs.

        ``runner_options`` go to the runner (``signal_grace``); ``signals``
        defaults to None. Raises what ``start()`` raises (`StartupError`,
        `ConfigError`).

        Raises:
            AssertionError: the start did not return within ``timeout``.
            RuntimeError: this harness has started an app before.
        """
        if self.runner is not None:
            raise RuntimeError(f"{self!r} already ran an app; use one harness per app")
        runner_options.setdefault("signals", None)
        self.app = app
        if self.kind == "asyncio":
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever, name="lifecycle.testing:loop", daemon=True
            )
            self._loop_thread.start()
            self.runner = AsyncioRunner(app, **runner_options)
        else:
            self.runner = ThreadedRunner(app, **runner_options)
        runner = self.runner
        self._bounded(self._submit(runner.start), f"start() of app {app.name!r}", self.timeout)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the app has stopped; return its exit code.

        Raises:
            AssertionError: it did not stop within ``timeout`` (default: the harness's).
        """
        app = self._app("wait")
        runner = self.runner
        assert runner is not None
        bound = self.timeout if timeout is None else timeout
        return int(self._bounded(self._submit(runner.wait), f"app {app.name!r} stopping", bound))

    def request_shutdown(self, reason: str = "test", timeout: float | None = None) -> int:
        """``app.request_shutdown(reason)``, then `wait`: return the exit code.

        Raises:
            AssertionError: it did not stop within ``timeout``.
        """
        self._app("request_shutdown").request_shutdown(reason)
        return self.wait(timeout)

    def close(self) -> None:
        """Stop the app if it still runs (bounded), release stuck parts, close the loop.

        Raises:
            AssertionError: the app did not stop, or a stuck part's call did not return.
        """
        problems: list[str] = []
        runner, app = self.runner, self.app
        if runner is not None and app is not None and runner.exit_code is None:
            app.request_shutdown("test teardown")
            problems.extend(_release_all())
            try:
                self.wait()
            except AssertionError as error:
                problems.append(str(error))
            except Exception:  # noqa: BLE001,S110 - a failed start: nothing left to stop
                pass
        loop, thread = self._loop, self._loop_thread
        if loop is not None and thread is not None:

            async def cancel_rest() -> None:
                rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in rest:
                    task.cancel()
                if rest:
                    await asyncio.wait(rest, timeout=self.timeout)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(self.timeout * 2)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
            if thread.is_alive():
                problems.append("the harness's event loop did not stop")
            else:
                loop.close()
            self._loop = self._loop_thread = None
        if problems:
            raise AssertionError(f"{self!r} teardown: " + "; ".join(problems))


# -- an app in a child process, with real signals -------------------------------------------


class Exited:
    """How a spawned child ended: ``exit_code`` (128 + N if killed by signal N) and its output.

    ``lines``: stdout and stderr lines, in arrival order (each pipe's order
    is kept); ``events``: those that are JSON objects (the library's log
    events under ``lifecycle run``). A child the test had to kill gives no
    `Exited`: the wait that killed it fails the test.

    Example::

        result = spawn("myapp:app").terminate()
        assert result.exit_code == 0
        assert any(e.get("event") == "shutdown summary" for e in result.events)
    """

    def __init__(self, exit_code: int, lines: list[str], *, pid: int) -> None:
        self.exit_code = exit_code
        self.lines = lines
        self.pid = pid

    def __repr__(self) -> str:
        return f"<Exited pid={self.pid} exit_code={_exit_name(self.exit_code)}>"

    @property
    def events(self) -> list[dict[str, Any]]:
        """The output lines that are JSON objects, parsed."""
        events = []
        for line in self.lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        events.append(value)
        return events


_CHILDREN: list[Spawned] = []
_CHILDREN_LOCK = threading.Lock()


class Spawned:
    """A child process running an app, started by `spawn`, ready; kill-bounded.

    `send` a signal, `wait` for it to exit, or `terminate` (SIGTERM and
    wait). A child that does not exit in time is killed (SIGKILL to its
    process group, by PID) and the test fails with its output. The plugin
    kills any child still running at the end of the test.

    Example::

        child = spawn("myapp:app", ready="readyz")
        child.wait_for_line("listening")          # or send it requests
        child.send(signal.SIGINT)
        result = child.wait(timeout=10)
    """

    def __init__(self, argv: Sequence[str], process: subprocess.Popen[str]) -> None:
        self.argv = list(argv)
        self.process = process
        self.pid = process.pid
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(pipe,), daemon=True, name=f"spawn:{name}")
            for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr))
        ]
        for reader in self._readers:
            reader.start()
        with _CHILDREN_LOCK:
            _CHILDREN.append(self)

    def __repr__(self) -> str:
        return f"<Spawned pid={self.pid} {' '.join(self.argv[-3:])}>"

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        pipe.close()

    def _tail(self) -> str:
        with self._cond:
            tail = self.lines[-20:]
        return "\n    ".join(tail) or "(no output)"

    def wait_for_line(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Wait for an output line containing ``text``; return it.

        Raises:
            AssertionError: no such line within ``timeout``, or the child exited
                (the child is then killed, and the message holds its output).
        """
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.process.poll() is not None:
                    break
                self._cond.wait(min(remaining, 0.05))  # also notices an exit
        code = self.process.poll()
        self.kill()
        why = f"exited with {_exit_name(self._code(code))}" if code is not None else "timed out"
        raise AssertionError(
            f"{self!r}: no output line containing {text!r} within {timeout}s ({why}); "
            f"killed it. Its last output lines:\n    {self._tail()}"
        )

    def _code(self, code: int) -> int:
        return 128 - code if code < 0 else code

    def send(self, signum: int = signal_module.SIGTERM) -> None:
        """Send ``signum`` to the child (by PID)."""
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the child and its process group, by PID; reap it (bounded)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal_module.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(DEFAULT_TIMEOUT)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> Exited:
        """Wait for the child to exit; return its `Exited`.

        Raises:
            AssertionError: it did not exit within ``timeout``: it was killed,
                and the message holds its last output lines.
        """
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._join_readers()
            raise AssertionError(
                f"{self!r} did not exit within {timeout}s; killed it (SIGKILL). "
                f"Its last output lines:\n    {self._tail()}"
            ) from None
        self._join_readers()
        with _CHILDREN_LOCK:
            if self in _CHILDREN:
                _CHILDREN.remove(self)
        with self._cond:
            lines = list(self.lines)
        return Exited(self._code(code), lines, pid=self.pid)

    def _join_readers(self) -> None:
        """Let the output readers finish, for `READER_GRACE` seconds in all.

        Once the child exited its pipes end, unless a process it started
        still holds them: then the readers are left (daemon threads) and
        the output ends with a line that says so, rather than the wait
        lasting as long as that process.
        """
        deadline = time.monotonic() + READER_GRACE
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        if any(reader.is_alive() for reader in self._readers):
            with self._cond:
                if not self.lines or self.lines[-1] != _HELD:
                    self.lines.append(_HELD)

    def terminate(
        self, timeout: float = DEFAULT_TIMEOUT, signum: int = signal_module.SIGTERM
    ) -> Exited:
        """Send SIGTERM (or ``signum``) and `wait` up to ``timeout`` seconds."""
        self.send(signum)
        return self.wait(timeout)

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.kill()
        self._join_readers()


def _wait_ready_http(child: Spawned, timeout: float) -> None:
    line = child.wait_for_line("health endpoint listening", timeout)
    address = None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        address = json.loads(line)["address"]
    if address is None:
        child.kill()
        raise AssertionError(
            f"{child!r}: ready='readyz' needs the JSON log line 'health endpoint listening' "
            f"(lifecycle run, or App(health=...) with JSON logs); got: {line}"
        )
    url = f"http://{address[0]}:{address[1]}/readyz"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline and child.process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
        except OSError as error:
            last = repr(error)
        time.sleep(0.02)  # a bounded poll of a probe, as a load balancer does
    child.kill()
    raise AssertionError(
        f"{child!r}: {url} not 200 within {timeout}s (last: {last}); killed it. "
        f"Its last output lines:\n    {child._tail()}"
    )


def spawn(
    target: str,
    *,
    args: Sequence[str] = (),
    runner: Literal["auto", "thread", "asyncio"] = "auto",
    ready: str = "log",
    ready_timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Spawned:
    """Start an app in a child process and wait until it is ready; return the `Spawned`.

    ``target`` is ``"module:attr"`` (run as ``python -m lifecycle run
    module:attr --runner RUNNER --log-format json``, the current directory
    on ``sys.path``) or the path of a script ending in ``.py`` (run as
    ``python script.py *args``; ``runner`` applies to ``lifecycle run``
    only). ``ready``: ``"log"`` waits for an output
    line containing ``app started`` (a script must configure logging to
    print it); ``"readyz"`` reads the health endpoint's address from the
    JSON log line ``health endpoint listening`` and polls its ``/readyz``
    until 200; any other string waits for a line containing it. The child
    runs in a session of its own with ``PYTHONUNBUFFERED=1``.

    Example::

        result = spawn("myapp:app").terminate()
        assert_exit_code(result, 0)

    Raises:
        AssertionError: not ready within ``ready_timeout`` or exited first:
            the child is killed, and the message holds its output.
    """
    if target.endswith(".py"):
        argv = [sys.executable, os.fspath(target), *args]
    elif ":" in target:
        argv = [sys.executable, "-m", "lifecycle", "run", target, "--runner", runner]
        argv += ["--log-format", "json", *args]
    else:
        raise ValueError(
            f"target={target!r}: give 'module:attr' (an App or a factory) or a script 'path.py'"
        )
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(  # noqa: S603 - the test's own program
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
        cwd=cwd,
        start_new_session=True,
    )
    child = Spawned(argv, process)
    if ready == "readyz":
        _wait_ready_http(child, ready_timeout)
    else:
        child.wait_for_line("app started" if ready == "log" else ready, ready_timeout)
    return child


READER_GRACE = 1.0
"""Seconds the output readers get once the child exited (a descendant may hold its pipes)."""

_HELD = (
    "(lifecycle.testing: the output may be incomplete: a process the child started still "
    "holds its stdout/stderr)"
)


def _kill_all() -> None:
    with _CHILDREN_LOCK:
        children, _CHILDREN[:] = list(_CHILDREN), []
    for child in children:
        child.kill()
        child._join_readers()


# -- the sans-I/O scheduler on a virtual clock ---------------------------------------------

Behaviour = float | Literal["hangs"] | BaseException
"""How a simulated call behaves: returns after that many seconds, never returns, or raises."""

_MAX_STEPS = 100_000


def _behaviour(table: Mapping[str, Behaviour], name: str, phase: str) -> Behaviour:
    value = table.get(name, 0.0)
    if isinstance(value, BaseException) or value == "hangs":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"{phase}[{name!r}]={value!r}: give seconds >= 0, 'hangs', or an exception to raise"
        )
    return float(value)


def _spec_hooks(spec: Any) -> tuple[bool, bool, bool]:
    """Whether a `NodeSpec` has a start, a run and a stop hook."""
    return (spec.has_start, spec.has_run, spec.has_stop)


def simulate(
    app: App,
    *,
    start: Mapping[str, Behaviour] | None = None,
    stop: Mapping[str, Behaviour] | None = None,
    run: Mapping[str, Behaviour] | None = None,
    shutdown_at: float | None = 0.0,
) -> dict[str, Any]:
    """Run ``app``'s declaration through the real scheduler on a virtual clock; return a report.

    Nothing of the app is called and nothing waits: the scheduler the
    runners use (sans-I/O, it takes the time as an argument) is fed the
    events the given behaviours produce, in time order, from t=0. Each
    component's ``start`` and ``stop`` behave as ``start[name]`` /
    ``stop[name]`` say: seconds until it returns (default 0), ``"hangs"``
    (never returns, ignoring its token), or an exception it raises at once.
    ``run[name]``: how long a ``run`` takes to return once its token is
    cancelled (it never ends before). ``shutdown_at``: the shutdown request,
    in seconds after the app started (None: never; the simulation then ends
    only if a start fails). The names, dependencies, timeouts, criticality,
    ``drain_delay`` and ``shutdown_timeout`` are the app's own. The app
    itself is left untouched (it can still be run).

    The result has the shape of ``app.report()`` (``exit_code``, ``state``,
    ``phases``, per component ``state``, ``error``, ``timed_out``,
    ``start_at``/``start_seconds``, ``stop_at``/``stop_seconds``, ...), with
    ``"simulated": True``, so the assertion helpers take it. This is what
    tests the order and timeout logic of a declaration honestly in no time;
    what real code does under real threads needs `Harness` and real time.

    Example::

        app = lifecycle.App("shop", shutdown_timeout=30, stop_timeout=10, drain_delay=2)
        db = app.add(Pool(), name="db")                   # a start and a stop
        app.add(Api(db), name="api", depends_on=[db])
        report = simulate(app, stop={"api": 4.0, "db": 15.0})
        assert report["components"]["db"]["stop_at"] == 6.0   # drain 2 + api 4
        assert report["components"]["db"]["timed_out"] == "stop"
        assert report["exit_code"] == lifecycle.ExitCode.TIMEOUT

    Raises:
        ConfigError: the declaration is invalid (as a runner would).
        ValueError: a behaviour is not seconds, "hangs" or an exception, or names
            no component.
        RuntimeError: nothing more can happen and the app has not finished
            (a call hangs with no timeout to end it).
    """
    tables = {"start": start or {}, "stop": stop or {}, "run": run or {}}
    blueprint = app._blueprint()
    _check_tables(app, blueprint.specs, tables)
    return _Simulation(app, blueprint, tables, shutdown_at).run()


def _check_tables(app: App, specs: Sequence[Any], tables: Mapping[str, Mapping[str, Any]]) -> None:
    hooks = {
        spec.name: [p for p, has in zip(_PHASES, _spec_hooks(spec), strict=True) if has]
        for spec in specs
    }
    for phase, table in tables.items():
        unknown = sorted(set(table) - set(hooks))
        if unknown:
            raise ValueError(
                f"{phase}= names {', '.join(map(repr, unknown))}, not a component of app "
                f"{app.name!r}; it has: {', '.join(sorted(hooks)) or 'none'}"
            )
        for name in table:
            _behaviour(table, name, phase)
            if phase not in hooks[name]:
                has = ", ".join(hooks[name]) or "no hook"
                fix = (
                    f"a worker's stop phase is its run returning: use run={{{name!r}: ...}}"
                    if phase == "stop" and "run" in hooks[name]
                    else f"script one of the hooks it has ({has})"
                )
                raise ValueError(
                    f"{phase}={{{name!r}: ...}}: component {name!r} has no {phase} hook "
                    f"(it has {has}); {fix}"
                )


class _Simulation:
    """The events of scripted calls, in time order, fed to a real `Scheduler`."""

    def __init__(
        self,
        app: App,
        blueprint: Any,
        tables: Mapping[str, Mapping[str, Behaviour]],
        shutdown_at: float | None,
    ) -> None:
        from ._core.scheduler import Scheduler  # noqa: PLC0415 - only the simulation needs it

        self.app = app
        self.tables = tables
        self.shutdown_at = shutdown_at
        self.sched = Scheduler(
            blueprint.graph,
            blueprint.specs,
            shutdown_timeout=app.shutdown_timeout,
            drain_delay=app.drain_delay,
            name=app.name,
        )
        self.events: list[tuple[float, int, str, str, BaseException | None]] = []
        self.live: dict[tuple[str, str], int] = {}  # (name, phase) -> its pending answer
        self.seq = 0

    def _push(self, at: float, phase: str, name: str, error: BaseException | None) -> int:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, phase, name, error))
        return self.seq

    def _call(self, name: str, phase: str, now: float) -> None:
        how = _behaviour(self.tables[phase], name, phase)
        if how == "hangs":
            self.live[(name, phase)] = -1  # in progress; no answer will come
        elif isinstance(how, BaseException):
            self.live[(name, phase)] = self._push(now, phase, name, how)
        else:
            assert isinstance(how, float)
            self.live[(name, phase)] = self._push(now + how, phase, name, None)

    def _execute(self, actions: Sequence[object], now: float) -> None:
        from ._core.scheduler import (  # noqa: PLC0415
            Abandon,
            AppStarted,
            CancelRun,
            StartComponent,
            StopComponent,
        )

        for action in actions:
            if isinstance(action, StartComponent):
                self._call(action.name, "start", now)
            elif isinstance(action, StopComponent):
                self._call(action.name, "stop", now)
            elif isinstance(action, CancelRun):  # a run ends once its token is cancelled
                self._call(action.name, "run", now)
            elif isinstance(action, Abandon):
                self.live.pop((action.name, action.phase), None)
            elif isinstance(action, AppStarted) and self.shutdown_at is not None:
                self._push(now + self.shutdown_at, "shutdown", "", None)
            # RunComponent, CancelStart (a start runs its course), Finished: nothing to do.

    def _answer(self, phase: str, name: str, now: float, error: BaseException | None) -> None:
        sched = self.sched
        if phase == "shutdown":
            actions = sched.request_shutdown(now, "simulated shutdown")
        elif phase == "start":
            actions = (
                sched.start_finished(name, now)
                if error is None
                else sched.start_failed(name, now, error)
            )
        elif phase == "stop":
            actions = sched.stop_finished(name, now, error)
        else:
            actions = sched.run_finished(name, now, error)
        self._execute(actions, now)

    def run(self) -> dict[str, Any]:
        sched = self.sched
        self._execute(sched.begin(0.0), 0.0)
        for _ in range(_MAX_STEPS):
            if sched.done:
                return _simulated_report(self.app, sched)
            deadline = sched.next_deadline()
            due = self.events[0][0] if self.events else math.inf
            if deadline is not None and deadline < due:  # at equal times the event comes first
                self._execute(sched.tick(deadline), deadline)
                continue
            if not self.events:
                busy = ", ".join(f"{n}.{p}" for n, p in sched.active()) or "nothing"
                raise RuntimeError(
                    f"simulate(app {self.app.name!r}): nothing more can happen and the app has "
                    f"not finished (state {sched.state.value}; in progress: {busy}); a call "
                    f"hangs with no timeout to end it, or shutdown_at is None"
                )
            now, number, phase, name, error = heapq.heappop(self.events)
            if phase != "shutdown":
                if self.live.get((name, phase)) != number:
                    continue  # the call was abandoned: a late answer changes nothing
                del self.live[(name, phase)]
            self._answer(phase, name, now, error)
        raise RuntimeError(f"simulate(app {self.app.name!r}): no end after {_MAX_STEPS} steps")


def _simulated_report(app: App, sched: Any) -> dict[str, Any]:
    """The simulation's end as `App.report` puts a run's (and ``"simulated": True``)."""
    entered = dict(sched.app_entered)
    code = sched.exit_code
    return app._report_from(
        sched.infos,
        entered,
        max(entered.values(), default=0.0),  # the virtual clock's last time
        simulated=True,
        state=sched.state.value,
        exit_code=None if code is None else int(code),
        shutdown_reason=sched.shutdown_reason,
    )


# -- the pytest plugin ------------------------------------------------------------------


@pytest.fixture(params=RUNNER_KINDS)
def runner_kind(request: pytest.FixtureRequest) -> str:
    """``"thread"``, then ``"asyncio"``: what `lifecycle_runner` runs on.

    Override it in a ``conftest.py`` to pin one kind::

        @pytest.fixture
        def runner_kind():
            return "asyncio"
    """
    return str(request.param)


@pytest.fixture
def lifecycle_runner(runner_kind: str) -> Iterator[Harness]:
    """A `Harness` on ``runner_kind``; the test runs once per runner.

    At the end of the test an app still running is asked to shut down and
    waited for (bounded), stuck parts are released, the loop is closed.

    Example::

        def test_clean(lifecycle_runner):
            lifecycle_runner.start(app)
            assert lifecycle_runner.request_shutdown() == 0
    """
    harness = Harness(runner_kind)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(autouse=True)
def _lifecycle_testing_cleanup() -> Iterator[None]:
    """Release the test's stuck parts and kill its children still running, at its end."""
    yield
    _kill_all()
    problems = _release_all()
    if problems:
        pytest.fail("lifecycle.testing teardown: " + "; ".join(problems), pytrace=False)

