"""The shutdown deadline holds even when the control loop cannot keep it.

A runner enforces every deadline from its control loop — as long as that
loop runs. The asyncio runner's loop is the application's own: one
synchronous call inside an ``async def`` (``time.sleep``, a blocking client,
a CPU-bound parse), the most common asyncio bug there is, stops it, and the
runner's timers with it. Two guards keep "bounded" true whatever user code
does:

* `Watchdog`: a thread per run that knows the shutdown deadline without
  the loop's help (it is woken, signal-safely, by every shutdown request).
  When the run has not finished `MARGIN` seconds past the deadline it logs
  where the loop's thread is stuck — its stack — and what still runs. Under
  `lifecycle.run`, which owns the process, it then ends the process with
  exit code TIMEOUT. An embedded runner reports instead of exiting: the
  threaded runner's ``wait()`` returns TIMEOUT; the asyncio runner's cannot
  return while its loop is blocked (nothing can preempt a synchronous call
  in the loop's thread but the process's owner), so the report is what it
  gets. The watchdog is also where a forced exit (a second signal) is
  carried out, so that a signal handler never starts a thread.
* `guard_interpreter_exit`: after `lifecycle.run` returned, the interpreter
  joins every non-daemon thread before the process can exit — forever, for
  a thread a component started that never ends. The guard concerns only
  those: the non-daemon threads alive when ``run`` returned that were not
  alive when it began. Threads the program starts afterwards are its own
  business, joined as usual. The guard gives the app's threads until the
  shutdown deadline (at least `MARGIN`), then logs their names and stacks
  and lets the interpreter exit without them, with the exit code it was
  exiting with (the ``sys.exit`` code, 1 after an unhandled exception).
  Where the interpreter's wait cannot be shortened (CPython 3.13 and later
  join in C), it ends the process with ``os._exit`` instead: code 1 if an
  unhandled exception reached the top since ``run`` returned, else the code
  ``run`` returned.

Every wait here goes through `wait_timeout`: a timeout of
``threading.TIMEOUT_MAX`` or more (an infinite shutdown_timeout) is a wait
without one, never an ``OverflowError``.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._core.log import get_logger
from .signals import helper_thread, report_bounded
from .stacks import thread_stack

__all__ = ["MARGIN", "Watchdog", "guard_interpreter_exit", "wait_timeout"]

_log = get_logger()

MARGIN = 0.5
"""Seconds past the shutdown deadline before the watchdog acts (the control loop's own
timers come first), and the least time non-daemon threads get at interpreter exit."""


def wait_timeout(seconds: float | None) -> float | None:
    """``seconds`` as a timeout a thread can wait: never negative, None for no bound.

    None also for ``threading.TIMEOUT_MAX`` seconds and more (about 292 years,
    or an infinite timeout): no thread can wait that long (``OverflowError``).
    """
    if seconds is None or seconds >= threading.TIMEOUT_MAX:
        return None
    return max(0.0, seconds)


_WAKE = ("wake", 0)
_STOP = ("stop", 0)


class Watchdog:
    """A thread that notices a run missing its shutdown deadline, and carries out forced exits.

    Args:
        name: for the thread's name.
        deadline: the run's shutdown deadline (``time.monotonic()``), or None
            before a shutdown was requested; read from the watchdog's thread.
        on_missed: called once, from the watchdog's thread, when the run
            has not finished `MARGIN` seconds after the deadline.
        on_force: called from the watchdog's thread with the signal number
            after `force` (it is expected to end the process).

    Example::

        dog = Watchdog("shop", deadline=lambda: run.shutdown_deadline,
                       on_missed=report_stuck, on_force=exit_forced)
        dog.start()
        run.attach(scheduler, wake_driver, dog.wake)   # woken on every request
        ...
        dog.stop()                                     # the run finished
    """

    def __init__(
        self,
        name: str,
        *,
        deadline: Callable[[], float | None],
        on_missed: Callable[[], object],
        on_force: Callable[[int], object],
    ) -> None:
        self._deadline = deadline
        self._on_missed = on_missed
        self._on_force = on_force
        self._inbox: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=helper_thread(self._watch), name=f"lifecycle:{name}.watchdog", daemon=True
        )

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def wake(self) -> None:
        """A shutdown was requested: read the deadline again. Signal-safe."""
        self._inbox.put(_WAKE)

    def force(self, signum: int) -> None:
        """Carry out a forced exit for signal ``signum``. Signal-safe."""
        self._inbox.put(("force", signum))

    def stop(self) -> None:
        """The run finished: end the thread."""
        self._inbox.put(_STOP)

    def _watch(self) -> None:
        missed = False
        while True:
            timeout = None
            deadline = None if missed else self._deadline()
            if deadline is not None:
                timeout = wait_timeout(deadline + MARGIN - time.monotonic())
                if timeout == 0:
                    missed = True
                    self._call(self._on_missed)
                    continue
            try:
                kind, signum = self._inbox.get(timeout=timeout)
            except queue.Empty:
                continue  # the deadline (plus the margin) has come: checked above
            if kind == "stop":
                return
            if kind == "force":
                self._call(self._on_force, signum)

    def _call(self, fn: Callable[..., object], *args: int) -> None:
        # The watchdog outlives a failing report: it may still be needed.
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - logged; the thread carries on
            _log.exception("the lifecycle watchdog's report failed")


class _ExitGuard:
    """What `guard_interpreter_exit` arms: one per process, for the latest `run`."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.deadline: float | None = None
        self.threads: tuple[threading.Thread, ...] = ()
        self.last_value: object = None
        self.registered = False

    def arm(self, code: int, deadline: float | None, threads: Iterable[threading.Thread]) -> None:
        self.code = code
        self.deadline = deadline
        self.threads = tuple(threads)
        self.last_value = getattr(sys, "last_value", None)

    def at_exit(self) -> None:
        code, self.code = self.code, None
        threads, self.threads = self.threads, ()
        if code is None:
            return
        until = max(self.deadline or 0.0, time.monotonic() + MARGIN)
        stuck: list[threading.Thread] = []
        for thread in threads:
            thread.join(wait_timeout(until - time.monotonic()))
            if thread.is_alive():
                stuck.append(thread)
        if not stuck:
            return
        released = _release_from_exit_wait(stuck)
        # An unhandled exception since run() returned has been printed by now
        # (sys.last_value is set just before sys.excepthook runs): its code is 1.
        crashed = getattr(sys, "last_value", None) is not self.last_value
        exit_code = None if released else 1 if crashed else code

        def report() -> None:
            for thread in stuck:
                _log.error(
                    "thread still running at exit",
                    thread=thread.name,
                    stack=thread_stack(thread.ident) or "(no stack)",
                )
            _log.critical(
                "exit despite running threads",
                threads=[t.name for t in stuck],
                run_exit_code=code,
                exit_code=exit_code,
                hint="these non-daemon threads, started by the app's components, did not end "
                "by the shutdown deadline; end them through a token (or make them daemon "
                "threads)",
            )

        report_bounded(report)
        if exit_code is not None:
            os._exit(exit_code)


