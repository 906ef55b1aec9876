"""Signal handlers that put back what was there, and the one way the runtime ends a process.

What runs *in* a signal handler is the runners' business (it only records
and wakes: plain attribute writes, a ``SimpleQueue.put`` or a
``loop.call_soon_threadsafe``). This module holds what surrounds it:
validating the signals asked for, installing handlers only where Python
allows it and all or none of them, restoring exactly the handlers that were
installed before (whatever they were, not the defaults), handing a signal
that reaches a forked child back to the handler the child should have, and
`exit_after_report`, which every deliberate process exit goes through — the
forced exit on a second signal, the watchdog's exit on a missed deadline,
the exit guard's on stuck threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import Any, NoReturn

from .._core.errors import ConfigError

__all__ = [
    "REPORT_BOUND",
    "SignalHandlers",
    "check_signals",
    "exit_after_report",
    "in_signal_handler",
    "report_bounded",
    "signal_name",
]

REPORT_BOUND = 0.5
"""Seconds a report gets before a deliberate exit happens anyway: the report runs in
its own thread, in case the code it interrupted holds the logger's lock for good."""

Handler = Callable[[int, FrameType | None], Any]


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15; the number as text for a signal Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _code_of(handler: Any) -> CodeType | None:
    """The code a signal handler runs first (unwrapping partials, bound methods, __call__)."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    function = getattr(handler, "__func__", handler)
    code = getattr(function, "__code__", None)
    if code is None and callable(handler) and not isinstance(handler, type):
        call = type(handler).__call__  # an object with a __call__ method
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    return code if isinstance(code, CodeType) else None


def in_signal_handler() -> bool:
    """Whether the caller may be inside a Python signal handler (then it must not wait).

    Only the main thread runs them. True when a frame of the current stack
    runs the code of a handler installed right now (``signal.getsignal``):
    the interrupted code below it may hold any lock. A handler called
    directly, not by a signal, counts too: its caller then merely waits for
    nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    codes: set[CodeType] = set()
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            code = _code_of(signal.getsignal(signum))
            if code is not None:
                codes.add(code)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and codes:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


_EXAMPLE = "e.g. signals=(signal.SIGTERM, signal.SIGINT), or signals=None for none"


def check_signals(signals: object) -> tuple[int, ...] | None:
    """The signals a runner is asked to handle, validated; None for none.

    Raises:
        ConfigError: not an iterable of signal numbers, a number that is no
            signal of this platform, or SIGKILL/SIGSTOP (no process can
            handle those); the message names the culprit.
    """
    if signals is None:
        return None
    if isinstance(signals, int | str | bytes) or not isinstance(signals, Iterable):
        raise ConfigError(f"signals must be a tuple of signal numbers, got {signals!r}; {_EXAMPLE}")
    given: tuple[object, ...] = tuple(signals)
    checked: list[int] = []
    valid = signal.valid_signals()
    uncatchable = {signal.SIGKILL, signal.SIGSTOP}
    for signum in given:
        if isinstance(signum, bool) or not isinstance(signum, int) or signum not in valid:
            raise ConfigError(f"signals: {signum!r} is not a signal of this platform; {_EXAMPLE}")
        if signum in uncatchable:
            raise ConfigError(
                f"signals: {signal_name(signum)} cannot be handled by any process (the kernel "
                f"acts on it directly); {_EXAMPLE}"
            )
        checked.append(signum)
    return tuple(checked)


class SignalHandlers:
    """Handlers installed for a set of signals, and the ones they replaced.

    The handler runs only in the process that installed it. A child forked
    afterwards inherits it, but there the request it would record reaches no
    one (the child has no runner): there the signal is handed back to the
    handler that was installed before (the default when it was not Python's)
    and delivered again, so that ``Process.terminate()`` ends a forked child.

    Example::

        handlers = SignalHandlers()
        if handlers.install((signal.SIGTERM,), on_signal):
            ...
        handlers.restore()      # from the thread that installed them
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._thread: int | None = None

    def install(self, signals: Iterable[int], handler: Handler) -> bool:
        """Install ``handler`` for each signal, all or none; False off the main thread.

        Raises:
            ConfigError: a signal refused a handler; the ones installed
                before it were put back.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        pid = os.getpid()
        previous = self._previous

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if os.getpid() == pid:
                handler(signum, frame)
                return
            # A forked child: hand the signal back to what it would have met.
            before = previous.get(signum)
            signal.signal(signum, signal.SIG_DFL if before is None else before)
            os.kill(os.getpid(), signum)

        installed: dict[int, Any] = {}
        for signum in signals:
            try:
                installed[signum] = signal.signal(signum, on_signal)
            except (OSError, ValueError) as error:
                for done, before in reversed(installed.items()):
                    signal.signal(done, before)
                raise ConfigError(
                    f"signals: cannot handle {signal_name(signum)} ({error}); {_EXAMPLE}"
                ) from None
        previous.update(installed)
        self._thread = threading.get_ident()
        return True

    def restore(self) -> None:
        """Put back the handlers that were there before; only in the installing thread."""
        if self._thread is None or self._thread != threading.get_ident():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._thread = None


def report_bounded(report: Callable[[], object]) -> None:
    """Run ``report`` and flush the logs in a thread of their own, for `REPORT_BOUND` at most.

    So that a lock held for good by stuck code (a logger's, a stream's)
    delays the caller by `REPORT_BOUND` at most.
    """

    def report_and_flush() -> None:
        with contextlib.suppress(Exception):
            report()
        loggers = (logging.getLogger(), logging.getLogger("lifecycle"))
        for handler in [h for lg in loggers for h in lg.handlers]:
            with contextlib.suppress(Exception):
                handler.flush()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    reporter = threading.Thread(target=report_and_flush, name="lifecycle:report", daemon=True)
    reporter.start()
    reporter.join(REPORT_BOUND)


def exit_after_report(report: Callable[[], object], code: int) -> NoReturn:
    """Run ``report`` and flush the logs (`report_bounded`), then end the process.

    ``os._exit(code)``: no ``atexit`` hooks and no joining of threads, which is
    the point — something is stuck, and a normal exit would wait for it.
    """
    report_bounded(report)
    os._exit(code)
