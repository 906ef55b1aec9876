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

import signal
import threading
from collections.abc import Callable

__all__ = ["HELPER_BLOCKED", "helper_thread", "user_code_thread"]


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
            inherited = set(signal.pthread_sigmask(signal.SIG_BLOCK, HELPER_BLOCKED))
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
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        target()

    return restored
