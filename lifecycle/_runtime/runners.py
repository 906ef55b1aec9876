"""The runners: drivers that turn the scheduler's decisions into threads, tasks and exits.

Both runners share `_Driver`: it owns the `Scheduler`, carries out its
actions, keeps the tokens of every call in progress, logs what is stuck and
handles signals. They differ only at the edge — where a call runs and how an
event reaches the control loop:

* `ThreadedRunner`: a control thread reads events from a ``SimpleQueue``
  (re-entrant, so a signal handler may post to it). Sync calls run in daemon
  threads; async calls run on one private event-loop thread.
* `AsyncioRunner`: a control task reads events from an ``asyncio.Queue`` in
  the running loop. Async calls are tasks; sync calls run in daemon threads so
  that a blocking ``stop`` never blocks the loop.

Calls run in *daemon* threads that the runner tracks itself (not an executor,
whose threads are joined at exit): a call that overruns is abandoned, and an
abandoned thread must not keep the process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType, TracebackType
from typing import Any, Literal

import attrs
import structlog

from .._core.errors import ConfigError, StartupError
from .._core.scheduler import (
    Abandon,
    Action,
    AppStarted,
    CancelRun,
    CancelStart,
    ComponentInfo,
    Finished,
    Phase,
    RunComponent,
    Scheduler,
    StartComponent,
    StopComponent,
)
from .._core.states import AppState, ComponentState, ExitCode
from .._core.tokens import CancelSource, use_token
from .app import App
from .components import Call

__all__ = ["AsyncioRunner", "ThreadedRunner", "run"]

_log = structlog.get_logger("lifecycle")
DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

# Events posted to the control loop.
_Done = tuple[Literal["done"], str, Phase, BaseException | None]
_Shutdown = tuple[Literal["shutdown"], str]
_Tick = tuple[Literal["tick"]]
_Event = _Done | _Shutdown | _Tick


@attrs.define(eq=False)
class _Handle:
    """A call in progress: its token and where it runs (for diagnostics)."""

    source: CancelSource
    began: float
    thread_ident: int | None = None
    task: asyncio.Task[Any] | None = None
    task_loop: asyncio.AbstractEventLoop | None = None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class _Driver:
    """What both runners share. Subclasses implement `_post`, `_spawn_*`, `_wake_*`."""

    def __init__(
        self,
        app: App,
        *,
        signals: Iterable[int] | None = DEFAULT_SIGNALS,
        signal_grace: float = 1.0,
    ) -> None:
        if not isinstance(app, App):
            raise TypeError(f"a runner needs a lifecycle.App, got {type(app).__name__}")
        self.app = app
        self.signals = None if signals is None else tuple(signals)
        self.signal_grace = signal_grace
        self.clock: Callable[[], float] = time.monotonic
        self.scheduler: Scheduler | None = None
        self.exit_code: int | None = None
        self._handles: dict[tuple[str, Phase], _Handle] = {}
        self._started = threading.Event()
        self._finished = threading.Event()
        self._previous: dict[int, Any] = {}
        self._signals_thread: int | None = None
        self._first_signal: float | None = None
        self._began = 0.0
        self._health: Any = None
        self._threads = _CallThreads()

    # -- preparing ---------------------------------------------------------

    def _prepare(self) -> list[Action]:
        """Validate and build the scheduler; return its first actions.

        Raises:
            ConfigError: the declaration is invalid (exit code CONFIG).
        """
        app = self.app
        app._freeze()
        try:
            graph = app.graph()
        except ConfigError as error:
            _log.error("invalid app declaration", app=app.name, error=str(error))
            self._finish_now(ExitCode.CONFIG)
            raise
        plan = app.plan()
        if not plan.fits:
            _log.warning(
                "shutdown budget overrun",
                app=app.name,
                plan=plan.describe(),
                path=list(plan.path),
                hint="raise shutdown_timeout or lower the stop_timeouts on this path",
            )
        self.scheduler = Scheduler(
            graph,
            app._node_specs(graph),
            shutdown_timeout=app.shutdown_timeout,
            drain_delay=app.drain_delay,
            infos=app._infos,
            on_component=self._log_component,
            on_app=self._log_app,
            name=app.name,
        )
        if app.health_address is not None:
            from .._serving.health import HealthServer  # noqa: PLC0415 - only when asked for

            host, port = app.health_address
            try:
                self._health = HealthServer(app, host, port)
                self._health.start()
                app.health_address = (host, self._health.port)  # the port chosen for 0
            except OSError as error:
                message = (
                    f"app {app.name!r}: the health endpoint cannot listen on {host}:{port} "
                    f"({error.strerror or error}); choose another port in App(health=...)"
                )
                _log.error("invalid app declaration", app=app.name, error=message)
                self._finish_now(ExitCode.CONFIG)
                raise ConfigError(message) from None
        app._notify = self._notify_shutdown
        self._began = self.clock()
        if app.shutdown_reason is not None:
            return self.scheduler.request_shutdown(self._began, app.shutdown_reason)
        return self.scheduler.begin(self._began)

    def _finish_now(self, code: ExitCode) -> None:
        self.exit_code = code
        self.app.exit_code = code
        self.app._state = AppState.FAILED if code else AppState.STOPPED
        self._set_started()
        self._set_finished()

    def _notify_shutdown(self, reason: str) -> None:
        self._post(("shutdown", reason))

    # -- logging -----------------------------------------------------------

    def _log_component(
        self, info: ComponentInfo, before: ComponentState, after: ComponentState, spent: float
    ) -> None:
        fields: dict[str, Any] = {
            "component": info.name,
            "from_state": before.name,
            "to_state": after.name,
            "duration": round(spent, 6),
        }
        if after is ComponentState.FAILED and info.error is not None:
            fields["error"] = f"{type(info.error).__name__}: {info.error}"
            _log.error("transition", **fields)
        else:
            _log.info("transition", **fields)

    def _log_app(self, before: AppState, after: AppState, now: float) -> None:
        self.app._state = after
        _log.info(
            "app transition",
            app=self.app.name,
            from_state=before.name,
            to_state=after.name,
            reason=self.app.shutdown_reason if after is not AppState.STARTING else None,
        )

    def _log_summary(self, code: int) -> None:
        report = self.app.report()
        _log.info(
            "shutdown summary",
            app=self.app.name,
            exit_code=int(code),
            reason=self.app.shutdown_reason,
            duration=round(self.clock() - self._began, 6),
            components=report["components"],
        )

    # -- the control loop's work ---------------------------------------------

    def _dispatch(self, event: _Event) -> list[Action]:
        sched = self.scheduler
        assert sched is not None
        now = self.clock()
        actions: list[Action] = []
        if event[0] == "done":
            _, name, phase, error = event
            if self._handles.pop((name, phase), None) is None:
                return sched.tick(now)  # an abandoned call answered late
            if error is not None and not (phase == "run" and _is_cancel(error)):
                _log.error(
                    f"{phase}() raised",
                    component=name,
                    phase=phase,
                    exc_info=(type(error), error, error.__traceback__),
                )
            if phase == "start":
                actions = (
                    sched.start_finished(name, now)
                    if error is None
                    else sched.start_failed(name, now, error)
                )
            elif phase == "run":
                actions = sched.run_finished(name, now, error)
            else:
                actions = sched.stop_finished(name, now, error)
        elif event[0] == "shutdown":
            # Time the shutdown from the request (the signal), not from now.
            requested = self.app.shutdown_deadline
            at = now if requested is None else min(now, requested - self.app.shutdown_timeout)
            actions = sched.request_shutdown(max(at, self._began), event[1])
        actions += sched.tick(now)
        if sched.shutdown_reason is not None and self.app.shutdown_reason is None:
            # The scheduler decided to shut down by itself (a critical run
            # ended, a start failed): readiness, shutdown_token and the report
            # must say so just as for a requested shutdown.
            # _mark_shutdown, not request_shutdown: the scheduler already
            # knows, so no second shutdown event is posted to ourselves.
            self.app._mark_shutdown(sched.shutdown_reason)
        return actions

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StartComponent):
                self._call(action.name, "start", action.deadline)
            elif isinstance(action, RunComponent):
                self._call(action.name, "run", None)
            elif isinstance(action, StopComponent):
                self._call(action.name, "stop", action.deadline)
            elif isinstance(action, CancelStart | CancelRun):
                phase: Phase = "start" if isinstance(action, CancelStart) else "run"
                handle = self._handles.get((action.name, phase))
                if handle is not None:
                    handle.source.cancel(action.reason)
            elif isinstance(action, Abandon):
                self._abandon(action)
            elif isinstance(action, AppStarted):
                _log.info(
                    "app started",
                    app=self.app.name,
                    duration=round(self.clock() - self._began, 6),
                )
                self._set_started()
            elif isinstance(action, Finished):
                self._finish(action.exit_code)

    def _call(self, name: str, phase: Phase, deadline: float | None) -> None:
        now = self.clock()
        timeout = None if deadline is None else max(0.0, deadline - now)
        source = CancelSource(timeout=timeout)
        handle = _Handle(source, now)
        self._handles[(name, phase)] = handle
        call = self.app._component(name).phase(phase)
        if call.is_async:
            self._spawn_async(name, phase, call, handle)
        else:
            self._spawn_thread(name, phase, call, handle)

    def _thread_body(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        handle.thread_ident = threading.get_ident()
        token = handle.source.token
        error: BaseException | None = None
        try:
            with use_token(token):
                call.fn(*call.args(token))
        except BaseException as exc:  # noqa: BLE001 - every outcome is reported to the scheduler
            error = exc
        self._post(("done", name, phase, error))

    async def _task_body(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        handle.task = asyncio.current_task()
        handle.task_loop = asyncio.get_running_loop()
        handle.thread_ident = threading.get_ident()  # the loop's thread
        token = handle.source.token
        error: BaseException | None = None
        try:
            with use_token(token):
                await call.fn(*call.args(token))
        except BaseException as exc:  # noqa: BLE001 - every outcome is reported to the scheduler
            error = exc
        self._post(("done", name, phase, error))

    def _start_thread(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        self._threads.submit(
            lambda: self._thread_body(name, phase, call, handle), f"lifecycle:{name}.{phase}"
        )

    def _abandon(self, action: Abandon) -> None:
        handle = self._handles.pop((action.name, action.phase), None)
        stack = _stack_of(handle) if handle is not None else "(not running)"
        _log.error(
            "component stuck",
            component=action.name,
            phase=action.phase,
            reason=action.reason,
            stack=stack,
        )
        if handle is None:
            return
        handle.source.cancel(action.reason)
        task, loop = handle.task, handle.task_loop
        if task is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing to cancel
                loop.call_soon_threadsafe(task.cancel)

    def _finish(self, code: int) -> None:
        self.exit_code = code
        self.app.exit_code = ExitCode(code)
        self.app._notify = None
        for handle in self._handles.values():
            handle.source.cancel("app finished")
        self._log_summary(code)
        if self._health is not None:
            self._health.close()
        self._threads.close()
        self._set_started()
        self._set_finished()

    # -- signals -----------------------------------------------------------

    def _install_signals(self) -> None:
        if self.signals is None:
            return
        if threading.current_thread() is not threading.main_thread():
            _log.warning(
                "signal handlers not installed",
                app=self.app.name,
                reason="Python only allows signal handlers in the main thread",
                hint="pass signals=None and call app.request_shutdown() from your own handler",
            )
            return
        self._signals_thread = threading.get_ident()
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _restore_signals(self) -> None:
        if self._signals_thread is None or self._signals_thread != threading.get_ident():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._signals_thread = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes of whatever it was
        # doing: no logging, no locks that code may hold; only flags and the
        # re-entrant queue (via request_shutdown).
        now = time.monotonic()
        if self._first_signal is None:
            self._first_signal = now
            self.app.request_shutdown(f"signal {_signal_name(signum)}")
            return
        if now - self._first_signal < self.signal_grace or self._finished.is_set():
            return  # a storm of signals behaves like one
        self._force(signum)

    def _force(self, signum: int) -> None:
        """Second signal: say what is still running and exit at once, 128 + signum."""
        code = 128 + signum
        reporter = threading.Thread(target=self._report_forced, args=(signum,), daemon=True)
        reporter.start()
        reporter.join(0.5)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def _report_forced(self, signum: int) -> None:
        handles: dict[tuple[str, Phase], _Handle] = {}
        for _ in range(3):  # the control thread may change the table meanwhile
            with contextlib.suppress(RuntimeError):
                handles = dict(self._handles)
                break
        for (name, phase), handle in handles.items():
            _log.error(
                "forced exit: component still running",
                component=name,
                phase=phase,
                seconds=round(self.clock() - handle.began, 3),
                stack=_stack_of(handle),
            )
        _log.critical(
            "forced exit",
            app=self.app.name,
            signal=_signal_name(signum),
            exit_code=128 + signum,
            still_running=[f"{n}.{p}" for n, p in handles],
        )

    # -- hooks -------------------------------------------------------------

    def _post(self, event: _Event) -> None:
        raise NotImplementedError

    def _spawn_thread(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        raise NotImplementedError

    def _spawn_async(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        raise NotImplementedError

    def _set_started(self) -> None:
        self._started.set()

    def _set_finished(self) -> None:
        self._finished.set()

    def _startup_error(self) -> StartupError | None:
        sched = self.scheduler
        if sched is None or sched.startup_failure is None:
            return None
        name, why = sched.startup_failure
        return StartupError(
            name,
            f"component {name!r} failed to start: {why}; the components that had "
            f"started were stopped again (exit code {self.exit_code}). "
            f"See the log for its stack.",
            exit_code=self.exit_code if self.exit_code is not None else 1,
        )


def _is_cancel(error: BaseException) -> bool:
    from .._core.errors import Cancelled  # noqa: PLC0415 - local to keep the import graph flat

    return isinstance(error, Cancelled | asyncio.CancelledError)


def _stack_of(handle: _Handle) -> str:
    """Where a call is right now: its thread's frames or its task's coroutine stack."""
    running = handle.task is not None and getattr(handle.task.get_coro(), "cr_running", False)
    if handle.task is not None and not running:
        # Task.print_stack() shows only the task's own coroutine frame; follow
        # the chain of awaits down to where the user's code is suspended.
        frames: list[tuple[FrameType, int]] = []
        awaited: Any = handle.task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                break
            frames.append((frame, frame.f_lineno))
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        if not frames:
            return "(no stack: the task has not begun or already ended)"
        lines = traceback.StackSummary.extract(iter(frames)).format()
        return f"Stack of task {handle.task.get_name()!r} (most recent call last):\n" + "".join(
            lines
        )
    # A thread's call, or a task running right now (blocking its loop): the
    # frames are those of its thread.
    if handle.thread_ident is not None:
        frame = sys._current_frames().get(handle.thread_ident)
        if frame is not None:
            return "".join(traceback.format_stack(frame))
    return "(no stack: the call has not begun or already ended)"


class _CallThreads:
    """Daemon threads for sync calls, reused from one call to the next.

    Starting a thread per call costs milliseconds on a busy machine, which a
    layered shutdown pays once per layer. Here a thread whose call returned
    waits for the next one; a call that never returns simply keeps its
    thread, and the pool starts another. Idle threads end when the runner
    finishes, or after `IDLE` seconds without work.
    """

    IDLE = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], None], str] | None]] = []
        self._closed = False

    def submit(self, job: Callable[[], None], name: str) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(inbox,), name=name, daemon=True).start()
        inbox.put((job, name))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)

    def _work(self, inbox: queue.SimpleQueue[tuple[Callable[[], None], str] | None]) -> None:
        me = threading.current_thread()
        while True:
            try:
                item = inbox.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:  # still idle: leave
                        self._idle.remove(inbox)
                        return
                continue  # a job was handed over just now
            if item is None:
                return
            job, me.name = item
            job()  # _thread_body: never raises
            me.name = "lifecycle:idle"
            with self._lock:
                if self._closed:
                    return
                self._idle.append(inbox)


class _PrivateLoop:
    """One event-loop thread for the async components of a threaded app."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._main, name="lifecycle:asyncio", daemon=True
        )
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2.0)
        if not self.thread.is_alive():
            self.loop.close()


