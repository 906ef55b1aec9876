"""The one runner fixture's driver: each test of a runner behaviour runs on both runners.

`Drive` makes the threaded and the asyncio runner look alike to a test
(plain blocking calls, each bounded); the ``drive`` fixture in conftest.py
parametrises over `RUNNERS`, as anyio's ``anyio_backend`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from lifecycle import App, AsyncioRunner, ThreadedRunner

BOUND = 10.0
"""Seconds: the most any wait in these tests may take before it fails (a hang
detector: passing tests never wait for it)."""

RUNNERS = ["thread", "asyncio"]


def wait_until(predicate: Callable[[], bool], timeout: float = BOUND) -> None:
    """Poll ``predicate`` (a state written by another thread) until true, bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


class Drive:
    """Drives one kind of runner through plain blocking calls, each bounded.

    ``thread``: a `ThreadedRunner`, its blocking calls made in a helper thread.
    ``asyncio``: an `AsyncioRunner` in a dedicated event-loop thread.
    Either way the test thread stays free to poke the app while a call runs.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.runner: ThreadedRunner | AsyncioRunner | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: threading.Thread | None = None
        if kind == "asyncio":
            self.loop = asyncio.new_event_loop()
            self.loop_thread = threading.Thread(
                target=self.loop.run_forever, name="test:loop", daemon=True
            )
            self.loop_thread.start()

    def __repr__(self) -> str:
        return f"<Drive {self.kind}>"

    def _submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        if self.loop is not None:

            async def body() -> Any:
                return await call()

            return asyncio.run_coroutine_threadsafe(body(), self.loop)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(call())
            except BaseException as error:
                future.set_exception(error)

        threading.Thread(target=run, name="test:call", daemon=True).start()
        return future

    def make(self, app: App, **kwargs: Any) -> ThreadedRunner | AsyncioRunner:
        kwargs.setdefault("signals", None)
        cls = ThreadedRunner if self.kind == "thread" else AsyncioRunner
        self.runner = cls(app, **kwargs)
        return self.runner

    def start_soon(self, app: App, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Begin ``start()``; the future resolves when it returns or raises."""
        runner = self.make(app, **kwargs)
        return self._submit(runner.start)

    def start(self, app: App, **kwargs: Any) -> None:
        self.start_soon(app, **kwargs).result(BOUND)

    def start_again(self) -> None:
        """``start()`` once more on the same runner."""
        assert self.runner is not None
        self._submit(self.runner.start).result(BOUND)

    def wait(self, timeout: float = BOUND) -> int:
        assert self.runner is not None
        return int(self._submit(self.runner.wait).result(timeout))

    def stop(self, reason: str = "test", timeout: float = BOUND) -> int:
        assert self.runner is not None
        runner = self.runner
        return int(self._submit(lambda: runner.stop(reason)).result(timeout))

    def close(self) -> None:
        runner = self.runner
        if runner is not None and runner.exit_code is None and runner.scheduler is not None:
            runner.app.request_shutdown("test teardown")
            with contextlib.suppress(Exception):
                self.wait()
        if self.loop is not None and self.loop_thread is not None:
            loop = self.loop

            async def cancel_rest() -> None:
                rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in rest:
                    task.cancel()
                if rest:
                    await asyncio.wait(rest, timeout=BOUND)

            asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(BOUND * 2)
            loop.call_soon_threadsafe(loop.stop)
            self.loop_thread.join(BOUND)
            loop.close()
