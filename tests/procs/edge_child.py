"""A child process for tests/test_signals.py: the runtime's edges, one scenario per run.

Usage::

    python -m tests.procs.edge_child SCENARIO [RUNNER]

RUNNER is ``thread`` or ``asyncio`` (default ``thread``). Everything the
child has to say goes to stdout as JSON lines through structlog (the
library's events too); the parent reads them to synchronise and to assert.
The scenarios:

* ``host_handler``: no runner at all; the program's own SIGTERM handler
  calls ``app.request_shutdown()`` while the main thread polls
  ``app.shutdown_token.wait(0)`` in a tight loop — 20 fresh apps in a row,
  one SIGTERM each (the parent sends it on ``{"event": "polling"}``).
* ``fork``: a component's start forks a child (multiprocessing, ``fork``);
  its stop terminates it and reports how the child ended.
* ``after_run_thread``: once ``run`` returned, the program starts a
  non-daemon thread of its own that finishes its work, then raises.
* ``stuck_then_exit``: a component starts a non-daemon thread that never
  ends; after ``run``, the program calls ``sys.exit(5)``.
* ``stuck_then_crash_os_exit``: the same thread, then the program raises,
  on an interpreter whose wait for threads at exit cannot be shortened (as
  CPython 3.13's: the guard then ends the process itself).
* ``interrupt``: ``run(app, signals=(SIGHUP,))``: SIGINT is Python's own
  (KeyboardInterrupt); reports what ``run`` raised, the handlers and the app after.
* ``bad_signals``: ``run(app, signals=(SIGTERM, SIGKILL))``; then waits for a
  SIGTERM, which must end the process (the default handler is back).
* ``huge_timeouts``: ``App(shutdown_timeout=1e10, stop_timeout=1e10)``; the
  stop takes a moment.
* ``request_after_fork``: an App made before ``os.fork()``; the child asks
  it to shut down and reports whether its token was cancelled.
* ``clean_teardown``: the app stops in time, but a task it left on the
  threaded runner's private loop blocks that loop for 1.5 s when cancelled;
  the program logs once ``run`` returned.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from types import FrameType

import lifecycle
from lifecycle import App, CancelToken
from lifecycle._runtime import watchdog
from tests.procs import log_json_lines

log = log_json_lines()

ITERATIONS = 20
"""Fresh apps in the host_handler scenario, one SIGTERM each."""
POLL_BOUND = 10.0
"""Seconds one host_handler iteration polls before it gives up (then the test fails)."""
FOREVER = threading.Event()  # never set: what a stuck thread waits on


def waiting_worker(app: App) -> None:
    @app.worker(name="worker")
    def worker(token: CancelToken) -> None:
        token.wait()


def host_handler() -> int:
    for i in range(ITERATIONS):
        app = App(f"host-{i}")
        waiting_worker(app)

        def on_sigterm(signum: int, frame: FrameType | None, app: App = app) -> None:
            app.request_shutdown("host SIGTERM")  # all a host's handler should do

        signal.signal(signal.SIGTERM, on_sigterm)
        log.info("polling", i=i)
        end = time.monotonic() + POLL_BOUND
        while time.monotonic() < end and not app.shutdown_token.wait(0):
            pass
        log.info("iteration done", i=i, cancelled=app.shutdown_token.cancelled)
    return 0


def _sleep_in_forked_child() -> None:
    time.sleep(30)


class Forks:
    """Starts a forked child process; stops it with terminate() (SIGTERM)."""

    def start(self, token: CancelToken) -> None:
        self.process = multiprocessing.get_context("fork").Process(target=_sleep_in_forked_child)
        self.process.start()

    def stop(self, token: CancelToken) -> None:
        self.process.terminate()
        self.process.join(5)
        log.info("forked child", alive=self.process.is_alive(), exitcode=self.process.exitcode)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def fork(runner: str) -> int:
    app = App("fork", shutdown_timeout=10, stop_timeout=8)
    app.add(Forks(), name="pool")
    return lifecycle.run(app, runner=runner)  # type: ignore[arg-type]


def after_run_thread(runner: str) -> int:
    app = App("after", shutdown_timeout=0.2)
    waiting_worker(app)
    code = lifecycle.run(app, runner=runner)  # type: ignore[arg-type]
    log.info("run returned", code=code)

    def upload() -> None:
        time.sleep(1.5)  # the program's own work, longer than the exit guard's margin
        log.info("upload done")

    threading.Thread(target=upload, name="upload", daemon=False).start()
    raise RuntimeError("the program failed after run()")


class StartsAThread:
    def start(self, token: CancelToken) -> None:
        threading.Thread(target=FOREVER.wait, name="user:stuck", daemon=False).start()

    def stop(self, token: CancelToken) -> None:
        pass


def stuck_then_exit(runner: str) -> int:
    app = App("stuck", shutdown_timeout=0.5)
    app.add(StartsAThread(), name="starter")
    code = lifecycle.run(app, runner=runner)  # type: ignore[arg-type]
    log.info("run returned", code=code)
    sys.exit(5)


def stuck_then_crash_os_exit(runner: str) -> int:
    watchdog._release_from_exit_wait = lambda threads: False  # as where it cannot be done
    app = App("stuck", shutdown_timeout=0.5)
    app.add(StartsAThread(), name="starter")
    code = lifecycle.run(app, runner=runner)  # type: ignore[arg-type]
    log.info("run returned", code=code)
    raise RuntimeError("the program failed after run()")


class Noted:
    def start(self, token: CancelToken) -> None:
        log.info("call", what="start")

    def stop(self, token: CancelToken) -> None:
        log.info("call", what="stop")


def interrupt(runner: str) -> int:
    app = App("interrupt", shutdown_timeout=5)
    app.add(Noted(), name="db")
    try:
        code = lifecycle.run(app, runner=runner, signals=(signal.SIGHUP,))  # type: ignore[arg-type]
        log.info("run returned", code=code)
    except BaseException as error:
        log.info("run raised", error=type(error).__name__)
    log.info(
        "after",
        sighup_restored=signal.getsignal(signal.SIGHUP) is signal.SIG_DFL,
        sigint_restored=signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        state=app.state.name,
    )
    return 0


def bad_signals(runner: str) -> int:
    app = App("bad")
    waiting_worker(app)
    try:
        lifecycle.run(app, runner=runner, signals=(signal.SIGTERM, signal.SIGKILL))  # type: ignore[arg-type]
    except lifecycle.ConfigError as error:
        log.info("run raised", error=type(error).__name__, message=str(error))
    log.info("waiting", handler_is_default=signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    FOREVER.wait(10)  # a SIGTERM ends the process before this returns
    log.info("still alive")
    return 0


class SlowStop:
    def start(self, token: CancelToken) -> None:
        pass

    def stop(self, token: CancelToken) -> None:
        token.wait(0.2)


def huge_timeouts(runner: str) -> int:
    app = App("huge", shutdown_timeout=1e10, stop_timeout=1e10)
    app.add(SlowStop(), name="db")
    return lifecycle.run(app, runner=runner)  # type: ignore[arg-type]


async def _blocks_its_loop_when_cancelled() -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        time.sleep(1.5)  # a synchronous wait in the loop's thread, as the loop closes
        raise


class LeavesATask:
    async def start(self, token: CancelToken) -> None:
        self.task = asyncio.get_running_loop().create_task(_blocks_its_loop_when_cancelled())

    async def stop(self, token: CancelToken) -> None:
        pass


def clean_teardown(runner: str) -> int:
    app = App("teardown", shutdown_timeout=0.3)
    app.add(LeavesATask(), name="spawner")
    code = lifecycle.run(app, runner="thread")
    log.info("run returned", code=code)
    return code


def request_after_fork(runner: str) -> int:
    app = App("forked")  # the lifecycle-deferred thread runs in this process now
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are not here
        app.request_shutdown("in the forked child")
        os._exit(0 if app.shutdown_token.wait(5) else 1)
    _, status = os.waitpid(pid, 0)
    log.info("forked child", exitcode=os.waitstatus_to_exitcode(status))
    return 0


def main() -> int:
    scenario = sys.argv[1]
    runner = sys.argv[2] if len(sys.argv) > 2 else "thread"
    if scenario == "host_handler":
        return host_handler()
    scenarios = {
        "fork": fork,
        "after_run_thread": after_run_thread,
        "stuck_then_exit": stuck_then_exit,
        "stuck_then_crash_os_exit": stuck_then_crash_os_exit,
        "interrupt": interrupt,
        "bad_signals": bad_signals,
        "huge_timeouts": huge_timeouts,
        "clean_teardown": clean_teardown,
        "request_after_fork": request_after_fork,
    }
    return scenarios[scenario](runner)


if __name__ == "__main__":
    sys.exit(main())