def _release_from_exit_wait(threads: list[threading.Thread]) -> bool:
    """Let the interpreter exit without joining ``threads``; False where it cannot be done.

    CPython up to 3.12 joins the non-daemon threads at exit through the set
    ``threading._shutdown_locks`` of their state locks, read after the guard
    ran: without their locks there, the threads are left as daemon threads
    are, and the interpreter exits with the code it was exiting with.
    """
    locks: Any = getattr(threading, "_shutdown_locks", None)
    guard: Any = getattr(threading, "_shutdown_locks_lock", None)
    if not isinstance(locks, set) or guard is None:
        return False
    with guard:
        for thread in threads:
            locks.discard(getattr(thread, "_tstate_lock", None))
    return True


_guard = _ExitGuard()


def guard_interpreter_exit(
    code: int, deadline: float | None, threads: Iterable[threading.Thread]
) -> None:
    """Bound the interpreter's wait for the app's non-daemon threads once the app has finished.

    ``threads``: the non-daemon threads the app started that are still alive
    (`lifecycle.run` passes those alive as it returns that were not as it
    began). Arms a hook that runs when the interpreter begins to exit,
    before it joins the non-daemon threads: it joins ``threads`` itself until
    ``deadline`` (and for `MARGIN` seconds at least); those still alive are
    logged with their stacks and no longer held for (see the module's
    docstring for the exit code). Only `lifecycle.run`, which owns the
    process, calls it; the latest call wins.
    """
    _guard.arm(code, deadline, threads)
    if _guard.registered:
        return
    register: Any = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython has had it since 3.9
        return
    register(_guard.at_exit)
    _guard.registered = True
