"""A child process for tests/test_signals.py: one app, one fault, real signals.

Usage::

    python -m tests.procs.app_child RUNNER SCENARIO

RUNNER is ``thread`` or ``asyncio``. The components follow the runner (sync
ones for ``thread``, async ones for ``asyncio``) except ``cache``, which is
always of the other kind, so that every run mixes both. The graph::

    db <- cache <- api          worker -> db

Everything the child has to say goes to stdout as JSON lines through
structlog: the library's own events, and ``{"event": "call", "what":
"start"|"started"|"stop"|"stopped", "component": ...}`` for each call. The
parent reads them to synchronise (readiness is the "app started" event, not a
sleep) and to assert. Lines on stdin are commands: ``crash`` makes the worker
raise, ``stop`` calls ``app.request_shutdown()`` from a non-main thread,
``release`` lets a held stop (``held_stop``) return.

The app runs under ``lifecycle.run`` (which owns the process), except in the
``embedded_*`` scenarios: there an `AsyncioRunner` with ``signals=None`` runs
inside ``lifecycle.asyncio_run(main())``, the documented embedding.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import lifecycle
from lifecycle import App, CancelToken
from tests.procs import log_json_lines

log = log_json_lines()

FOREVER = threading.Event()  # never set: what a stuck call waits on
CRASH = threading.Event()
RELEASE = threading.Event()  # set by the "release" command: a held stop returns
HOLD_BOUND = 10.0
"""Seconds a held stop waits for "release" at most."""


def call(what: str, name: str) -> None:
    log.info("call", what=what, component=name)


Hook = Callable[[CancelToken], Any]


class Sync:
    def __init__(self, name: str, start: Hook | None = None, stop: Hook | None = None) -> None:
        self.name, self.on_start, self.on_stop = name, start, stop

    def start(self, token: CancelToken) -> None:
        call("start", self.name)
        if self.on_start is not None:
            self.on_start(token)
        call("started", self.name)

    def stop(self, token: CancelToken) -> None:
        call("stop", self.name)
        if self.on_stop is not None:
            self.on_stop(token)
        call("stopped", self.name)


class Async:
    def __init__(self, name: str, start: Hook | None = None, stop: Hook | None = None) -> None:
        self.name, self.on_start, self.on_stop = name, start, stop

    async def start(self, token: CancelToken) -> None:
        call("start", self.name)
        if self.on_start is not None:
            await self.on_start(token)
        call("started", self.name)

    async def stop(self, token: CancelToken) -> None:
        call("stop", self.name)
        if self.on_stop is not None:
            await self.on_stop(token)
        call("stopped", self.name)


# -- the faults; a line ending in "# <name>" is where the stack must point --------


def stuck_sync(token: CancelToken) -> None:
    FOREVER.wait()  # <stuck-sync>


async def stuck_async(token: CancelToken) -> None:
    await asyncio.sleep(3600)  # <stuck-async>


def user_thread() -> None:
    """A stuck non-daemon thread: only a forced exit can end the process now."""
    threading.Thread(target=FOREVER.wait, name="user:non-daemon", daemon=False).start()


def stuck_sync_with_thread(token: CancelToken) -> None:
    user_thread()
    FOREVER.wait()  # <force-sync>


async def stuck_async_blocking_the_loop(token: CancelToken) -> None:
    user_thread()
    FOREVER.wait()  # <force-loop>


async def blocking_the_loop(token: CancelToken) -> None:
    time.sleep(30)  # <block-loop>


def start_user_thread(token: CancelToken) -> None:
    user_thread()


async def astart_user_thread(token: CancelToken) -> None:
    user_thread()


async def stubborn_async(token: CancelToken) -> None:
    while True:
        try:
            await asyncio.sleep(3600)  # <stubborn>
        except asyncio.CancelledError:
            log.info("swallowed a cancellation")


async def swallows_everything(token: CancelToken) -> None:
    while True:
        try:  # noqa: SIM105 - the fault under test, spelled as it is found in the field
            await asyncio.sleep(3600)  # <swallows-all>
        except BaseException:  # swallows even the GeneratorExit of a close
            pass


def wait_cancelled(token: CancelToken) -> None:
    token.wait()
    token.raise_if_cancelled()


async def await_cancelled(token: CancelToken) -> None:
    await token.wait_async()
    token.raise_if_cancelled()


def boom(token: CancelToken) -> None:
    raise RuntimeError("boom")


async def aboom(token: CancelToken) -> None:
    raise RuntimeError("boom")


def slow(token: CancelToken) -> None:
    token.wait(0.5)


def held(token: CancelToken) -> None:
    RELEASE.wait(HOLD_BOUND)


async def aheld(token: CancelToken) -> None:
    await asyncio.to_thread(RELEASE.wait, HOLD_BOUND)


async def aslow(token: CancelToken) -> None:
    await token.wait_async(0.5)


def build(runner: str, scenario: str) -> App:
    is_async = runner == "asyncio"
    main_kind: Any = Async if is_async else Sync
    other_kind: Any = Sync if is_async else Async
    shutdown_timeouts = {"block_loop": 1.0, "user_thread": 2.0, "user_thread_timeout": 2.0}
    shutdown_timeout = shutdown_timeouts.get(scenario, 10.0)
    app = App("child", stop_timeout=3, start_timeout=5, shutdown_timeout=shutdown_timeout)

    def pick(sync_hook: Hook, async_hook: Hook, kind: Any = main_kind) -> Hook:
        return async_hook if kind is Async else sync_hook

    db_start = cache_start = cache_stop = api_stop = None
    slow_start = None
    slow_timeout = 5.0
    api_kind = main_kind
    api_timeout: dict[str, Any] = {}
    critical = True
    if scenario == "force":
        api_stop = pick(stuck_sync_with_thread, stuck_async_blocking_the_loop)
    elif scenario == "startup_signal":
        slow_start = pick(wait_cancelled, await_cancelled)
    elif scenario == "start_failure":
        cache_start = pick(boom, aboom, other_kind)
    elif scenario == "start_timeout":
        slow_start = pick(stuck_sync, stuck_async)
        slow_timeout = 0.2
    elif scenario == "stop_raises":
        cache_stop = pick(boom, aboom, other_kind)
    elif scenario == "stop_overrun":
        api_stop = pick(stuck_sync, stuck_async)
        api_timeout = {"stop_timeout": 0.2}
    elif scenario in ("stop_stubborn", "embedded_stubborn"):
        api_kind, api_stop = Async, stubborn_async
        api_timeout = {"stop_timeout": 0.2}
    elif scenario in ("stop_swallows_all", "embedded_swallows_all"):
        api_kind, api_stop = Async, swallows_everything
        api_timeout = {"stop_timeout": 0.2}
    elif scenario == "block_loop":
        api_kind, api_stop = Async, blocking_the_loop
    elif scenario == "user_thread":
        db_start = pick(start_user_thread, astart_user_thread)
    elif scenario == "user_thread_timeout":
        db_start = pick(start_user_thread, astart_user_thread)
        api_stop = pick(stuck_sync, stuck_async)
        api_timeout = {"stop_timeout": 0.2}
    elif scenario == "storm":
        api_stop = pick(slow, aslow)
    elif scenario == "held_stop":
        api_stop = pick(held, aheld)
    elif scenario == "run_crash_noncritical":
        critical = False

    app.add(main_kind("db", start=db_start), name="db")
    app.add(
        other_kind("cache", start=cache_start, stop=cache_stop), name="cache", depends_on=["db"]
    )
    if slow_start is not None:
        app.add(main_kind("slow", start=slow_start), name="slow", depends_on=["cache"],
                start_timeout=slow_timeout)  # fmt: skip
    app.add(api_kind("api", stop=api_stop), name="api",
            depends_on=["cache", "slow"] if slow_start else ["cache"], **api_timeout)  # fmt: skip

    if is_async:

        @app.worker(name="worker", depends_on=["db"], critical=critical)
        async def aworker(token: CancelToken) -> None:
            call("run", "worker")
            while not await token.wait_async(0.01):
                if CRASH.is_set():
                    raise RuntimeError("worker crashed")
            call("run-end", "worker")

    else:

        @app.worker(name="worker", depends_on=["db"], critical=critical)
        def worker(token: CancelToken) -> None:
            call("run", "worker")
            while not token.wait(0.01):
                if CRASH.is_set():
                    raise RuntimeError("worker crashed")
            call("run-end", "worker")

    return app


def commands(app: App) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "crash":
            CRASH.set()
        elif command == "stop":
            app.request_shutdown("stdin: stop")
        elif command == "release":
            RELEASE.set()


async def embedded(app: App) -> int:
    """The documented embedding: an AsyncioRunner in the program's own coroutine."""
    async with lifecycle.AsyncioRunner(app, signals=None) as runner:
        code = await runner.wait()
    log.info("exiting", code=code)
    return code


def main() -> int:
    runner, scenario = sys.argv[1], sys.argv[2]
    app = build(runner, scenario)
    threading.Thread(target=commands, args=(app,), name="stdin", daemon=True).start()

    own_calls: list[int] = []

    def own_handler(signum: int, frame: object) -> None:
        own_calls.append(signum)

    if scenario == "restore":
        signal.signal(signal.SIGTERM, own_handler)
    before = {s.name: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if scenario.startswith("embedded_"):
        return lifecycle.asyncio_run(embedded(app))
    code = lifecycle.run(app, runner=runner)  # type: ignore[arg-type]
    after = {s.name: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if scenario == "restore":
        during = list(own_calls)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by own_handler, right here
        log.info(
            "handlers",
            restored=before == after,
            own_calls_during_run=during,
            own_calls_after=own_calls[len(during) :],
        )
    log.info("exiting", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
