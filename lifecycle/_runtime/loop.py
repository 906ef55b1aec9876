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

What is still pending then swallows every cancellation, and most likely
every exception: closing it would throw ``GeneratorExit`` in, which it
swallows too, looping for good — at garbage collection, or at interpreter
exit, which closes what is left. So it is left *unclosed*: `close_loop`
hands it to `deferred.keep`, which holds it until the process ends; its
``finally`` blocks never run.

`asyncio_run` does two things more than ``asyncio.run`` before that
teardown. The `AsyncioRunner` apps still running in the loop when ``main``
ends (it returned early, or raised) are stopped first, each bounded by its
shutdown deadline: their stops run, and the exception of ``main``, if any,
propagates after. And, as ``asyncio.run`` does, a first Ctrl-C (while
SIGINT has Python's default handler) cancels ``main`` instead of raising
inside whatever task runs — a runner's control task included —, and
`asyncio_run` raises ``KeyboardInterrupt`` once ``main`` has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import weakref
from collections.abc import Coroutine
from types import FrameType
from typing import Any, Protocol, TypeVar

from .._core.log import get_logger
from . import deferred
from .signals import SignalHandlers, SignalWakeup
from .stacks import task_stack

__all__ = ["TEARDOWN_TIMEOUT", "asyncio_run", "close_loop", "finish_before_teardown"]

_log = get_logger()
T = TypeVar("T")


class Finishing(Protocol):
    """What `asyncio_run` finishes before its teardown (an `AsyncioRunner`)."""

    async def _finish_before_teardown(self, reason: str) -> None:
        """Bounded; nothing to do once finished."""


TEARDOWN_TIMEOUT = 0.5
"""Seconds the tasks left in a loop get to end once cancelled, and again the async
generators to close, before the loop is closed anyway."""


# Weak both ways: a loop or a runner nobody holds any more is no one's business here
# (a running runner is held by its control task).
_finishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakSet[Finishing]] = (
    weakref.WeakKeyDictionary()
)


def finish_before_teardown(loop: asyncio.AbstractEventLoop, what: Finishing) -> None:
    """Have `asyncio_run` await ``what._finish_before_teardown(reason)`` once ``main`` ended.

    An `AsyncioRunner` registers itself here as it starts, so that its app
    stops (bounded) before the loop's teardown cancels what is left.
    """
    _finishers.setdefault(loop, weakref.WeakSet()).add(what)


def close_loop(loop: asyncio.AbstractEventLoop, timeout: float = TEARDOWN_TIMEOUT) -> None:
    """Cancel the tasks left in ``loop``, wait for them (bounded), then close it.

    Call it in the loop's thread once the loop stopped running. At most
    about ``2 * timeout`` seconds: ``timeout`` for the cancelled tasks, and
    ``timeout`` for ``shutdown_asyncgens``. A task still pending after that
    (it swallows cancellation) is logged with its stack and left unclosed:
    held until the process ends, so that nothing ever closes it (see the
    module's docstring).
    """
    try:
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        stubborn: list[asyncio.Future[Any]] = []

        async def settle() -> None:
            if leftovers:
                await asyncio.wait(leftovers, timeout=timeout)
            # asyncio.wait, not wait_for: wait_for waits without a bound for
            # a cancelled awaitable to finish cancelling.
            closing = asyncio.ensure_future(loop.shutdown_asyncgens())
            _, pending = await asyncio.wait({closing}, timeout=timeout)
            for task in pending:
                task.cancel()
                stubborn.append(task)

        loop.run_until_complete(settle())
        for task in leftovers:
            if not task.done():
                stubborn.append(task)
                _log.error(
                    "task still pending when its event loop closed",
                    task=task.get_name(),
                    stack=task_stack(task) or "(no stack)",
                    hint="it did not end within its teardown bound once cancelled: "
                    "does it catch CancelledError (or BaseException) and carry on? It is "
                    "left unclosed (its finally blocks never run) until the process exits",
                )
            elif not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "a task left in the event loop raised during its teardown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
        if stubborn:
            deferred.keep(stubborn)
    finally:
        loop.close()


async def _finish_runners(loop: asyncio.AbstractEventLoop, reason: str) -> None:
    finishing = list(_finishers.pop(loop, ()))
    if finishing:
        await asyncio.gather(
            *(what._finish_before_teardown(reason) for what in finishing), return_exceptions=True
        )


class _CancelOnInterrupt:
    """SIGINT, while Python's default handler has it: the first cancels ``main``, a second raises.

    As ``asyncio.run`` does: a ``KeyboardInterrupt`` raised inside whatever
    task happens to run (a runner's control task) would leave that task
    dead and its app half stopped.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._handlers = SignalHandlers()
        self._wakeup = SignalWakeup()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if self.interrupted or main.done():
                raise KeyboardInterrupt
            self.interrupted = True
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(main.cancel)

        self._handlers.install((signal.SIGINT,), on_sigint)
        # A SIGINT that hits another thread wakes the loop's select, so that
        # the main thread runs on_sigint at once.
        if self._wakeup.install():
            self._loop = loop
            loop.add_reader(self._wakeup.fileno(), self._wakeup.drain)

    def restore(self) -> None:
        self._handlers.restore()
        loop, fd = self._loop, self._wakeup.fileno()
        if loop is not None and fd >= 0 and threading.current_thread() is threading.main_thread():
            loop.remove_reader(fd)  # a no-op on a closed loop
        self._wakeup.restore()


def asyncio_run(main: Coroutine[Any, Any, T], *, teardown_timeout: float = TEARDOWN_TIMEOUT) -> T:
    """Run ``main`` in a new event loop and return its result: ``asyncio.run``, bounded.

    Use it instead of ``asyncio.run`` to run a program that embeds an
    `AsyncioRunner`: the teardown — cancelling the tasks left over, closing
    the async generators — takes at most about ``2 * teardown_timeout``
    seconds, where ``asyncio.run`` waits without a bound for an abandoned
    task that swallows its cancellation (such a task is logged with its
    stack and left unclosed until the process exits). Before the teardown,
    an app whose runner still runs when ``main`` ends (it returned or
    raised) is stopped, bounded by its shutdown deadline, and ``main``'s
    exception propagates after. A first Ctrl-C cancels ``main`` (its runners
    stop their apps) and then raises ``KeyboardInterrupt``; a second one
    raises at once. `lifecycle.run` uses it.

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
    interrupt = _CancelOnInterrupt()
    try:
        asyncio.set_event_loop(loop)
        task = loop.create_task(main)
        interrupt.install(loop, task)
        reason = "the program's main() returned"
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupt.interrupted:
                reason = "KeyboardInterrupt"
                raise KeyboardInterrupt from None
            reason = "the program's main() was cancelled"
            raise
        except BaseException as error:
            reason = f"the program's main() raised {type(error).__name__}"
            raise
        finally:
            # The apps still running stop first, their stops called (bounded).
            loop.run_until_complete(_finish_runners(loop, reason + " with the app still running"))
    finally:
        try:
            interrupt.restore()
            close_loop(loop, teardown_timeout)
        finally:
            asyncio.set_event_loop(None)
