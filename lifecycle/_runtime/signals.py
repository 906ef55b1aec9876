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

A signal sent to the process may land on any thread that does not block
it, but CPython runs Python-level handlers only in the main thread: the
C-level handler, running in the thread the kernel picked, merely marks the
signal pending. A main thread blocked in a lock (``threading.Event.wait``)
or in ``select`` without a timeout then never hears of it. Two layers keep
the handler prompt whichever thread the signal hit:

* `SignalWakeup` points ``signal.set_wakeup_fd`` at a socket the main
  thread waits on (`wait_event`, or an event loop's reader): the C-level
  handler writes to it from whatever thread it runs in, and the main thread
  wakes at once. Measured on a loaded 2-core machine, SIGTERM sent to one
  of three threads spinning on the CPU: the runner's "signal received" in
  a median of 35-85 ms, at most 0.25 s (the GIL's hand-over among the
  spinning threads); without the wake-up, never. `wait_event` waits in
  slices as well: `WAIT_SLICE` bounds the delay where no wake-up can be
  installed (``signals=None``).
* `helper_thread` blocks `HELPER_BLOCKED` in lifecycle's own threads that
  run no user code (the control thread, the watchdog, the report, the
  deadline timer, the servers' accept loops), so the kernel delivers to
  another thread; `user_code_thread` (both in ``lifecycle._core.threads``,
  re-exported here) gives a thread that runs user code the
  signal mask it would have had, so that nothing a component starts
  (``subprocess``, ``multiprocessing``, which inherit the mask) begins with
  SIGTERM blocked.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import Any, NoReturn

from .._core.errors import ConfigError
from .._core.threads import HELPER_BLOCKED, helper_thread, user_code_thread

__all__ = [
    "HELPER_BLOCKED",
    "REPORT_BOUND",
    "WAIT_SLICE",
    "WAKEUP_SLICE",
    "SignalHandlers",
    "SignalWakeup",
    "check_signals",
    "exit_after_report",
    "helper_thread",
    "in_signal_handler",
    "report_bounded",
    "signal_name",
    "user_code_thread",
    "wait_event",
]

REPORT_BOUND = 0.5
"""Seconds a report gets before a deliberate exit happens anyway: the report runs in
its own thread, in case the code it interrupted holds the logger's lock for good."""

WAIT_SLICE = 0.1
"""Seconds the main thread waits at a time in `wait_event` with no wake-up installed: the
longest a Python-level handler then waits for a signal that hit another thread (measured
idle cost: 5.5 ms of CPU per 5 s)."""

WAKEUP_SLICE = 0.5
"""Seconds the main thread waits at a time in `wait_event` on an installed wake-up, which
wakes it at once: the slice only bounds the wait should the program replace the wake-up fd
meanwhile (measured idle cost: 1 ms of CPU per 5 s, against 0.1 ms for a bare
``Event.wait``; an idle app under the threaded runner, health endpoint and HTTP server
included, 1.1-1.3 ms per 5 s, against 0.3 ms before)."""

Handler = Callable[[int, FrameType | None], Any]


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15, ``"SIGRTMIN+3"`` for a real-time one; else the number as text."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        low = getattr(signal, "SIGRTMIN", None)
        if low is not None and low < signum <= getattr(signal, "SIGRTMAX", low):
            return f"SIGRTMIN+{signum - low}"
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


class SignalWakeup:
    """A socket the C-level signal handler writes to, so any thread's signal wakes the main one.

    `install` points ``signal.set_wakeup_fd`` at it (main thread only); the
    main thread then waits on `fileno` (`wait_event`, or an event loop's
    ``add_reader`` calling `drain`). A wake-up fd installed before (an
    asyncio loop's, for its ``add_signal_handler``) keeps working: the
    signal numbers read here are passed on to it, and `restore` puts it back.
    `wake` wakes the waiter from any thread (a zero byte, which is no signal
    and is not passed on).

    Example::

        wakeup = SignalWakeup()
        if wakeup.install():
            wait_event(finished, None, wakeup)   # a signal on any thread wakes it
        wakeup.restore()                         # main thread; closes the socket
    """

    def __init__(self) -> None:
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._previous = -1

    @property
    def installed(self) -> bool:
        """Whether the wake-up fd is this one's (until `restore`)."""
        return self._sockets is not None

    def install(self) -> bool:
        """Point the process's wake-up fd here; False off the main thread or where it fails."""
        if self._sockets is not None:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        reader, writer = socket.socketpair()
        for end in (reader, writer):
            end.setblocking(False)
        try:
            self._previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (OSError, ValueError):
            reader.close()
            writer.close()
            return False
        self._sockets = (reader, writer)
        return True

    def fileno(self) -> int:
        """The end to wait on for reading; -1 once restored."""
        return -1 if self._sockets is None else self._sockets[0].fileno()

    def wake(self) -> None:
        """Wake the waiter. Thread-safe and signal-safe; a no-op once restored."""
        sockets = self._sockets
        if sockets is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
                sockets[1].send(b"\0")

    def drain(self) -> None:
        """Read what was written; pass the signal numbers on to the wake-up fd installed before."""
        sockets = self._sockets
        if sockets is None:
            return
        while True:
            try:
                data = sockets[0].recv(4096)
            except OSError:  # empty (BlockingIOError), or closed
                return
            if not data:
                return
            signums = data.replace(b"\0", b"")
            if signums and self._previous >= 0:
                with contextlib.suppress(OSError):  # its reader is gone or full
                    os.write(self._previous, signums)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a signal or `wake`; False when not installed."""
        sockets = self._sockets
        if sockets is None:
            return False
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._selector.register(sockets[0], selectors.EVENT_READ)
        if self._selector.select(timeout):
            self.drain()
        return True

    def restore(self) -> None:
        """Put back the wake-up fd installed before and close the socket; main thread only."""
        sockets = self._sockets
        if sockets is None or threading.current_thread() is not threading.main_thread():
            return
        current = signal.set_wakeup_fd(self._previous)
        if current != sockets[1].fileno():
            signal.set_wakeup_fd(current)  # replaced after ours: leave the newer one
        self.drain()  # signal numbers still unread go on to the one put back
        self._sockets = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for end in sockets:
            end.close()


def wait_event(
    event: threading.Event, timeout: float | None = None, wakeup: SignalWakeup | None = None
) -> bool:
    """``event.wait(timeout)``, but in the main thread prompt to run signal handlers.

    Off the main thread it is ``event.wait``. In the main thread it waits
    on ``wakeup`` when installed (whoever sets ``event`` must call
    ``wakeup.wake()``), so that a signal that hit any thread runs its
    Python-level handler at once; and in slices of `WAIT_SLICE` at most,
    which bound the handler's delay where no wake-up is installed.

    Example::

        finished = threading.Event()
        wait_event(finished, 5.0)     # True once set, False after 5 s
    """
    if threading.current_thread() is not threading.main_thread():
        return event.wait(timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while not event.is_set():
        step = WAIT_SLICE if wakeup is None or not wakeup.installed else WAKEUP_SLICE
        if end is not None:
            left = end - time.monotonic()
            if left <= 0:
                return event.is_set()
            step = min(step, left)
        if wakeup is None or not wakeup.wait(step):
            event.wait(step)
    return True


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

    reporter = threading.Thread(
        target=helper_thread(report_and_flush), name="lifecycle:report", daemon=True
    )
    reporter.start()
    reporter.join(REPORT_BOUND)


def exit_after_report(report: Callable[[], object], code: int) -> NoReturn:
    """Run ``report`` and flush the logs (`report_bounded`), then end the process.

    ``os._exit(code)``: no ``atexit`` hooks and no joining of threads, which is
    the point — something is stuck, and a normal exit would wait for it.
    """
    report_bounded(report)
    os._exit(code)
