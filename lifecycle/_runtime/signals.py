"""Signal handlers that put back what was there, and the one way the runtime ends a process.

What runs *in* a signal handler is the runners' business (it only records
and wakes: plain attribute writes, a ``SimpleQueue.put`` or a
``loop.call_soon_threadsafe``). This module holds what surrounds it:
installing handlers only where Python allows it, restoring exactly the
handlers that were installed before (whatever they were, not the defaults),
and `exit_after_report`, which every deliberate process exit goes through —
the forced exit on a second signal, the watchdog's exit on a missed
deadline, the exit guard's on stuck threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, NoReturn

__all__ = ["REPORT_BOUND", "SignalHandlers", "exit_after_report", "signal_name"]

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


class SignalHandlers:
    """Handlers installed for a set of signals, and the ones they replaced.

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
        """Install ``handler`` for each signal; False (nothing done) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._thread = threading.get_ident()
        for signum in signals:
            self._previous[signum] = signal.signal(signum, handler)
        return True

    def restore(self) -> None:
        """Put back the handlers that were there before; only in the installing thread."""
        if self._thread is None or self._thread != threading.get_ident():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._thread = None


def exit_after_report(report: Callable[[], object], code: int) -> NoReturn:
    """Run ``report`` and flush the logs (bounded by `REPORT_BOUND`), then end the process.

    ``os._exit(code)``: no ``atexit`` hooks and no joining of threads, which is
    the point — something is stuck, and a normal exit would wait for it. The
    report and the flushing run in their own thread, so that a lock held for
    good by the stuck code (a logger's, a stream's) delays the exit by
    `REPORT_BOUND` at most.
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
    os._exit(code)
