"""Signal masks for lifecycle's own threads: helpers block the asynchronous signals.

The kernel delivers a signal sent to the process to any thread that does
not block it; CPython's C-level handler then runs in that thread, and the
Python-level one only in the main thread. Lifecycle's threads that run no
user code (the deadline timer, a server's accept loop, the health
endpoint's selector, the runner's control thread) therefore block
`HELPER_BLOCKED` (`helper_thread`), so that the kernel delivers elsewhere,
preferably to the main thread, which acts on it.

A thread that runs user code must not block them: a process it starts
(``subprocess``, ``multiprocessing``) inherits the mask across ``exec``, and a
blocked SIGTERM makes ``Process.terminate()`` of that child a no-op. Such a
thread is wrapped with `user_code_thread`, which gives it the mask the
program had where the helper that starts it was created.
"""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Callable, Iterable

__all__ = ["HELPER_BLOCKED", "helper_thread", "program_mask", "sigmask", "user_code_thread"]


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


_SYNCHRONOUS = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT"}
_NEVER_BLOCKED = {"SIGKILL", "SIGSTOP", "SIGPIPE", "SIGXFSZ", *_SYNCHRONOUS}

HELPER_BLOCKED: frozenset[int] = (
    frozenset(s for s in signal.valid_signals() if _name(s) not in _NEVER_BLOCKED)
    if hasattr(signal, "pthread_sigmask")
    else frozenset()
)
"""The signals lifecycle's own helper threads block: every asynchronous one, so that the
kernel delivers it to a thread that can act on it. Not the synchronous ones (a fault is
the faulting thread's), nor SIGPIPE and SIGXFSZ (a failed write's, ignored by Python)."""


# ``signal.pthread_sigmask`` turns the mask it returns into a set of `signal.Signals`,
# one enum lookup per signal: about 60 us for the 60 that HELPER_BLOCKED holds, paid
# by every thread these wrappers start (the threads of a wave of sync stops, as it
# begins). The C function it wraps returns plain ints, in microseconds.
sigmask: Callable[[int, Iterable[int]], set[int]] = getattr(
    importlib.import_module("_signal"),
    "pthread_sigmask",
    getattr(signal, "pthread_sigmask", lambda how, mask: set()),
)
"""``signal.pthread_sigmask`` returning the previous mask as plain ints."""


class _Mask(threading.local):
    """In a helper thread: the program's mask, which the user-code threads it starts get."""

    before: set[int] | None = None


_mask = _Mask()


def helper_thread(target: Callable[[], object]) -> Callable[[], None]:
    """Wrap the target of a lifecycle thread that runs no user code: it blocks `HELPER_BLOCKED`.

    The kernel then delivers a process-directed signal to another thread
    (the main thread, which runs the Python-level handlers). A thread that
    runs user code, started from inside such a thread, must be started with
    `user_code_thread`. Call it in the creating thread: a helper started
    by a helper remembers the program's mask its creator remembered, not
    the creator's blocked one.

    Example::

        threading.Thread(target=helper_thread(self._watch), daemon=True).start()
    """
    program = _mask.before  # None: the creator's mask is the program's

    def blocked() -> None:
        if HELPER_BLOCKED:
            inherited = sigmask(signal.SIG_BLOCK, HELPER_BLOCKED)
            _mask.before = inherited if program is None else program
        target()

    return blocked


def user_code_thread(target: Callable[[], object]) -> Callable[[], None]:
    """Wrap the target of a lifecycle thread that runs user code: it gets the program's mask.

    Call it in the creating thread: started from a `helper_thread`, the new
    thread would inherit its blocked signals (and pass them on to a process
    that the user code starts, since ``exec`` keeps the mask); it sets the
    program's mask the helper remembered instead. Elsewhere it inherits the
    creator's mask as usual.

    Example::

        threading.Thread(target=user_code_thread(call), daemon=True).start()
    """
    before = _mask.before

    def restored() -> None:
        if before is not None:
            sigmask(signal.SIG_SETMASK, before)
        target()

    return restored


def program_mask() -> set[int] | None:
    """In a `helper_thread`: the program's mask, which its user-code threads get (else None).

    For a thread started from a helper that runs user code only later: it
    keeps the helper's blocked mask until then, and sets this one itself.
    """
    return _mask.before
