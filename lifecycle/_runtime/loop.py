"""One bounded event-loop teardown, and `asyncio_run`, the bounded ``asyncio.run``.

``asyncio.run`` ends by cancelling every task left in the loop and waiting
for all of them *without a bound*. One abandoned ``stop`` that swallows
``CancelledError`` (``except BaseException: pass`` in a retry loop is
enough) then holds the process forever, past every timeout the app
declared. `close_loop` is the teardown every loop of the runtime goes
through — `lifecycle.run`'s, `asyncio_run`'s and the threaded runner's
private loop: cancel what is left, give it a bounded time to finish (its
``finally`` blocks run now, on the loop, not later at garbage collection),
shut the async generators down within the same bound, report what is still
pending with its stack, and close the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from .stacks import task_stack

__all__ = ["TEARDOWN_TIMEOUT", "asyncio_run", "close_loop"]

_log = structlog.get_logger("lifecycle")
T = TypeVar("T")

TEARDOWN_TIMEOUT = 0.5
"""Seconds the tasks left in a loop get to end once cancelled, and again the async
generators to close, before the loop is closed anyway."""


def close_loop(loop: asyncio.AbstractEventLoop, timeout: float = TEARDOWN_TIMEOUT) -> None:
    """Cancel the tasks left in ``loop``, wait for them (bounded), then close it.

    Call it in the loop's thread once the loop stopped running. At most
    about ``2 * timeout`` seconds: ``timeout`` for the cancelled tasks, and
    ``timeout`` for ``shutdown_asyncgens``. A task still pending after that
    (it swallows cancellation) is logged with its stack and left behind.
    """
    try:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()

        async def settle() -> None:
            if leftovers:
                await asyncio.wait(leftovers, timeout=timeout)
            # asyncio.wait, not wait_for: wait_for waits without a bound for
            # a cancelled awaitable to finish cancelling.
            closing = asyncio.ensure_future(loop.shutdown_asyncgens())
            _, pending = await asyncio.wait({closing}, timeout=timeout)
            for task in pending:
                task.cancel()

        loop.run_until_complete(settle())
        for task in leftovers:
            if not task.done():
                _log.error(
                    "task still pending when its event loop closed",
                    task=task.get_name(),
                    stack=task_stack(task) or "(no stack)",
                    hint="it did not end within its teardown bound once cancelled: "
                    "does it catch CancelledError (or BaseException) and carry on?",
                )
            elif not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "a task left in the event loop raised during its teardown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
    finally:
        loop.close()


def asyncio_run(main: Coroutine[Any, Any, T], *, teardown_timeout: float = TEARDOWN_TIMEOUT) -> T:
    """Run ``main`` in a new event loop and return its result: ``asyncio.run``, bounded.

    Use it instead of ``asyncio.run`` to run a program that embeds an
    `AsyncioRunner`: the teardown — cancelling the tasks left over, closing
    the async generators — takes at most about ``2 * teardown_timeout``
    seconds, where ``asyncio.run`` waits without a bound for an abandoned
    task that swallows its cancellation. `lifecycle.run` uses it.

    Args:
        main: the coroutine to run, e.g. ``main()``.
        teardown_timeout: seconds the tasks left over get to end once
            cancelled (and again the async generators to close).

    Raises:
        RuntimeError: called from a running event loop.
        TypeError: ``main`` is not a coroutine.

    Example::

        async def main() -> int:
            async with lifecycle.AsyncioRunner(app) as runner:
                await runner.wait()
            return runner.exit_code

        sys.exit(lifecycle.asyncio_run(main()))

    Added in 0.1.
    """
    if not asyncio.iscoroutine(main):
        raise TypeError(
            f"asyncio_run() needs a coroutine, got {type(main).__name__}: call the "
            f"function, as in asyncio_run(main())"
        )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        main.close()
        raise RuntimeError(
            "asyncio_run() cannot be called from a running event loop; await the coroutine instead"
        )
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            close_loop(loop, teardown_timeout)
        finally:
            asyncio.set_event_loop(None)