class ThreadedRunner(_Driver):
    """Runs an app on threads: ``start()``, ``wait()``, ``stop()``, or ``with``.

    Sync components run in daemon threads; async ones on one private event
    loop thread. The control loop runs in its own thread, so the caller is
    free between ``start()`` and ``wait()``.

    Args:
        app: the `App` to run (an App runs once).
        signals: the signals that request a graceful shutdown; a second one,
            after ``signal_grace`` seconds, forces the exit with 128 + signum.
            ``None`` installs no handler and touches no process-global state:
            the way to embed an app in a process that owns its signals.
        signal_grace: repeated signals within this many seconds of the first
            count as one (a storm of SIGTERMs is one SIGTERM).

    Example::

        with lifecycle.ThreadedRunner(app, signals=None) as runner:
            assert app.ready
            do_work()
        # leaving the block stopped the app; runner.exit_code says how it went

    Added in 0.1.
    """

    def __init__(
        self,
        app: App,
        *,
        signals: Iterable[int] | None = DEFAULT_SIGNALS,
        signal_grace: float = 1.0,
    ) -> None:
        super().__init__(app, signals=signals, signal_grace=signal_grace)
        self._queue: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._loop: _PrivateLoop | None = None
        self._control: threading.Thread | None = None

    def start(self) -> None:
        """Start every component in dependency order; return once all run.

        Raises:
            ConfigError: the declaration is invalid; nothing started (exit CONFIG).
            StartupError: a component failed to start; what had started was
                stopped again, and ``wait()`` returns the exit code.
        """
        actions = self._prepare()
        self._install_signals()
        self._control = threading.Thread(
            target=self._control_loop,
            args=(actions,),
            name=f"lifecycle:{self.app.name}",
            daemon=True,
        )
        self._control.start()
        self._started.wait()
        error = self._startup_error()
        if error is not None:
            self._finished.wait()
            self._restore_signals()
            raise error

    def wait(self) -> int:
        """Block until the app has stopped; return the exit code."""
        self._finished.wait()
        self._restore_signals()
        assert self.exit_code is not None
        return self.exit_code

    def stop(self, reason: str = "stop() called") -> int:
        """Request shutdown, wait for it, return the exit code (idempotent)."""
        self.app.request_shutdown(reason)
        return self.wait()

    def __enter__(self) -> ThreadedRunner:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop("the runner's with-block ended")

    def _post(self, event: _Event) -> None:
        self._queue.put(event)

    def _spawn_thread(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        self._start_thread(name, phase, call, handle)

    def _spawn_async(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        if self._loop is None:
            self._loop = _PrivateLoop()
        self._loop.submit(self._task_body(name, phase, call, handle))

    def _control_loop(self, actions: list[Action]) -> None:
        sched = self.scheduler
        assert sched is not None
        try:
            self._execute(actions)
            while not self._finished.is_set():
                deadline = sched.next_deadline()
                # No deadline pending means the app simply runs: the next
                # event (a shutdown request, a crash) is what wakes us.
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                try:
                    event: _Event = self._queue.get(timeout=timeout)
                except queue.Empty:
                    event = ("tick",)
                self._execute(self._dispatch(event))
        except BaseException:  # noqa: BLE001 - a crash must still end the app, never hang it
            _log.critical("lifecycle control loop crashed; this is a bug", exc_info=True)
            self._finish(ExitCode.FAILED)
        finally:
            if self._loop is not None:
                self._loop.close()


class AsyncioRunner(_Driver):
    """Runs an app in the running asyncio loop: ``await start()``, ``wait()``, ``stop()``.

    Async components are tasks in this loop; sync ones run in daemon
    threads, so a blocking ``stop`` never blocks the loop.

    Args:
        app: the `App` to run (an App runs once).
        signals: as for `ThreadedRunner`; ``None`` installs no handler.
        signal_grace: as for `ThreadedRunner`.

    Example::

        async def main():
            async with lifecycle.AsyncioRunner(app) as runner:
                await runner.wait()     # until SIGTERM
            return runner.exit_code

    Added in 0.1.
    """

    def __init__(
        self,
        app: App,
        *,
        signals: Iterable[int] | None = DEFAULT_SIGNALS,
        signal_grace: float = 1.0,
    ) -> None:
        super().__init__(app, signals=signals, signal_grace=signal_grace)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Event] | None = None
        self._control: asyncio.Task[None] | None = None
        self._started_async: asyncio.Event | None = None
        self._finished_async: asyncio.Event | None = None

    async def start(self) -> None:
        """Start every component in dependency order; return once all run.

        Raises:
            ConfigError: the declaration is invalid; nothing started (exit CONFIG).
            StartupError: a component failed to start; what had started was
                stopped again, and ``wait()`` returns the exit code.
        """
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._started_async = asyncio.Event()
        self._finished_async = asyncio.Event()
        actions = self._prepare()
        self._install_signals()
        self._control = self._loop.create_task(
            self._control_loop(actions), name=f"lifecycle:{self.app.name}"
        )
        await self._started_async.wait()
        error = self._startup_error()
        if error is not None:
            await self._finished_async.wait()
            self._restore_signals()
            raise error

    async def wait(self) -> int:
        """Wait until the app has stopped; return the exit code."""
        if self._finished_async is not None:
            await self._finished_async.wait()
        self._restore_signals()
        assert self.exit_code is not None
        return self.exit_code

    async def stop(self, reason: str = "stop() called") -> int:
        """Request shutdown, wait for it, return the exit code (idempotent)."""
        self.app.request_shutdown(reason)
        return await self.wait()

    async def __aenter__(self) -> AsyncioRunner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop("the runner's with-block ended")

    def _post(self, event: _Event) -> None:
        loop, q = self._loop, self._queue
        if loop is None or q is None:
            return
        # RuntimeError: the loop is closed; the app is long finished.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(q.put_nowait, event)

    def _set_started(self) -> None:
        super()._set_started()
        if self._started_async is not None:
            self._started_async.set()

    def _set_finished(self) -> None:
        super()._set_finished()
        if self._finished_async is not None:
            self._finished_async.set()

    def _spawn_thread(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        self._start_thread(name, phase, call, handle)

    def _spawn_async(self, name: str, phase: Phase, call: Call, handle: _Handle) -> None:
        assert self._loop is not None
        self._loop.create_task(
            self._task_body(name, phase, call, handle), name=f"lifecycle:{name}.{phase}"
        )

    async def _control_loop(self, actions: list[Action]) -> None:
        sched, q = self.scheduler, self._queue
        assert sched is not None
        assert q is not None
        try:
            self._execute(actions)
            while not self._finished.is_set():
                deadline = sched.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                try:
                    event: _Event = await asyncio.wait_for(q.get(), timeout)
                except TimeoutError:
                    event = ("tick",)
                self._execute(self._dispatch(event))
        except BaseException:
            _log.critical("lifecycle control loop crashed; this is a bug", exc_info=True)
            self._finish(ExitCode.FAILED)
            raise


RunnerKind = Literal["auto", "thread", "asyncio"]


def run(
    app: App,
    *,
    runner: RunnerKind = "auto",
    signals: Iterable[int] | None = DEFAULT_SIGNALS,
) -> int:
    """Start the app, serve until a signal or a shutdown request, stop it; return the exit code.

    Args:
        app: the `App` to run.
        runner: ``"thread"``, ``"asyncio"``, or ``"auto"`` (asyncio when any
            component is async).
        signals: the signals that request a graceful shutdown; None for none.

    Returns:
        An `ExitCode` value, or 128 + signum after a forced exit.

    Example::

        if __name__ == "__main__":
            sys.exit(lifecycle.run(app))

    Added in 0.1.
    """
    if runner not in ("auto", "thread", "asyncio"):
        raise ValueError(f"runner must be 'auto', 'thread' or 'asyncio', got {runner!r}")
    kind = runner
    if kind == "auto":
        kind = "asyncio" if app._any_async else "thread"
    if kind == "thread":
        threaded = ThreadedRunner(app, signals=signals)
        try:
            threaded.start()
        except ConfigError:
            return int(ExitCode.CONFIG)
        except StartupError:
            return threaded.wait()
        return threaded.wait()

    async def main() -> int:
        runner_ = AsyncioRunner(app, signals=signals)
        try:
            await runner_.start()
        except ConfigError:
            return int(ExitCode.CONFIG)
        except StartupError:
            return await runner_.wait()
        return await runner_.wait()

    return _run_loop(main())


_LEFTOVER_GRACE = 0.5
"""Seconds `run` gives tasks still pending after the app finished (abandoned calls,
tasks components spawned) to end once cancelled, before it closes the loop anyway."""


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """`asyncio.run`, except that the teardown is bounded.

    ``asyncio.run`` cancels the tasks left over and waits for them without a
    bound: one abandoned ``stop`` that swallows ``CancelledError`` would hold
    the process forever, past every timeout the app declared.
    """
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()

            async def settle() -> None:
                if leftovers:
                    await asyncio.wait(leftovers, timeout=_LEFTOVER_GRACE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(loop.shutdown_asyncgens(), _LEFTOVER_GRACE)

            loop.run_until_complete(settle())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
